"""``nnunet-pde benchmark run``: train every (trainer, fold) of a cross-validation grid.

For each trainer ``T`` and fold ``k`` the command is nnU-Net's own::

    nnUNetv2_train DATASET CONFIGURATION k -tr T -p PLANS [-device D] [--c] [EXTRA...]

The grid is resumable: a fold with ``checkpoint_final.pth`` and ``validation/summary.json``
is skipped, a fold with a checkpoint but no finished validation is continued with ``--c``,
and any other fold is trained from scratch (see :func:`nnunet_pde.folders.fold_state`).
Every invocation writes a new manifest (:mod:`nnunet_pde.benchmark.manifest`) and one log
per fold in ``$nnUNet_results/<dataset>/nnunet_pde_benchmark/``.

:func:`run_benchmark` puts the steps together, each in its own module:

* :mod:`~nnunet_pde.benchmark.preflight` - the checks before anything starts;
* :mod:`~nnunet_pde.benchmark.grid` - the plan: skip, continue, train or busy per fold;
* :mod:`~nnunet_pde.benchmark.grid_run` - running the plan through an executor, with the
  manifest kept current and Ctrl-C / SIGTERM handled;
* :mod:`~nnunet_pde.benchmark.progress` - the progress lines of the running folds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from nnunet_pde.benchmark.grid import (
    ACTION_BUSY,
    ACTION_CONTINUE,
    ACTION_SKIP,
    ACTION_TRAIN,
    LATEST,
    FoldTask,
    benchmark_folder,
    plan_grid,
    set_aside,
)
from nnunet_pde.benchmark.grid_run import GridRun, RunOutcome, new_manifest
from nnunet_pde.benchmark.manifest import close_abandoned_manifests, create_manifest_file
from nnunet_pde.benchmark.preflight import check_device, check_run_environment, resolve_trainers
from nnunet_pde.commands import DEFAULT_TRAIN_COMMAND, Executor
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.folders import check_trainer_names, parse_folds, possible_folds

__all__ = ["RunOutcome", "run_benchmark"]


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
    records: str | os.PathLike[str] | None = None,
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
        See :func:`~nnunet_pde.commands.build_train_command`.
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
    records
        A folder of fold records (``benchmark export``): folds recorded there are skipped
        even where this results tree has no finished training of them.

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
        records=records,
    )
    outcome = RunOutcome(tasks, dry_run=dry_run)
    print_fn(_plan_line(name, configuration, plans, trainers, tasks, runs))
    if dry_run:
        for t in tasks:
            if t.torn is not None:
                print_fn(f"# set aside {t.folder / LATEST}: {t.torn}")
            if t.action == ACTION_SKIP and t.recorded is not None:
                print_fn(f"# skip {t.key}: recorded ({t.recorded})")
            elif t.action == ACTION_SKIP:
                print_fn(f"# skip {t.key}: finished ({t.folder})")
            elif t.action == ACTION_BUSY:
                print_fn(f"# busy {t.key}: trained by {t.holder} ({t.folder})")
            else:
                print_fn(t.command_line())
        return outcome

    for t in tasks:
        if t.torn is not None:
            torn = t.folder / LATEST
            moved = set_aside(torn)
            then = (
                "continues from checkpoint_best.pth"
                if t.action == ACTION_CONTINUE
                else "trains again from the start"
            )
            print_fn(
                f"note: {torn} does not load ({t.torn}): its training was stopped while "
                f"writing it. Set aside as {moved.name}; {t.key} {then}"
            )
    bench_dir = benchmark_folder(results, name)
    for stale in close_abandoned_manifests(bench_dir):
        print_fn(
            f"note: {stale.name} said 'running' but its runner is gone (killed?): marked "
            "'abandoned'; its unfinished folds are continued here unless their training still "
            "runs (busy)"
        )
    started_dt = datetime.now(timezone.utc)
    outcome.manifest = create_manifest_file(bench_dir, started_dt)
    manifest = new_manifest(
        started_dt, name, configuration, plans, trainers, folds, device, extra_args,
        train_command, executor, env, runs,
    )  # fmt: skip
    grid = GridRun(outcome, manifest, trainer_classes, env, print_fn)
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
    n_rec = sum(t.recorded is not None for t in tasks)
    line = (
        f"benchmark {name} {configuration} -p {plans}: "
        + (f"{len(runs)} run(s) ({', '.join(map(str, runs))}) x " if list(runs) != [1] else "")
        + f"{len(trainers)} trainer(s) x "
        f"{len(tasks) // max(1, len(trainers) * len(runs))} fold(s) = {len(tasks)} trainings; "
        f"{n_skip} finished (skipped"
        + (f"; {n_rec} of them recorded only" if n_rec else "")
        + "), "
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
