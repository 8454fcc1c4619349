"""The nnU-Net commands that the workflow runs, and where they run.

:func:`build_train_command` and :func:`build_predict_command` write the argument vectors of
``nnUNetv2_train`` and ``nnUNetv2_predict``; :func:`run_command` runs one command in the
foreground (the robustness predictions); an executor runs a list of jobs (the CV grid).

An executor takes a list of :class:`Job` (a command line, its environment and a log file),
runs them, and reports each start and end through callbacks, so that ``benchmark run`` can
print progress and keep its manifest current.

* :class:`LocalExecutor` - subprocesses on this machine, one at a time or ``jobs`` at once.
* :class:`SlurmExecutor` - one SLURM job per command through `submitit
  <https://github.com/facebookincubator/submitit>`_ (``pip install submitit``), with
  partition, GPU, time and memory options; waits for the jobs unless ``wait=False``.

Both write the command's stdout and stderr to the job's log file, and both report the exit
code of the command itself.

Size (about 610 lines): the command builders and both executors share Job, JobResult and
``run_logged`` (what a SLURM job executes); the SLURM executor could move to its own module.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde.errors import BenchmarkError

__all__ = [
    "DEFAULT_PREDICT_COMMAND",
    "DEFAULT_TRAIN_COMMAND",
    "Executor",
    "Job",
    "JobResult",
    "LocalExecutor",
    "SlurmExecutor",
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


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds (``2026-01-24T10:15:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        LocalExecutor._stop_process(proc, time.monotonic() + grace_s)
        raise


@dataclass(frozen=True)
class Job:
    """One command to run.

    Attributes
    ----------
    key
        Short unique name, e.g. ``nnUNetTrainerPDE3D/fold_0``.
    command
        The argument vector (no shell).
    log
        File that receives the command's stdout and stderr (appended to).
    env
        Complete environment of the command (None: inherit this process's).
    """

    key: str
    command: tuple[str, ...]
    log: Path
    env: Mapping[str, str] | None = None


@dataclass
class JobResult:
    """What happened to a :class:`Job`.

    ``returncode`` is the command's exit status (negative: killed by that signal), None if
    it never finished (interrupted, or submitted without waiting); ``job_id`` is the SLURM
    job id; ``error`` explains a failure that is not the command's own exit status.
    """

    key: str
    returncode: int | None = None
    started: str | None = None
    ended: str | None = None
    job_id: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


StartCallback = Callable[[Job, JobResult], None]
EndCallback = Callable[[Job, JobResult], None]


def run_logged(command: Sequence[str], log: str, env: Mapping[str, str] | None = None) -> int:
    """Run ``command``, appending its stdout and stderr to ``log``; return its exit code.

    This is also what a SLURM job executes (submitit pickles a reference to it), so the log
    of a fold lands in the same place whichever executor ran it.
    """
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab", buffering=0) as fh:
        fh.write(f"\n==> {utc_now()} {' '.join(command)}\n".encode())
        proc = subprocess.run(
            list(command),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            check=False,
        )
        fh.write(f"==> {utc_now()} exit code {proc.returncode}\n".encode())
    return proc.returncode


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


class Executor:
    """Interface: run jobs, calling ``on_start`` and ``on_end`` for each (from any thread)."""

    name = "executor"

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the manifest."""
        return {"executor": self.name}

    def run(
        self,
        jobs: Sequence[Job],
        on_start: StartCallback | None = None,
        on_end: EndCallback | None = None,
    ) -> list[JobResult]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """Run jobs as subprocesses on this machine, ``jobs`` at a time.

    On KeyboardInterrupt (Ctrl-C) the running commands get SIGTERM (then SIGKILL after
    ``grace_s``), their results say ``interrupted``, and the interrupt propagates; the
    interrupted folds continue with ``--c`` on the next ``benchmark run``.
    """

    name = "local"

    def __init__(
        self,
        jobs: int = 1,
        grace_s: float = 30.0,
        cuda_devices: Sequence[str] | None = None,
    ) -> None:
        """
        Parameters
        ----------
        jobs
            Commands at once.
        grace_s
            Seconds between SIGTERM and SIGKILL when interrupted.
        cuda_devices
            GPU ids to share out: each running command gets one of them, alone, as
            ``CUDA_VISIBLE_DEVICES``; ``jobs`` is then at most their number (None: commands
            inherit ``CUDA_VISIBLE_DEVICES``).
        """
        if jobs < 1:
            raise BenchmarkError(f"--jobs must be >= 1, got {jobs}")
        self.cuda_devices = list(cuda_devices) if cuda_devices else None
        if self.cuda_devices is not None:
            if len(set(self.cuda_devices)) != len(self.cuda_devices):
                raise BenchmarkError(f"--cuda-devices lists a device twice: {self.cuda_devices}")
            jobs = len(self.cuda_devices) if jobs == 1 else min(jobs, len(self.cuda_devices))
            self._free_devices: queue.SimpleQueue[str] = queue.SimpleQueue()
            for d in self.cuda_devices:
                self._free_devices.put(d)
        self.jobs = jobs
        self.grace_s = grace_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "jobs": self.jobs, "cuda_devices": self.cuda_devices}

    def _run_one(self, job: Job, on_start: StartCallback | None) -> JobResult:
        result = JobResult(job.key)
        if self._stop.is_set():
            result.error = "not started: the run was interrupted"
            return result
        device = self._free_devices.get() if self.cuda_devices is not None else None
        try:
            return self._run_on(job, on_start, result, device)
        finally:
            if device is not None:
                self._free_devices.put(device)

    def _run_on(
        self, job: Job, on_start: StartCallback | None, result: JobResult, device: str | None
    ) -> JobResult:
        env = None if job.env is None else dict(job.env)
        if device is not None:
            env = dict(os.environ) if env is None else env
            env["CUDA_VISIBLE_DEVICES"] = device
            result.extra["cuda_visible_devices"] = device
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "ab", buffering=0) as fh:
            result.started = utc_now()
            fh.write(f"\n==> {result.started} {' '.join(job.command)}\n".encode())
            if on_start is not None:
                on_start(job, result)
            try:
                # Own session: Ctrl-C in the terminal reaches only us; we stop the children.
                proc = subprocess.Popen(
                    list(job.command),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                result.ended = utc_now()
                result.error = f"cannot start {job.command[0]}: {exc}"
                fh.write(f"==> {result.ended} {result.error}\n".encode())
                return result
            with self._lock:
                self._procs[job.key] = proc
                # Ctrl-C between Popen and the registration above: _terminate_all has already
                # taken its list of processes without this one, so stop it here.
                stopped = self._stop.is_set()
            if stopped:
                self._stop_process(proc, time.monotonic() + self.grace_s)
            try:
                result.returncode = proc.wait()
            finally:
                with self._lock:
                    self._procs.pop(job.key, None)
            result.ended = utc_now()
            if self._stop.is_set() and result.returncode != 0:
                result.error = "interrupted"
            fh.write(f"==> {result.ended} exit code {result.returncode}\n".encode())
        return result

    def _terminate_all(self) -> None:
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace_s
        for p in procs:
            self._stop_process(p, deadline, terminated=True)

    @staticmethod
    def _stop_process(
        p: subprocess.Popen[bytes], deadline: float, terminated: bool = False
    ) -> None:
        """SIGTERM ``p``'s process group (unless already sent), SIGKILL it at ``deadline``."""
        if not terminated:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(
        self,
        jobs: Sequence[Job],
        on_start: StartCallback | None = None,
        on_end: EndCallback | None = None,
    ) -> list[JobResult]:
        results: dict[str, JobResult] = {}
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="benchmark")
        try:
            futures = {pool.submit(self._run_one, job, on_start): job for job in jobs}
            pending = set(futures)
            while pending:
                # A timeout keeps the main thread responsive to Ctrl-C.
                done = {f for f in pending if f.done()}
                if not done:
                    time.sleep(0.2)
                    continue
                for f in done:
                    job = futures[f]
                    results[job.key] = f.result()
                    if on_end is not None:
                        on_end(job, results[job.key])
                pending -= done
        except KeyboardInterrupt:
            self._terminate_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return [results[j.key] for j in jobs]


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
