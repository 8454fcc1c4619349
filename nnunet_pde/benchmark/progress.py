"""Progress lines of ``benchmark run``: the epoch, pseudo Dice and ETA of each running fold.

:class:`ProgressMonitor` watches the training logs of the running folds in a thread and
prints one line per fold whenever its log shows a new epoch (every
``$NNUNET_PDE_PROGRESS_INTERVAL`` seconds, default 60); :func:`parse_training_log` reads
nnU-Net's ``Epoch N`` / ``Pseudo dice [...]`` / ``Epoch time: T s`` lines.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nnunet_pde.benchmark.grid import FoldTask
from nnunet_pde.errors import BenchmarkError

__all__ = [
    "DEFAULT_PROGRESS_INTERVAL_S",
    "NNUNET_DEFAULT_EPOCHS",
    "PROGRESS_INTERVAL_VAR",
    "EpochProgress",
    "ProgressMonitor",
    "format_duration",
    "format_progress",
    "parse_training_log",
    "planned_epochs",
    "progress_interval",
]

#: seconds between two progress checks of the running folds (environment variable)
PROGRESS_INTERVAL_VAR = "NNUNET_PDE_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL_S = 60.0
NNUNET_DEFAULT_EPOCHS = 1000

_LOG_EPOCH = re.compile(r"(?:^|: )Epoch (\d+)\s*$")
_LOG_DICE = re.compile(r"(?:^|: )Pseudo dice (.*)$")
_LOG_EPOCH_TIME = re.compile(r"(?:^|: )Epoch time: ([0-9.eE+-]+) s")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class EpochProgress:
    """The last epoch of a training log: 0-based index (as nnU-Net logs it), the pseudo Dice
    per class or region of the last finished epoch, and the mean of the last epoch times (s)."""

    epoch: int
    pseudo_dice: tuple[float, ...]
    epoch_time_s: float | None


def parse_training_log(text: str) -> EpochProgress | None:
    """Read nnU-Net's ``Epoch N`` / ``Pseudo dice [...]`` / ``Epoch time: T s`` lines."""
    epoch = None
    dice: tuple[float, ...] = ()
    times: list[float] = []
    for line in text.splitlines():
        line = line.rstrip()
        if m := _LOG_EPOCH.search(line):
            epoch = int(m[1])
        elif m := _LOG_DICE.search(line):
            values = re.sub(r"np\.float\d+\(", "", m[1])
            dice = tuple(float(v) for v in _NUMBER.findall(values))
        elif m := _LOG_EPOCH_TIME.search(line):
            times.append(float(m[1]))
    if epoch is None:
        return None
    recent = times[-10:]
    return EpochProgress(epoch, dice, sum(recent) / len(recent) if recent else None)


def planned_epochs(trainer: str, cls: type | None) -> int:
    """Epochs a trainer runs: our ``epochs`` class attribute, nnU-Net's ``_<N>epochs`` naming
    convention, else nnU-Net's default 1000."""
    value = getattr(cls, "epochs", None) if cls is not None else None
    if isinstance(value, int) and value > 0:
        return value
    m = re.search(r"_(\d+)epochs", trainer)
    return int(m[1]) if m else NNUNET_DEFAULT_EPOCHS


def format_progress(progress: EpochProgress, total: int) -> str:
    """``epoch 13/1000, pseudo Dice 0.71 0.64, 45.2 s/epoch, ETA 12.4 h``."""
    text = f"epoch {progress.epoch + 1}/{total}"
    if progress.pseudo_dice:
        text += ", pseudo Dice " + " ".join(f"{d:.3f}" for d in progress.pseudo_dice)
    if progress.epoch_time_s is not None:
        left = max(0, total - progress.epoch - 1) * progress.epoch_time_s
        text += f", {progress.epoch_time_s:.1f} s/epoch, ETA {format_duration(left)}"
    return text


class ProgressMonitor:
    """Prints a line per running fold whenever its training log shows a new epoch."""

    def __init__(self, print_fn: Callable[[str], None], interval_s: float) -> None:
        self.print_fn = print_fn
        self.interval_s = interval_s
        self.running: dict[str, tuple[str, FoldTask, int, float, int]] = {}
        self.last: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="fold-progress", daemon=True)

    def start(self, key: str, prefix: str, task: FoldTask, total: int) -> None:
        offset = task.log.stat().st_size if task.log.is_file() else 0
        with self.lock:
            self.running[key] = (prefix, task, total, time.time(), offset)

    def end(self, key: str) -> None:
        with self.lock:
            self.running.pop(key, None)

    def _text(self, task: FoldTask, started: float, offset: int) -> str:
        logs = [
            p for p in task.folder.glob("training_log_*.txt") if p.stat().st_mtime >= started - 1
        ]
        if logs:
            return max(logs, key=lambda p: p.stat().st_mtime).read_text(errors="replace")
        if task.log.is_file():
            with open(task.log, errors="replace") as fh:
                fh.seek(offset)
                return fh.read()
        return ""

    def check(self) -> None:
        with self.lock:
            running = list(self.running.items())
        for key, (prefix, task, total, started, offset) in running:
            try:
                progress = parse_training_log(self._text(task, started, offset))
            except OSError:
                continue
            if progress is not None and self.last.get(key) != progress.epoch:
                self.last[key] = progress.epoch
                self.print_fn(
                    f"{prefix} {task.trainer} fold {task.fold}: {format_progress(progress, total)}"
                )

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.check()

    def __enter__(self) -> ProgressMonitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def progress_interval(env: Mapping[str, str]) -> float:
    """Seconds between two progress checks: ``$NNUNET_PDE_PROGRESS_INTERVAL`` (>= 0.05)."""
    text = env.get(PROGRESS_INTERVAL_VAR)
    try:
        value = float(text) if text else DEFAULT_PROGRESS_INTERVAL_S
    except ValueError:
        raise BenchmarkError(f"{PROGRESS_INTERVAL_VAR}={text} is not a number of seconds") from None
    return max(0.05, value)


def format_duration(seconds: float) -> str:
    """``45 s``, ``12.5 min`` or ``3.2 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
