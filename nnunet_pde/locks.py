"""One writer per fold: an advisory lock that the training process itself holds.

``benchmark run`` starts every training as::

    python -m nnunet_pde.locks FOLD_FOLDER -- nnUNetv2_train DATASET CONF FOLD -tr T ...

The wrapper takes an exclusive ``flock`` on ``FOLD_FOLDER/nnunet_pde_training.lock``, writes
who holds it (pid, host, time, command) into the file, and then *execs* the training, so the
lock belongs to the training process (and to the worker processes it forks), not to the
runner. Whatever happens to the runner (Ctrl-C, SIGTERM, SIGHUP, or SIGKILL by the OOM
killer), the lock is held exactly as long as the training runs, and the kernel releases it
when the training ends, however it ends: there is no stale lock to clean up.

A second ``benchmark run`` on the same grid asks :func:`lock_holder` before it starts a fold;
if the fold is held it does not start a second writer (:data:`BUSY_EXIT_CODE` if it races).

``flock`` is advisory and local to a machine's kernel; on NFS v4 Linux maps it to a lease
lock the server arbitrates, on older network file systems it may not exclude a second
host. The lock file itself stays in the fold folder between runs (an empty lock is not a
held lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["BUSY_EXIT_CODE", "LOCK_NAME", "LockHolder", "lock_holder", "locked_command", "main"]

#: The file in a fold folder that a running training holds locked.
LOCK_NAME = "nnunet_pde_training.lock"
#: Exit status of the wrapper when another process holds the fold (EX_TEMPFAIL).
BUSY_EXIT_CODE = 75


@dataclass(frozen=True)
class LockHolder:
    """Who holds a fold's lock, as the holder wrote it (fields may be missing: None)."""

    path: Path
    pid: int | None
    host: str | None
    since: str | None
    command: str | None

    def describe(self) -> str:
        """``pid 123 on host h since 2026-...`` (what is known)."""
        parts = [f"pid {self.pid}" if self.pid is not None else "an unknown process"]
        if self.host:
            parts.append(f"on host {self.host}")
        if self.since:
            parts.append(f"since {self.since}")
        return " ".join(parts)


def lock_path(folder: str | os.PathLike[str]) -> Path:
    """``<fold folder>/nnunet_pde_training.lock``."""
    return Path(folder) / LOCK_NAME


def _read_holder(path: Path) -> LockHolder:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    pid = info.get("pid")
    return LockHolder(
        path=path,
        pid=pid if isinstance(pid, int) else None,
        host=info.get("host") if isinstance(info.get("host"), str) else None,
        since=info.get("since") if isinstance(info.get("since"), str) else None,
        command=info.get("command") if isinstance(info.get("command"), str) else None,
    )


def lock_holder(folder: str | os.PathLike[str]) -> LockHolder | None:
    """The process that holds ``folder``'s training lock now, or None if nobody does.

    Probes with a non-blocking shared lock, so two probes never block each other and a probe
    never blocks a training that starts. A missing fold folder or lock file is not held.
    """
    path = lock_path(folder)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def locked_command(folder: str | os.PathLike[str], command: Sequence[str]) -> tuple[str, ...]:
    """``command`` wrapped so that it runs holding ``folder``'s training lock."""
    return (sys.executable, "-m", "nnunet_pde.locks", str(folder), "--", *command)


def _try_exclusive(fd: int, tries: int = 5, wait_s: float = 0.2) -> bool:
    """Take the exclusive lock; a few tries, so a :func:`lock_holder` probe does not count."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i + 1 < tries:
                time.sleep(wait_s)
    return False


def _acquire_and_exec(folder: Path, command: Sequence[str]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_exclusive(fd):
        holder = _read_holder(path)
        os.close(fd)
        print(
            f"nnunet-pde: not started: {folder} is being trained by {holder.describe()} "
            f"(lock {path}). Two trainings must not write one fold folder; wait until that "
            "training ends, or stop it, then rerun (the fold then continues with --c).",
            file=sys.stderr,
            flush=True,
        )
        return BUSY_EXIT_CODE
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    # The descriptor (and with it the lock) passes through exec to the training and to the
    # processes it forks; the kernel drops the lock when the last of them exits.
    os.set_inheritable(fd, True)
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        print(f"nnunet-pde: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        return 127
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nnunet_pde.locks FOLDER -- COMMAND...``: run COMMAND holding FOLDER's lock."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m nnunet_pde.locks FOLD_FOLDER -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return _acquire_and_exec(Path(args[0]), args[2:])


if __name__ == "__main__":
    sys.exit(main())
