"""The grid of ``benchmark run``: one :class:`FoldTask` per (run, trainer, fold), planned.

:func:`plan_grid` reads the fold folders and decides, for every cell, what the run will do
with it: ``skip`` a finished fold, ``continue`` an interrupted one with ``--c``, ``train``
one from scratch, or leave a fold alone whose training lock another process holds
(``busy``, :mod:`nnunet_pde.locks`). It runs nothing.

nnU-Net writes ``checkpoint_latest.pth`` in place, so a training stopped while writing it
(Ctrl-C, a kill, a node's time limit) leaves a torn file that ``--c`` would crash on. Such a
file of a fold nobody trains is planned as set aside (:attr:`FoldTask.torn`): the runner
renames it (:func:`set_aside`, nothing is deleted) and the fold continues from
``checkpoint_best.pth``, or trains again without one. Any other checkpoint that does not
load stops the run with what to do.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_pde.benchmark.manifest import MANIFEST_DIRNAME
from nnunet_pde.benchmark.records import find_record
from nnunet_pde.benchmark.runs import run_results
from nnunet_pde.commands import DEFAULT_TRAIN_COMMAND, build_train_command
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.folders import (
    FOLD_FINISHED,
    FOLD_INTERRUPTED,
    FOLD_NEW,
    check_trainer_names,
    checkpoint_problem,
    fold_dir,
    fold_state,
    parse_folds,
    resume_checkpoint,
    trainer_dir_name,
)
from nnunet_pde.locks import lock_holder

__all__ = [
    "ACTION_BUSY",
    "ACTION_CONTINUE",
    "ACTION_SKIP",
    "ACTION_TRAIN",
    "LATEST",
    "FoldTask",
    "benchmark_folder",
    "plan_grid",
    "set_aside",
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
    recorded
        The record (:mod:`nnunet_pde.benchmark.records`) that makes an unfinished fold a
        ``skip``: it was trained and exported before, e.g. on another machine.
    torn
        Why the fold's ``checkpoint_latest.pth`` does not load, when it is torn and is to be
        set aside before the fold runs (:func:`set_aside`); ``state`` and ``action`` are
        then those of the folder without it.
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
    torn: str | None = None
    recorded: Path | None = None

    @property
    def key(self) -> str:
        base = f"{self.trainer}/fold_{self.fold}"
        return base if self.run == 1 else f"run_{self.run}/{base}"

    def command_line(self) -> str:
        """The command as a shell would take it."""
        return shlex.join(self.command)


#: The checkpoint a stopped training can leave torn (:attr:`FoldTask.torn`)
LATEST = "checkpoint_latest.pth"


def set_aside(path: Path) -> Path:
    """Rename a torn checkpoint to ``<name>.torn`` (``.torn.1``, ... when taken), so that
    ``nnUNetv2_train --c`` no longer finds it; the new path."""
    target = path.with_name(path.name + ".torn")
    k = 0
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.torn.{k}")
    path.rename(target)
    return target


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
    records: str | os.PathLike[str] | None = None,
) -> list[FoldTask]:
    """Decide skip / continue / train for every (run, trainer, fold); runs outermost, then
    trainers, so that run 1 of every trainer is done before any run 2.

    ``results`` is ``$nnUNet_results``; run r trains in :func:`run_results` (results, r).
    With ``records`` (a folder of ``benchmark export``), a fold that is not finished in the
    tree but has a record there is skipped too (unless another process trains it now).
    Reads only the fold folders and records; runs nothing.
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
        holder = lock_holder(folder)
        recorded = None
        if records is not None and state != FOLD_FINISHED and holder is None:
            recorded = find_record(records, trainer, plans, configuration, run, fold)
        # a fold another process trains is left alone: its checkpoint may be half written
        # now; a recorded fold is not run, so its checkpoints do not matter
        problem = None if resume is None or holder or recorded else checkpoint_problem(resume)
        torn = None
        if problem is not None and resume is not None and resume.name == LATEST:
            # torn by a stopped training: planned without it (the runner sets it aside)
            torn = problem
            resume = resume_checkpoint(folder, without=(LATEST,))
            state = FOLD_INTERRUPTED if resume is not None else FOLD_NEW
            problem = None if resume is None else checkpoint_problem(resume)
        if problem is not None:
            broken.append(f"{resume} does not load: {problem}")
        if state == FOLD_FINISHED or recorded is not None:
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
                torn=torn, recorded=recorded,
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
