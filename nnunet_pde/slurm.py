"""The SLURM executor: one SLURM job per command, through submitit.

:class:`SlurmExecutor` submits each :class:`~nnunet_pde.executors.Job` through `submitit
<https://github.com/facebookincubator/submitit>`_ (``pip install submitit``), with
partition, GPU, time and memory options, and waits for the jobs unless ``wait=False``. A
job executes :func:`run_logged_in_job`: the command with the submitting shell's environment
(:func:`job_environment`), its output appended to the job's log file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunet_pde.errors import BenchmarkError
from nnunet_pde.executors import (
    EndCallback,
    Executor,
    Job,
    JobResult,
    StartCallback,
    run_logged,
    utc_now,
)

__all__ = [
    "NODE_VARIABLES",
    "SlurmExecutor",
    "job_environment",
    "parse_time_minutes",
    "run_logged_in_job",
]


#: Variables that describe the compute node and the job's allocation: inside a SLURM job these
#: come from the node, never from the submitting shell (a login node's CUDA_VISIBLE_DEVICES
#: would otherwise override the GPUs SLURM assigned).
NODE_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "HOSTNAME",
    "TMPDIR",
)


def job_environment(
    submitted: Mapping[str, str] | None, node: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The environment of a command inside a SLURM job.

    The submitting shell's variables (``nnUNet_*``, ``PATH``, ...), except that the node's
    ``SLURM_*`` and :data:`NODE_VARIABLES` take precedence and submitted ones of those are
    dropped.
    """
    if submitted is None:
        return None
    node = os.environ if node is None else node

    def is_node_var(k: str) -> bool:
        return k.startswith("SLURM") or k in NODE_VARIABLES

    env = {k: v for k, v in submitted.items() if not is_node_var(k)}
    env.update({k: v for k, v in node.items() if is_node_var(k)})
    return env


def run_logged_in_job(
    command: Sequence[str], log: str, env: Mapping[str, str] | None = None
) -> int:
    """:func:`run_logged` with :func:`job_environment`; what a SLURM job executes."""
    return run_logged(command, log, job_environment(env))


def parse_time_minutes(text: str | int | None) -> int | None:
    """A SLURM time limit in minutes from ``MINUTES``, ``HH:MM[:SS]`` or ``D-HH[:MM[:SS]]``."""
    if text is None:
        return None
    s = str(text).strip()
    try:
        days = 0
        if "-" in s:
            d, s = s.split("-", 1)
            days = int(d)
            parts = [int(x) for x in s.split(":")]
            parts += [0] * (3 - len(parts))
            h, m, sec = parts
        elif ":" in s:
            parts = [int(x) for x in s.split(":")]
            if len(parts) == 2:
                parts.append(0)
            h, m, sec = parts
        else:
            h, m, sec = 0, int(s), 0
    except ValueError:
        raise BenchmarkError(
            f"--time must be MINUTES, HH:MM[:SS] or D-HH[:MM[:SS]], got '{text}'"
        ) from None
    minutes = days * 24 * 60 + h * 60 + m + (1 if sec else 0)
    if minutes < 1:
        raise BenchmarkError(f"--time must be at least one minute, got '{text}'")
    return minutes


class SlurmExecutor(Executor):
    """Submit one SLURM job per command through submitit.

    Parameters
    ----------
    folder
        submitit's folder for job scripts, pickles and SLURM's own stdout/stderr
        (``%j_0_log.out``); must be on a file system the compute nodes share.
    partition
        ``--partition`` (None: the cluster's default).
    gpus
        GPUs per job (``--gpus-per-node``); 0 requests none.
    time_min
        Time limit in minutes (``--time``).
    mem_gb
        Memory per job in GB (``--mem``; None: the cluster's default).
    cpus_per_task
        CPU cores per job (nnU-Net's data augmentation workers use them).
    wait
        Wait for the jobs and report their exit codes (False: submit and return; the
        results then have only ``job_id``).
    additional_parameters
        Extra ``#SBATCH`` settings passed to submitit (e.g. ``{"account": "proj"}``).
    poll_s
        Seconds between status checks while waiting.
    """

    name = "slurm"

    def __init__(
        self,
        folder: str | os.PathLike[str],
        partition: str | None = None,
        gpus: int = 1,
        time_min: int | None = 24 * 60,
        mem_gb: float | None = None,
        cpus_per_task: int | None = None,
        wait: bool = True,
        additional_parameters: Mapping[str, Any] | None = None,
        poll_s: float = 10.0,
    ) -> None:
        if gpus < 0:
            raise BenchmarkError(f"--gpus must be >= 0, got {gpus}")
        self.folder = Path(folder)
        self.partition = partition
        self.gpus = gpus
        self.time_min = time_min
        self.mem_gb = mem_gb
        self.cpus_per_task = cpus_per_task
        self.wait = wait
        self.additional_parameters = dict(additional_parameters or {})
        self.poll_s = poll_s

    def describe(self) -> dict[str, Any]:
        return {
            "executor": self.name,
            "folder": str(self.folder),
            "partition": self.partition,
            "gpus": self.gpus,
            "time_min": self.time_min,
            "mem_gb": self.mem_gb,
            "cpus_per_task": self.cpus_per_task,
            "wait": self.wait,
            "additional_parameters": self.additional_parameters,
        }

    def _executor(self) -> Any:
        try:
            import submitit
        except ImportError:
            raise BenchmarkError(
                "the slurm executor needs submitit: pip install 'nnunet-pde[slurm]' "
                "(or pip install submitit)"
            ) from None
        ex = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
        params: dict[str, Any] = {}
        if self.time_min is not None:
            params["timeout_min"] = int(self.time_min)
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.gpus:
            params["gpus_per_node"] = int(self.gpus)
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.cpus_per_task is not None:
            params["cpus_per_task"] = int(self.cpus_per_task)
        if self.additional_parameters:
            params["slurm_additional_parameters"] = dict(self.additional_parameters)
        ex.update_parameters(**params)
        return ex

    def run(
        self,
        jobs: Sequence[Job],
        on_start: StartCallback | None = None,
        on_end: EndCallback | None = None,
    ) -> list[JobResult]:
        ex = self._executor()
        submitted: list[tuple[Job, Any, JobResult]] = []
        for job in jobs:
            ex.update_parameters(name=f"nnunet_pde:{job.key}")
            try:
                sj = ex.submit(run_logged_in_job, list(job.command), str(job.log), job.env)
            except Exception as exc:  # noqa: BLE001 - sbatch errors come as various types
                result = JobResult(job.key, ended=utc_now(), error=f"sbatch failed: {exc}")
                if on_end is not None:
                    on_end(job, result)
                submitted.append((job, None, result))
                continue
            result = JobResult(job.key, started=utc_now(), job_id=str(sj.job_id))
            result.extra["slurm_stdout"] = str(sj.paths.stdout)
            result.extra["slurm_stderr"] = str(sj.paths.stderr)
            if on_start is not None:
                on_start(job, result)
            submitted.append((job, sj, result))
        if not self.wait:
            return [r for _, _, r in submitted]
        pending = [(j, sj, r) for j, sj, r in submitted if sj is not None]
        try:
            while pending:
                still = []
                for job, sj, result in pending:
                    if not sj.done():
                        still.append((job, sj, result))
                        continue
                    result.ended = utc_now()
                    try:
                        result.returncode = int(sj.result())
                    except Exception as exc:  # noqa: BLE001 - submitit's job failure
                        result.error = (
                            f"SLURM job {sj.job_id} failed ({sj.state}): "
                            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
                        )
                    if on_end is not None:
                        on_end(job, result)
                if still:
                    time.sleep(self.poll_s)
                pending = still
        except KeyboardInterrupt:
            for _, sj, result in pending:
                try:
                    sj.cancel(check=False)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
                result.error = "interrupted: job cancelled (scancel)"
            raise
        return [r for _, _, r in submitted]
