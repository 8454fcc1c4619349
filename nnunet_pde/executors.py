"""Jobs and where they run: :class:`Job`, :class:`JobResult`, the :class:`Executor` interface
and the :class:`LocalExecutor`.

An executor takes a list of :class:`Job` (a command line, its environment and a log file),
runs them, and reports each start and end through callbacks, so that ``benchmark run`` can
print progress and keep its manifest current. :class:`LocalExecutor` runs subprocesses on
this machine, one at a time or ``jobs`` at once; the SLURM executor is in
:mod:`nnunet_pde.slurm`. Both write the command's stdout and stderr to the job's log file
(:func:`run_logged` is what a SLURM job executes), and both report the exit code of the
command itself.
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
    "EndCallback",
    "Executor",
    "Job",
    "JobResult",
    "LocalExecutor",
    "StartCallback",
    "run_logged",
    "stop_process",
    "utc_now",
]


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds (``2026-01-24T10:15:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def stop_process(p: subprocess.Popen[bytes], deadline: float, terminated: bool = False) -> None:
    """SIGTERM ``p``'s process group (unless already sent), SIGKILL it at ``deadline``
    (``time.monotonic()`` seconds)."""
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
                stop_process(proc, time.monotonic() + self.grace_s)
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
            stop_process(p, deadline, terminated=True)

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
