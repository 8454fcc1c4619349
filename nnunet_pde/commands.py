"""The nnU-Net commands that the workflow runs, and where they run.

:func:`build_train_command` and :func:`build_predict_command` write the argument vectors of
``nnUNetv2_train`` and ``nnUNetv2_predict``; :func:`run_command` runs one command in the
foreground (the robustness predictions). A list of jobs (the CV grid) runs through an
executor: :class:`~nnunet_pde.executors.LocalExecutor` (subprocesses on this machine, see
:mod:`nnunet_pde.executors`) or :class:`~nnunet_pde.slurm.SlurmExecutor` (one SLURM job per
command, see :mod:`nnunet_pde.slurm`); both are importable from here too.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_pde.executors import (
    EndCallback,
    Executor,
    Job,
    JobResult,
    LocalExecutor,
    StartCallback,
    run_logged,
    stop_process,
    utc_now,
)
from nnunet_pde.slurm import (
    NODE_VARIABLES,
    SlurmExecutor,
    job_environment,
    parse_time_minutes,
    run_logged_in_job,
)

__all__ = [
    "DEFAULT_PREDICT_COMMAND",
    "DEFAULT_TRAIN_COMMAND",
    "NODE_VARIABLES",
    "EndCallback",
    "Executor",
    "Job",
    "JobResult",
    "LocalExecutor",
    "SlurmExecutor",
    "StartCallback",
    "build_predict_command",
    "build_train_command",
    "job_environment",
    "parse_time_minutes",
    "run_logged",
    "run_command",
    "run_logged_in_job",
    "utc_now",
]

DEFAULT_TRAIN_COMMAND = ("nnUNetv2_train",)
DEFAULT_PREDICT_COMMAND = ("nnUNetv2_predict",)


def build_train_command(
    dataset: str,
    configuration: str,
    fold: int,
    trainer: str,
    plans: str,
    device: str | None = None,
    continue_training: bool = False,
    extra_args: Sequence[str] = (),
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
) -> tuple[str, ...]:
    """``nnUNetv2_train DATASET CONF FOLD -tr T -p P [-device D] [--c] [EXTRA...]``.

    ``train_command`` replaces ``nnUNetv2_train`` (e.g. a container wrapper such as
    ``apptainer exec img.sif nnUNetv2_train``); the nnU-Net arguments follow it.
    """
    cmd = [*train_command, dataset, configuration, str(fold), "-tr", trainer, "-p", plans]
    if device is not None:
        cmd += ["-device", device]
    if continue_training:
        cmd.append("--c")
    cmd += list(extra_args)
    return tuple(cmd)


def build_predict_command(
    input_dir: Path,
    output_dir: Path,
    dataset: str,
    configuration: str,
    plans: str,
    trainer: str,
    folds: Sequence[int],
    device: str | None = None,
    extra_args: Sequence[str] = (),
    predict_command: Sequence[str] = DEFAULT_PREDICT_COMMAND,
) -> tuple[str, ...]:
    """``nnUNetv2_predict -i IN -o OUT -d DATASET -c CONF -p PLANS -tr T -f F... [-device D]``."""
    cmd = [
        *predict_command,
        "-i",
        str(input_dir),
        "-o",
        str(output_dir),
        "-d",
        dataset,
        "-c",
        configuration,
        "-p",
        plans,
        "-tr",
        trainer,
        "-f",
        *(str(k) for k in folds),
    ]
    if device is not None:
        cmd += ["-device", device]
    return (*cmd, *extra_args)


def run_command(
    command: Sequence[str], env: Mapping[str, str] | None = None, grace_s: float = 30.0
) -> int:
    """Run ``command`` with this process's stdout/stderr; return its exit code.

    The command runs in its own session; on KeyboardInterrupt (Ctrl-C, or SIGTERM under
    :func:`nnunet_pde.errors.interrupt_signals`) it gets SIGTERM, then SIGKILL after
    ``grace_s`` seconds, and the interrupt propagates.
    """
    proc = subprocess.Popen(
        list(command), env=None if env is None else dict(env), start_new_session=True
    )
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_process(proc, time.monotonic() + grace_s)
        raise
