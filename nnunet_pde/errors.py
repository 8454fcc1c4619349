"""Expected failures, and the guards that keep bad input from losing data.

Every failure that bad input can cause (a missing or unreadable file, an existing output, a
bad option value, a read-only folder) is an :class:`NnunetPdeError` or an ``OSError``. The
command line catches both at one place (:func:`report_failure`) and prints one line::

    error: --flag: what was wrong; what to do

with exit code 2; nothing else reaches the user as a traceback.

The helpers below are used by every command that writes files:

* :func:`interrupt_signals` turns SIGTERM, SIGHUP and SIGINT into ``KeyboardInterrupt``,
  so the ``finally`` blocks that remove temporary files also run when a job is cancelled;
* :func:`atomic_write_bytes` / :func:`atomic_write_text` write through a temporary file in
  the destination's folder;
* :func:`check_replaceable`, :func:`staged_folder` and :data:`OUTPUT_MARKER`: an output
  folder is written under a temporary name, carries a marker file listing the files the
  command wrote, and is replaced by ``--overwrite`` only when it holds nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "OUTPUT_MARKER",
    "BenchmarkError",
    "CheckpointError",
    "Interrupted",
    "NnunetPdeError",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "cli_command",
    "check_replaceable",
    "error_line",
    "interrupt_signals",
    "report_failure",
    "staged_folder",
    "write_marker",
]

#: File in an output folder that lists what the command wrote (relative paths).
OUTPUT_MARKER = ".nnunet_pde_written.json"


class NnunetPdeError(ValueError):
    """An expected failure caused by the input; the message says what to change.

    Parameters
    ----------
    message
        What was wrong and what to do.
    flag
        The command-line argument concerned (``--output``, ``CHECKPOINT``), prefixed to the
        message on the command line.
    multiline
        The message ends in lines to copy (commands to run, folders to make), so the command
        line prints it as it is instead of folding it onto one line.
    """

    def __init__(self, message: str, flag: str | None = None, *, multiline: bool = False) -> None:
        super().__init__(message)
        self.flag = flag
        self.multiline = multiline

    def __str__(self) -> str:
        text = super().__str__()
        if self.flag and not text.startswith(f"{self.flag}:"):
            return f"{self.flag}: {text}"
        return text


class CheckpointError(NnunetPdeError):
    """The file is not a readable nnU-Net checkpoint of the kind the command needs."""


class BenchmarkError(NnunetPdeError):
    """A workflow command (benchmark, robustness, nnU-Net folders) cannot run as asked."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived (see :func:`interrupt_signals`); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def error_line(exc: BaseException) -> str:
    """The one-line ``error: ...`` text of an expected failure.

    An :class:`NnunetPdeError` raised with ``multiline=True`` keeps its lines (the list of
    commands or folders it ends in); every other message is folded onto one line.
    """
    if isinstance(exc, OSError) and not isinstance(exc, NnunetPdeError):
        what = exc.strerror or str(exc) or type(exc).__name__
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {what}" if where else what
        if exc.filename is None and str(exc) and str(exc) != what:
            text = str(exc)
        hints = {
            "EROFS": "choose a writable folder",
            "EACCES": "choose a folder you may write to (or fix its permissions)",
            "EPERM": "choose a folder you may write to (or fix its permissions)",
            "ENOSPC": "free disk space or choose another disk",
            "ENOTDIR": "a path component is a file, not a folder; choose another path",
            "EISDIR": "give a file path, not a folder",
        }
        import errno

        hint = hints.get(errno.errorcode.get(exc.errno or -1, ""), "")
        if hint and hint not in text:
            text += f"; {hint}"
    else:
        text = str(exc) or type(exc).__name__
        if getattr(exc, "multiline", False):
            return "error: " + text
    return "error: " + " ".join(text.split())


def report_failure(exc: BaseException, stream: Any = None) -> int:
    """Print ``exc`` as one ``error:`` line on stderr; return exit code 2."""
    print(error_line(exc), file=stream or sys.stderr, flush=True)
    return 2


def cli_command(func: Callable[..., int]) -> Callable[..., int]:
    """Decorate a subcommand handler: expected failures become one ``error:`` line, exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return func(*args, **kwargs)
        except (NnunetPdeError, OSError) as exc:
            return report_failure(exc)

    return wrapper


@contextlib.contextmanager
def interrupt_signals() -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` on SIGTERM, SIGINT and SIGHUP while the block runs.

    A cancelled batch job or ``kill`` sends SIGTERM, which would otherwise end the process
    without running ``finally`` blocks (temporary folders would stay); a process started in
    the background of a non-interactive shell inherits an ignored SIGINT. Does nothing
    outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    # SIGHUP: the terminal closed (an SSH session ended). Without a handler the process would
    # die without its finally blocks, and children in their own sessions would run on.
    caught = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in caught}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    _atomic_write(Path(path), data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a temporary file in the same folder."""
    _atomic_write(Path(path), text.encode("utf-8"))


def atomic_save(path: str | os.PathLike[str], save: Callable[[Path], None]) -> None:
    """Call ``save(tmp)`` for a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _files_below(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()
    }


def write_marker(folder: Path, command: str) -> None:
    """Record every file now in ``folder`` as written by ``command`` (:data:`OUTPUT_MARKER`)."""
    files = sorted(_files_below(folder) - {OUTPUT_MARKER})
    content = {"written_by": command, "files": files}
    (folder / OUTPUT_MARKER).write_text(json.dumps(content, indent=1) + "\n")


def check_replaceable(folder: Path, overwrite: bool, command: str, flag: str = "--output") -> bool:
    """Whether ``folder`` exists with content to replace; refuse what must not be replaced.

    An absent or empty folder is fine (False). An existing one needs ``overwrite`` and must
    hold only the files that ``command`` recorded in its :data:`OUTPUT_MARKER`; anything
    else inside (predictions, notes, another tool's output) makes it refuse, so
    ``--overwrite`` never deletes what the command did not write.

    Raises
    ------
    NnunetPdeError
        With what is in the way and what to do.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NnunetPdeError(f"{folder} exists and is not a folder; choose another path", flag)
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    if not overwrite:
        raise NnunetPdeError(
            f"{folder} already exists; pass --overwrite to replace it or choose another folder",
            flag,
        )
    marker = folder / OUTPUT_MARKER
    try:
        recorded = json.loads(marker.read_text())
        ours = set(recorded["files"]) if recorded.get("written_by") == command else None
    except (OSError, ValueError, KeyError, TypeError):
        ours = None
    if ours is None:
        raise NnunetPdeError(
            f"{folder} was not written by `nnunet-pde {command}` (no {OUTPUT_MARKER} record), "
            "so --overwrite does not replace it; remove it yourself or choose another folder",
            flag,
        )
    others = sorted(_files_below(folder) - ours - {OUTPUT_MARKER})
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise NnunetPdeError(
            f"{folder} holds files that `nnunet-pde {command}` did not write ({shown}); "
            "--overwrite only replaces its own output: move them out or choose another folder",
            flag,
        )
    return True


@contextlib.contextmanager
def staged_folder(target: Path, command: str | None = None) -> Iterator[Path]:
    """Build a folder under a hidden temporary name next to ``target``, then swap it in.

    Yields the temporary folder (created). When the block succeeds, the marker file is
    written (if ``command`` is given), an existing ``target`` is moved aside, the new folder
    renamed to ``target`` and the old one deleted. On any exception, Ctrl-C or SIGTERM
    (see :func:`interrupt_signals`) the temporary folder is removed and ``target`` is left
    as it was. Hidden names never start with ``Dataset``, so nnU-Net never sees them.
    """
    target = Path(target)
    token = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{target.name}.tmp-{token}"
    old = target.parent / f".{target.name}.old-{token}"
    done = False
    with interrupt_signals():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            yield tmp
            if command is not None:
                write_marker(tmp, command)
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            done = True
        except BaseException:
            if old.exists() and not target.exists():
                old.rename(target)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if done:
                shutil.rmtree(old, ignore_errors=True)
