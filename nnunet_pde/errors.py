"""Expected failures: the error classes, the one error boundary of the CLI, and signals.

Every failure that bad input can cause (a missing or unreadable file, an existing output, a
bad option value, a read-only folder) is an :class:`NnunetPdeError` or an ``OSError``. The
command line catches both at one place (:func:`report_failure`, :func:`cli_command`) and
prints one line::

    error: --flag: what was wrong; what to do

with exit code 2; nothing else reaches the user as a traceback.

:func:`interrupt_signals` turns SIGTERM, SIGHUP and SIGINT into ``KeyboardInterrupt``, so
the ``finally`` blocks that remove temporary files also run when a job is cancelled. The
writers that rely on it are :func:`nnunet_pde.files.atomic_save` (one file) and
:func:`nnunet_pde.staging.staged_folder` (a whole output folder).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "BenchmarkError",
    "CheckpointError",
    "Interrupted",
    "NnunetPdeError",
    "cli_command",
    "error_line",
    "interrupt_signals",
    "report_failure",
]


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
