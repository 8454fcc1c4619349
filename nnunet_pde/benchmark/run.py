"""``nnunet-pde benchmark run``: train every (trainer, fold) of a cross-validation grid.

For each trainer ``T`` and fold ``k`` the command is nnU-Net's own::

    nnUNetv2_train DATASET CONFIGURATION k -tr T -p PLANS [-device D] [--c] [EXTRA...]

The grid is resumable: a fold with ``checkpoint_final.pth`` and ``validation/summary.json``
is skipped, a fold with a checkpoint but no finished validation is continued with ``--c``,
and any other fold is trained from scratch (see :func:`nnunet_pde.folders.fold_state`).
Every invocation writes a new manifest (:mod:`nnunet_pde.benchmark.manifest`) and one log
per fold in ``$nnUNet_results/<dataset>/nnunet_pde_benchmark/``.

Size (about 810 lines): the grid plan, the resume decisions, the progress monitor and the
run loop (``_GridRun``: the executor's callbacks, the manifest saves, the interrupt) all work
on the same FoldTask and manifest.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.manifest import (
    MANIFEST_DIRNAME,
    close_abandoned_manifests,
    create_manifest_file,
    git_revision,
    host_info,
    software_versions,
    utc_now,
    write_manifest,
)
from nnunet_pde.benchmark.runs import run_results
from nnunet_pde.commands import (
    DEFAULT_TRAIN_COMMAND,
    Executor,
    Job,
    JobResult,
    build_train_command,
)
from nnunet_pde.errors import BenchmarkError, interrupt_signals
from nnunet_pde.folders import (
    FOLD_FINISHED,
    FOLD_INTERRUPTED,
    check_trainer_names,
    checkpoint_problem,
    dataset_id,
    fold_dir,
    fold_state,
    parse_folds,
    possible_folds,
    require_env_folder,
    resolve_dataset_name,
    resume_checkpoint,
    split_paths,
    trainer_dir_name,
)
from nnunet_pde.locks import BUSY_EXIT_CODE, lock_holder, locked_command

__all__ = [
    "ACTION_BUSY",
    "ACTION_CONTINUE",
    "ACTION_SKIP",
    "ACTION_TRAIN",
    "FoldTask",
    "RunOutcome",
    "check_run_environment",
    "plan_grid",
    "run_benchmark",
]

ACTION_SKIP = "skip"
ACTION_CONTINUE = "continue"
ACTION_TRAIN = "train"
#: The fold's training lock is held by another process (an earlier runner's orphan, another
#: runner): not started, so that two trainings never write one fold folder.
ACTION_BUSY = "busy"


@dataclass(frozen=True)
class FoldTask:
    """One cell of the grid and what ``benchmark run`` will do with it.

    Attributes
    ----------
    trainer, fold
        The cell.
    state
        :func:`~nnunet_pde.folders.fold_state` of its folder before the run.
    action
        ``skip`` (finished), ``continue`` (``--c``), ``train`` (from scratch) or ``busy``
        (another process trains the fold now: :mod:`nnunet_pde.locks`; not started).
    folder
        ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<k>``.
    command
        The ``nnUNetv2_train`` argument vector (empty for ``skip``).
    log
        Where the executor writes the command's output.
    holder
        Who holds the fold's lock (``busy`` only).
    run
        The run index (:mod:`nnunet_pde.benchmark.runs`); run 1 is ``$nnUNet_results``.
    results
        The results root of that run (the training's ``nnUNet_results``).
    """

    trainer: str
    fold: int
    state: str
    action: str
    folder: Path
    command: tuple[str, ...]
    log: Path
    holder: str | None = None
    run: int = 1
    results: Path | None = None

    @property
    def key(self) -> str:
        base = f"{self.trainer}/fold_{self.fold}"
        return base if self.run == 1 else f"run_{self.run}/{base}"

    def command_line(self) -> str:
        """The command as a shell would take it."""
        return shlex.join(self.command)


def benchmark_folder(results: Path, dataset: str) -> Path:
    """``$nnUNet_results/<dataset>/nnunet_pde_benchmark``: manifests and logs."""
    return results / dataset / MANIFEST_DIRNAME


def plan_grid(
    results: str | os.PathLike[str],
    dataset: str,
    configuration: str,
    plans: str,
    trainers: Sequence[str],
    folds: Sequence[int | str],
    device: str | None = None,
    extra_args: Sequence[str] = (),
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
    runs: Sequence[int] = (1,),
) -> list[FoldTask]:
    """Decide skip / continue / train for every (run, trainer, fold); runs outermost, then
    trainers, so that run 1 of every trainer is done before any run 2.

    ``results`` is ``$nnUNet_results``; run r trains in :func:`run_results` (results, r).
    Reads only the fold folders; runs nothing.
    """
    tasks = []
    broken = []
    grid = [
        (run, trainer, fold)
        for run in runs
        for trainer in check_trainer_names(trainers)
        for fold in parse_folds(folds)
    ]
    for run, trainer, fold in grid:
        root = run_results(results, run)
        logs = benchmark_folder(root, dataset) / "logs"
        folder = fold_dir(root, dataset, trainer, plans, configuration, fold)
        state = fold_state(folder)
        resume = resume_checkpoint(folder)
        problem = None if resume is None else checkpoint_problem(resume)
        if problem is not None:
            broken.append(f"{resume} does not load: {problem}")
        holder = lock_holder(folder)
        if state == FOLD_FINISHED:
            action, command = ACTION_SKIP, ()
        elif holder is not None:
            action, command = ACTION_BUSY, ()
        else:
            action = ACTION_CONTINUE if state == FOLD_INTERRUPTED else ACTION_TRAIN
            command = build_train_command(
                dataset,
                configuration,
                fold,
                trainer,
                plans,
                device=device,
                continue_training=action == ACTION_CONTINUE,
                extra_args=extra_args,
                train_command=train_command,
            )
        log = logs / f"{trainer_dir_name(trainer, plans, configuration)}_fold_{fold}.log"
        tasks.append(
            FoldTask(
                trainer, fold, state, action, folder, command, log,
                holder=None if holder is None else holder.describe(), run=run, results=root,
            )
        )  # fmt: skip
    if broken:
        raise BenchmarkError(
            f"{len(broken)} fold(s) cannot be skipped or continued: {'; '.join(broken[:3])}"
            + (f"; ... ({len(broken) - 3} more)" if len(broken) > 3 else "")
            + ". Move the file away (e.g. mv X X.broken) and rerun: the fold then continues "
            "from another checkpoint or trains again"
        )
    return tasks


def check_run_environment(
    dataset: str | int,
    configuration: str,
    plans: str,
    environ: Mapping[str, str] | None = None,
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
    require_ext_trainer: bool = True,
) -> tuple[str, Path, Path]:
    """Check what ``nnUNetv2_train`` will need before anything starts.

    Checks that ``nnUNet_results`` and ``nnUNet_preprocessed`` are existing folders, that
    ``nnUNet_extTrainer`` is set and lists the nnunet-pde trainers folder, that the dataset
    resolves to one name, that it was planned and preprocessed with ``plans`` for
    ``configuration``, and that the training command is on ``PATH``.

    Returns
    -------
    (dataset_name, results, preprocessed_dataset_folder)

    Raises
    ------
    BenchmarkError
        With what is wrong and how to fix it.
    """
    import json

    env = os.environ if environ is None else environ
    results = require_env_folder("nnUNet_results", env, create=True)
    preprocessed = require_env_folder("nnUNet_preprocessed", env)
    if require_ext_trainer:
        from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir

        ext = split_paths(env.get(EXT_TRAINER_VAR))
        tdir = trainer_dir()
        if not ext:
            raise BenchmarkError(
                f"{EXT_TRAINER_VAR} is not set, so nnUNetv2_train cannot find the nnunet-pde "
                f'trainers; run: eval "$(nnunet-pde env)"'
            )
        if not any(Path(p).resolve() == tdir for p in ext if Path(p).exists()):
            raise BenchmarkError(
                f"{EXT_TRAINER_VAR}={env.get(EXT_TRAINER_VAR)} does not list this install's "
                f'trainers folder {tdir}; run: eval "$(nnunet-pde env)"'
            )
    name = resolve_dataset_name(dataset, env)
    pre = preprocessed / name
    plans_file = pre / f"{plans}.json"
    if not plans_file.is_file():
        raise BenchmarkError(
            f"{plans_file} does not exist: plan and preprocess first, e.g. "
            f"nnUNetv2_plan_and_preprocess -d {dataset_id(name)} -c {configuration}"
            + ("" if plans == "nnUNetPlans" else f" (with the planner that writes {plans})")
        )
    try:
        configurations = json.loads(plans_file.read_text()).get("configurations", {})
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{plans_file} is not valid JSON: {exc}") from None
    if configuration not in configurations:
        raise BenchmarkError(
            f"configuration '{configuration}' is not in {plans_file} "
            f"(it has: {', '.join(configurations) or 'none'})"
        )
    exe = train_command[0] if train_command else ""
    if not exe or shutil.which(exe, path=env.get("PATH")) is None:
        raise BenchmarkError(
            f"'{exe}' is not on PATH; activate the environment where nnunetv2 is installed"
        )
    return name, results, pre


#: the values of nnUNetv2_train -device
DEVICES = ("cuda", "cpu", "mps")


def check_device(device: str | None) -> None:
    """``--device`` must be one of nnU-Net's (:data:`DEVICES`); BenchmarkError otherwise."""
    if device is not None and device not in DEVICES:
        raise BenchmarkError(
            f"'{device}' is not an nnUNetv2_train device; use one of {', '.join(DEVICES)}",
            "--device",
        )


def resolve_trainers(trainers: Sequence[str], environ: Mapping[str, str]) -> dict[str, type]:
    """Trainer classes by name, found by nnU-Net's own finder as ``nnUNetv2_train -tr`` will.

    Returns an empty dict when nnunetv2 is not importable here (the training command runs
    elsewhere, e.g. in a container). Raises BenchmarkError naming the unknown trainers.
    """
    try:
        from nnunet_pde.env import find_trainer_with_nnunet

        found, problems = find_trainer_with_nnunet(trainers, environ)
    except ImportError:
        return {}
    if problems:
        raise BenchmarkError(
            f"unknown trainer(s) {', '.join(problems)}: nnU-Net's finder does not find them "
            "in nnunetv2 or in nnUNet_extTrainer; check the spelling (nnunet-pde "
            "list-trainers lists ours)",
            "--trainers",
        )
    return found


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
        text += f", {progress.epoch_time_s:.1f} s/epoch, ETA {_fmt_duration(left)}"
    return text


class _ProgressMonitor:
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

    def __enter__(self) -> _ProgressMonitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _progress_interval(env: Mapping[str, str]) -> float:
    text = env.get(PROGRESS_INTERVAL_VAR)
    try:
        value = float(text) if text else DEFAULT_PROGRESS_INTERVAL_S
    except ValueError:
        raise BenchmarkError(f"{PROGRESS_INTERVAL_VAR}={text} is not a number of seconds") from None
    return max(0.05, value)


@dataclass
class RunOutcome:
    """What one ``benchmark run`` did."""

    tasks: list[FoldTask]
    results: dict[str, JobResult] = field(default_factory=dict)
    manifest: Path | None = None
    interrupted: bool = False
    dry_run: bool = False

    def _keys(self, predicate: Callable[[FoldTask, JobResult | None], bool]) -> list[str]:
        return [t.key for t in self.tasks if predicate(t, self.results.get(t.key))]

    @property
    def skipped(self) -> list[str]:
        return self._keys(lambda t, r: t.action == ACTION_SKIP)

    @property
    def succeeded(self) -> list[str]:
        return self._keys(lambda t, r: r is not None and _outcome(t, r) == "finished")

    @property
    def failed(self) -> list[str]:
        return self._keys(lambda t, r: r is not None and _outcome(t, r) == "failed")

    @property
    def submitted(self) -> list[str]:
        return self._keys(lambda t, r: r is not None and _outcome(t, r) == "submitted")

    @property
    def busy(self) -> list[str]:
        """Folds another process was training: not started (or refused by the lock)."""
        return self._keys(
            lambda t, r: t.action == ACTION_BUSY or (r is not None and _outcome(t, r) == "busy")
        )

    @property
    def not_run(self) -> list[str]:
        return self._keys(lambda t, r: t.action not in (ACTION_SKIP, ACTION_BUSY) and r is None)

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return True
        return not (self.failed or self.not_run or self.busy or self.interrupted)


def _outcome(task: FoldTask, result: JobResult) -> str:
    if result.returncode == BUSY_EXIT_CODE and result.error is None:
        return "busy"
    if result.returncode is None and result.error is None and result.job_id is not None:
        return "submitted"
    if result.returncode == 0 and result.error is None and fold_state(task.folder) == FOLD_FINISHED:
        return "finished"
    return "failed"


def _fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_benchmark(
    dataset: str | int,
    trainers: Sequence[str],
    executor: Executor,
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    folds: Sequence[int | str] = (0, 1, 2, 3, 4),
    device: str | None = None,
    extra_args: Sequence[str] = (),
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
    dry_run: bool = False,
    environ: Mapping[str, str] | None = None,
    print_fn: Callable[[str], None] = print,
    require_ext_trainer: bool = True,
    runs: Sequence[int] = (1,),
) -> RunOutcome:
    """Run (or, with ``dry_run``, print) the grid; see the module docstring.

    Parameters
    ----------
    dataset
        Dataset id or ``DatasetNNN_Name``.
    trainers, folds
        The grid (trainer names as for ``-tr``; folds of ``splits_final.json``).
    executor
        :class:`~nnunet_pde.commands.LocalExecutor` or
        :class:`~nnunet_pde.commands.SlurmExecutor`.
    configuration, plans, device, extra_args, train_command
        See :func:`build_train_command`.
    dry_run
        Print the decisions and commands; write and run nothing.
    environ
        Environment of the checks and of the commands (default ``os.environ``).
    print_fn
        Where progress lines go.
    require_ext_trainer
        Require ``nnUNet_extTrainer`` to list the nnunet-pde trainers (off only for grids
        of nnU-Net's own trainers).
    runs
        Run indices (:func:`nnunet_pde.benchmark.runs.parse_runs`): each run trains the
        whole grid in its own results tree (:func:`~nnunet_pde.benchmark.runs.run_results`).

    Returns
    -------
    RunOutcome
        Per task the action and the executor's result, and the manifest path.
    """
    env = dict(os.environ if environ is None else environ)
    trainers = check_trainer_names(trainers)
    folds = parse_folds(folds)
    check_device(device)
    name, results, pre = check_run_environment(
        dataset,
        configuration,
        plans,
        env,
        train_command=train_command,
        require_ext_trainer=require_ext_trainer,
    )
    n_folds, why = possible_folds(pre)
    impossible = [f for f in folds if f >= n_folds]
    if impossible:
        raise BenchmarkError(
            f"fold(s) {', '.join(map(str, impossible))} do not exist: {why} folds "
            f"(0-{n_folds - 1})",
            "--folds",
        )
    trainer_classes = resolve_trainers(trainers, env)
    tasks = plan_grid(
        results,
        name,
        configuration,
        plans,
        trainers,
        folds,
        device=device,
        extra_args=extra_args,
        train_command=train_command,
        runs=runs,
    )
    outcome = RunOutcome(tasks, dry_run=dry_run)
    print_fn(_plan_line(name, configuration, plans, trainers, tasks, runs))
    if dry_run:
        for t in tasks:
            if t.action == ACTION_SKIP:
                print_fn(f"# skip {t.key}: finished ({t.folder})")
            elif t.action == ACTION_BUSY:
                print_fn(f"# busy {t.key}: trained by {t.holder} ({t.folder})")
            else:
                print_fn(t.command_line())
        return outcome

    bench_dir = benchmark_folder(results, name)
    for stale in close_abandoned_manifests(bench_dir):
        print_fn(
            f"note: {stale.name} said 'running' but its runner is gone (killed?): marked "
            "'abandoned'; its unfinished folds are continued here unless their training still "
            "runs (busy)"
        )
    started_dt = datetime.now(timezone.utc)
    outcome.manifest = create_manifest_file(bench_dir, started_dt)
    manifest = _new_manifest(
        started_dt, name, configuration, plans, trainers, folds, device, extra_args,
        train_command, executor, env, runs,
    )  # fmt: skip
    grid = _GridRun(outcome, manifest, trainer_classes, env, print_fn)
    grid.run(executor)
    print_fn(_summary_text(outcome, bench_dir))
    return outcome


def _plan_line(
    name: str,
    configuration: str,
    plans: str,
    trainers: Sequence[str],
    tasks: list[FoldTask],
    runs: Sequence[int] = (1,),
) -> str:
    """The first line of a run: the grid and what will happen to its folds."""
    n_skip = sum(t.action == ACTION_SKIP for t in tasks)
    n_busy = sum(t.action == ACTION_BUSY for t in tasks)
    line = (
        f"benchmark {name} {configuration} -p {plans}: "
        + (f"{len(runs)} run(s) ({', '.join(map(str, runs))}) x " if list(runs) != [1] else "")
        + f"{len(trainers)} trainer(s) x "
        f"{len(tasks) // max(1, len(trainers) * len(runs))} fold(s) = {len(tasks)} trainings; "
        f"{n_skip} finished (skipped), "
        f"{sum(t.action == ACTION_CONTINUE for t in tasks)} to continue (--c), "
        f"{sum(t.action == ACTION_TRAIN for t in tasks)} to train"
    )
    if n_busy:
        line += f", {n_busy} trained by another process now (not started)"
    for t in tasks:
        if t.action == ACTION_BUSY:
            line += (
                f"\n  busy: {t.key} is being trained by {t.holder} ({t.folder}); not starting a "
                "second training on it"
            )
    return line


#: Environment variables the manifest records.
_MANIFEST_ENV = (
    "nnUNet_raw",
    "nnUNet_preprocessed",
    "nnUNet_results",
    "nnUNet_extTrainer",
    "nnUNet_n_proc_DA",
    "nnUNet_def_n_proc",
    "nnUNet_compile",
    "CUDA_VISIBLE_DEVICES",
)


def _new_manifest(
    started_dt: datetime,
    name: str,
    configuration: str,
    plans: str,
    trainers: Sequence[str],
    folds: Sequence[int],
    device: str | None,
    extra_args: Sequence[str],
    train_command: Sequence[str],
    executor: Executor,
    env: Mapping[str, str],
    runs: Sequence[int] = (1,),
) -> dict[str, Any]:
    """The manifest of a run that starts now (its ``jobs`` are filled in by :class:`_GridRun`)."""
    return {
        "kind": "nnunet_pde benchmark run manifest",
        "format_version": 1,
        "status": "running",
        "started": started_dt.isoformat(timespec="seconds"),
        "ended": None,
        "dataset": name,
        "configuration": configuration,
        "plans": plans,
        "trainers": list(trainers),
        "folds": [int(f) for f in folds],
        "runs": [int(r) for r in runs],
        "device": device,
        "extra_args": list(extra_args),
        "train_command": list(train_command),
        "executor": executor.describe(),
        "argv": list(sys.argv),
        "environment": {k: env.get(k) for k in _MANIFEST_ENV},
        "software": software_versions(),
        "git": git_revision(),
        "host": host_info(),
        "jobs": [],
    }


def _job_entry(t: FoldTask) -> dict[str, Any]:
    """A task's entry in the manifest before it runs."""
    return {
        "trainer": t.trainer,
        "fold": t.fold,
        "run": t.run,
        "results": str(t.results) if t.results is not None else None,
        "folder": str(t.folder),
        "state_before": t.state,
        "action": t.action,
        "command": list(t.command),
        "command_line": t.command_line() if t.command else None,
        "log": str(t.log) if t.command else None,
        "started": None,
        "ended": None,
        "returncode": None,
        "job_id": None,
        "error": None,
        "holder": t.holder,
        "outcome": {ACTION_SKIP: "skipped", ACTION_BUSY: "busy"}.get(t.action, "pending"),
    }


class _GridRun:
    """One run of the tasks still to do: the executor's callbacks, progress and manifest."""

    def __init__(
        self,
        outcome: RunOutcome,
        manifest: dict[str, Any],
        trainer_classes: Mapping[str, Any],
        env: dict[str, str],
        print_fn: Callable[[str], None],
    ) -> None:
        self.outcome = outcome
        self.manifest = manifest
        self.trainer_classes = trainer_classes
        self.env = env
        self.print_fn = print_fn
        self.lock = threading.Lock()
        self.entries = {t.key: _job_entry(t) for t in outcome.tasks}
        manifest["jobs"] = list(self.entries.values())
        self.to_run = [t for t in outcome.tasks if t.action not in (ACTION_SKIP, ACTION_BUSY)]
        self.task_by_key = {t.key: t for t in outcome.tasks}
        self.index = {t.key: i + 1 for i, t in enumerate(self.to_run)}
        self.t0: dict[str, float] = {}
        self.save()
        self.monitor = _ProgressMonitor(print_fn, _progress_interval(env))

    def save(self) -> None:
        with self.lock:
            self.manifest["jobs"] = list(self.entries.values())
            assert self.outcome.manifest is not None
            write_manifest(self.outcome.manifest, self.manifest)

    def _prefix(self, key: str) -> str:
        return f"[{self.index[key]}/{len(self.to_run)}]"

    def on_start(self, job: Job, result: JobResult) -> None:
        t = self.task_by_key[job.key]
        self.t0[job.key] = time.monotonic()
        with self.lock:
            self.entries[job.key].update(
                started=result.started, job_id=result.job_id, outcome="running", **result.extra
            )
        where = f"SLURM job {result.job_id}" if result.job_id else f"log {t.log}"
        what = "continue (--c)" if t.action == ACTION_CONTINUE else "train"
        run = "" if t.run == 1 else f" run {t.run}"
        self.print_fn(f"{self._prefix(job.key)} {what} {t.trainer} fold {t.fold}{run} ({where})")
        self.monitor.start(
            job.key,
            self._prefix(job.key),
            t,
            planned_epochs(t.trainer, self.trainer_classes.get(t.trainer)),
        )
        self.save()

    def on_end(self, job: Job, result: JobResult) -> None:
        t = self.task_by_key[job.key]
        self.monitor.check()
        self.monitor.end(job.key)
        self.outcome.results[job.key] = result
        state = _outcome(t, result)
        if state == "failed" and result.error is None and result.returncode == 0:
            result.error = (
                "exit code 0 but no checkpoint_final.pth + validation/summary.json in the fold "
                "folder"
            )
        with self.lock:
            entry = self.entries[job.key]
            entry.update(
                started=result.started or entry["started"],
                ended=result.ended,
                returncode=result.returncode,
                job_id=result.job_id,
                error=result.error,
                outcome=state,
                **result.extra,
            )
        t0 = self.t0.get(job.key)
        took = f" in {_fmt_duration(time.monotonic() - t0)}" if t0 is not None else ""
        if state == "finished":
            self.print_fn(f"{self._prefix(job.key)} done {t.trainer} fold {t.fold}{took}")
        elif state == "busy":
            self.print_fn(
                f"{self._prefix(job.key)} not started {t.trainer} fold {t.fold}: another process "
                f"trains it now (its lock is held); see {t.log}"
            )
        else:
            why = result.error or f"exit code {result.returncode}"
            self.print_fn(
                f"{self._prefix(job.key)} FAILED {t.trainer} fold {t.fold}{took}: "
                f"{why}; see {t.log}"
            )
        self.save()

    def _record_results(self, jobs: list[Job], results_list: Sequence[JobResult]) -> None:
        """Results the executor returned without an ``on_end`` call (e.g. submitted jobs)."""
        for job, res in zip(jobs, results_list, strict=True):
            if job.key not in self.outcome.results:
                self.outcome.results[job.key] = res
                with self.lock:
                    self.entries[job.key].update(
                        job_id=res.job_id,
                        returncode=res.returncode,
                        error=res.error,
                        outcome=_outcome(self.task_by_key[job.key], res),
                        **res.extra,
                    )

    def run(self, executor: Executor) -> None:
        """Run every task still to do; Ctrl-C or SIGTERM marks the rest interrupted."""
        # Each training holds its fold's lock itself (nnunet_pde.locks), so a killed runner's
        # orphaned training still keeps a later run off its fold.
        # Run r >= 2 trains in its own results tree: nnUNet_results points there.
        jobs = [
            Job(
                t.key,
                locked_command(t.folder, t.command),
                t.log,
                self.env if t.results is None else {**self.env, "nnUNet_results": str(t.results)},
            )
            for t in self.to_run
        ]
        restore = contextlib.ExitStack()
        # SIGTERM (kill, a cancelled batch job) stops the grid like Ctrl-C: the local executor
        # starts trainings in their own sessions, which would otherwise run on unsupervised.
        restore.enter_context(interrupt_signals())
        restore.enter_context(self.monitor)
        try:
            if jobs:
                results_list = executor.run(jobs, on_start=self.on_start, on_end=self.on_end)
                self._record_results(jobs, results_list)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            with self.lock:
                for entry in self.entries.values():
                    if entry["outcome"] in ("pending", "running"):
                        entry["outcome"] = "interrupted"
            self.print_fn("interrupted: the running folds will continue with --c on the next run")
        finally:
            restore.close()
            self.manifest["ended"] = utc_now()
            self.manifest["status"] = self._status()
            self.save()

    def _status(self) -> str:
        if self.outcome.interrupted:
            return "interrupted"
        if self.outcome.failed:
            return "failed"
        if self.outcome.submitted:
            return "submitted"
        return "completed"


def _summary_text(outcome: RunOutcome, bench_dir: Path) -> str:
    lines = ["", "summary:"]
    for label, keys in (
        ("finished now", outcome.succeeded),
        ("skipped (already finished)", outcome.skipped),
        ("submitted (not waited for)", outcome.submitted),
        ("FAILED", outcome.failed),
        ("trained by another process now (not started)", outcome.busy),
        ("interrupted or not started", outcome.not_run),
    ):
        if keys:
            lines.append(f"  {label}: {len(keys)}: {', '.join(keys)}")
    lines.append(f"  logs: {bench_dir / 'logs'}")
    lines.append(f"  manifest: {outcome.manifest}")
    if outcome.failed:
        lines.append(
            "  rerun the same command to retry the failed folds (finished ones are skipped)"
        )
    if outcome.busy:
        lines.append(
            "  a busy fold's training belongs to another process (e.g. a killed runner's "
            "training, which keeps running): rerun when it has ended, or stop it and rerun "
            "to continue the fold with --c"
        )
    return "\n".join(lines)
