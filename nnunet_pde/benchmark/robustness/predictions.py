"""Test-set predictions of the scanner-shift regime: which folders are missing or stale, and
``nnUNetv2_predict`` into them (resumable, folder by folder)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.robustness.model import PREDICTION_RECORD
from nnunet_pde.benchmark.robustness.pipeline import train_hint
from nnunet_pde.benchmark.settings import EvaluationSettings
from nnunet_pde.commands import build_predict_command
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import list_cases
from nnunet_pde.folders import fold_dir


def prediction_state(
    folder: Path, cases: Sequence[str], file_ending: str, expect: Mapping[str, Any]
) -> tuple[str, str]:
    """(``complete`` | ``missing`` | ``stale``, detail) of one prediction folder."""
    if not folder.is_dir():
        return "missing", "no folder"
    have = set(list_cases(folder, file_ending))
    record = folder / PREDICTION_RECORD
    if record.is_file():
        try:
            rec = json.loads(record.read_text())
        except json.JSONDecodeError:
            rec = {}
        diff = [k for k, v in expect.items() if rec.get(k) != v]
        if diff:
            return "stale", ", ".join(f"{k} {rec.get(k)} (now {expect[k]})" for k in diff)
    lacking = [c for c in cases if c not in have]
    if lacking:
        return "missing", f"{len(lacking)} of {len(cases)} case(s) not predicted"
    return "complete", ""


def missing_predictions(
    trainers: Sequence[str],
    inputs: Sequence[tuple[str, Path]],
    pred_root: Path,
    cases: Sequence[str],
    file_ending: str,
    predictor: Predictor,
) -> list[tuple[str, str, Path, Path]]:
    """(trainer, key, input, output folder) of every prediction folder still to make.

    ``inputs`` are (key, input folder); the predictions of ``trainer`` for ``key`` are in
    ``<pred_root>/<trainer>/<key>``.

    Raises BenchmarkError listing the folders made with other settings.
    """
    s = predictor.settings
    todo: list[tuple[str, str, Path, Path]] = []
    stale: list[str] = []
    for t in trainers:
        expect = {
            "trainer": t,
            "configuration": s.configuration,
            "plans": s.plans,
            "folds": predictor.folds,
        }
        for key, folder in inputs:
            target = pred_root / t / key
            state, detail = prediction_state(target, cases, file_ending, expect)
            if state == "stale":
                stale.append(f"  {target}: made with {detail}")
            elif state == "missing":
                todo.append((t, key, folder, target))
    if stale:
        raise BenchmarkError(
            "these prediction folders were made with other settings; delete them (or use "
            "--predictions DIR) and run again:\n" + "\n".join(stale),
            multiline=True,
        )
    return todo


@dataclass(frozen=True)
class Predictor:
    """How the missing test-set predictions are made: ``nnUNetv2_predict`` per folder."""

    name: str
    results: Path
    folds: list[int]
    device: str | None
    extra_args: tuple[str, ...]
    predict_command: tuple[str, ...]
    runner: Callable[[Sequence[str]], int]
    settings: EvaluationSettings

    def command(self, trainer: str, inp: Path, out: Path) -> list[str]:
        """The ``nnUNetv2_predict`` command line from ``inp`` into ``out``."""
        s = self.settings
        return build_predict_command(
            inp, out, self.name, s.configuration, s.plans, trainer, self.folds, self.device,
            self.extra_args, self.predict_command,
        )  # fmt: skip

    def _fold(self, trainer: str, k: int) -> Path:
        s = self.settings
        return fold_dir(self.results, self.name, trainer, s.plans, s.configuration, k)

    def _check_ready(self, todo: Sequence[tuple[str, str, Path, Path]]) -> None:
        """BenchmarkError if the command is not on PATH or a fold is not trained."""
        exe = self.predict_command[0] if self.predict_command else ""
        if not exe or shutil.which(exe, path=self.settings.env.get("PATH")) is None:
            raise BenchmarkError(
                f"'{exe}' is not on PATH; activate the environment where nnunetv2 is installed"
            )
        s = self.settings
        untrained = sorted(
            {
                f"  {t} fold {k}: no {self._fold(t, k)}/checkpoint_final.pth; train it with\n"
                + train_hint(self.name, t, s.configuration, s.plans, self.folds)
                for t, _, _, _ in todo
                for k in self.folds
                if not (self._fold(t, k) / "checkpoint_final.pth").is_file()
            }
        )
        if untrained:
            raise BenchmarkError(
                "cannot predict with untrained folds:\n" + "\n".join(untrained), multiline=True
            )

    def predict_missing(
        self, todo: Sequence[tuple[str, str, Path, Path]], cases: Sequence[str], file_ending: str
    ) -> None:
        """Run ``nnUNetv2_predict`` for every missing folder, into ``.<folder>.partial`` first."""
        self._check_ready(todo)
        s = self.settings
        for i, (t, key, inp, target) in enumerate(todo, 1):
            partial = target.with_name(f".{target.name}.partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.parent.mkdir(parents=True, exist_ok=True)
            cmd = self.command(t, inp, partial)
            s.print_fn(f"[{i}/{len(todo)}] predict {t} {key}: {shlex.join(cmd)}")
            rc = self.runner(cmd)
            if rc != 0:
                raise BenchmarkError(
                    f"nnUNetv2_predict failed with exit code {rc} for {t} {key}: "
                    f"{shlex.join(cmd)}; the folders finished so far are kept, run the same "
                    "command again to continue"
                )
            lacking = [c for c in cases if not (partial / f"{c}{file_ending}").is_file()]
            if lacking:
                raise BenchmarkError(
                    f"nnUNetv2_predict exited with 0 but wrote no prediction for {len(lacking)} "
                    f"case(s) into {partial} ({', '.join(lacking[:5])})"
                )
            record = {
                "trainer": t,
                "configuration": s.configuration,
                "plans": s.plans,
                "folds": self.folds,
                "dataset": self.name,
                "input": str(inp),
                "command": list(cmd),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (partial / PREDICTION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():  # an incomplete folder from an earlier, interrupted run
                shutil.rmtree(target)
            os.replace(partial, target)
