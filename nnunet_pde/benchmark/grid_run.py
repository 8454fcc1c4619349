"""Executing the grid of ``benchmark run``: the executor's callbacks, the manifest, the outcome.

:class:`GridRun` hands the tasks still to do to an executor, prints a line when a fold
starts and ends (and the progress lines of :mod:`nnunet_pde.benchmark.progress` meanwhile),
keeps the run's manifest (:mod:`nnunet_pde.benchmark.manifest`) current after every event,
and turns Ctrl-C or SIGTERM into an ``interrupted`` run whose folds continue with ``--c``
next time. :class:`RunOutcome` is what the run did, per task.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.grid import (
    ACTION_BUSY,
    ACTION_CONTINUE,
    ACTION_SKIP,
    FoldTask,
)
from nnunet_pde.benchmark.manifest import (
    git_revision,
    host_info,
    software_versions,
    utc_now,
    write_manifest,
)
from nnunet_pde.benchmark.progress import (
    ProgressMonitor,
    format_duration,
    planned_epochs,
    progress_interval,
)
from nnunet_pde.commands import Executor, Job, JobResult
from nnunet_pde.errors import interrupt_signals
from nnunet_pde.folders import FOLD_FINISHED, fold_state
from nnunet_pde.locks import BUSY_EXIT_CODE, locked_command

__all__ = ["GridRun", "RunOutcome", "fold_outcome", "new_manifest"]


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
        return self._keys(lambda t, r: r is not None and fold_outcome(t, r) == "finished")

    @property
    def failed(self) -> list[str]:
        return self._keys(lambda t, r: r is not None and fold_outcome(t, r) == "failed")

    @property
    def submitted(self) -> list[str]:
        return self._keys(lambda t, r: r is not None and fold_outcome(t, r) == "submitted")

    @property
    def busy(self) -> list[str]:
        """Folds another process was training: not started (or refused by the lock)."""
        return self._keys(
            lambda t, r: t.action == ACTION_BUSY or (r is not None and fold_outcome(t, r) == "busy")
        )

    @property
    def not_run(self) -> list[str]:
        return self._keys(lambda t, r: t.action not in (ACTION_SKIP, ACTION_BUSY) and r is None)

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return True
        return not (self.failed or self.not_run or self.busy or self.interrupted)


def fold_outcome(task: FoldTask, result: JobResult) -> str:
    """What a job's result means for its fold: ``busy``, ``submitted``, ``finished`` or
    ``failed``."""
    if result.returncode == BUSY_EXIT_CODE and result.error is None:
        return "busy"
    if result.returncode is None and result.error is None and result.job_id is not None:
        return "submitted"
    if result.returncode == 0 and result.error is None and fold_state(task.folder) == FOLD_FINISHED:
        return "finished"
    return "failed"


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


def new_manifest(
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
    """The manifest of a run that starts now (its ``jobs`` are filled in by :class:`GridRun`)."""
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


class GridRun:
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
        self.monitor = ProgressMonitor(print_fn, progress_interval(env))

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
        state = fold_outcome(t, result)
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
        took = f" in {format_duration(time.monotonic() - t0)}" if t0 is not None else ""
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
                        outcome=fold_outcome(self.task_by_key[job.key], res),
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
