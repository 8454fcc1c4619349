"""Output folders written under a temporary name and swapped in: nothing half-written stays.

Every command that writes a folder (``make-dataset``, ``derive noisy-labels``, ``derive
shifted-images``) writes it through :func:`staged_folder`:

* :func:`check_replaceable` and :data:`OUTPUT_MARKER`: an output folder carries a marker
  file listing the files the command wrote, and is replaced by ``--overwrite`` only when it
  holds nothing else;
* :func:`staged_folder`: the folder is built under a hidden temporary name next to its
  destination (:func:`staged_sibling`, :data:`STAGED_PATTERN`) and renamed into place when
  it is complete;
* :func:`recover_interrupted`: what a killed writer left next to its output (an unfinished
  temporary folder, a folder that ``--overwrite`` had moved aside) is put back or removed
  by the next run, with one ``warning:`` line per path.

Single files are written atomically by :func:`nnunet_pde.files.atomic_save`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from nnunet_pde.errors import NnunetPdeError, interrupt_signals

__all__ = [
    "OUTPUT_MARKER",
    "STAGED_PATTERN",
    "check_replaceable",
    "recover_interrupted",
    "staged_folder",
    "staged_sibling",
    "write_marker",
]

#: File in an output folder that lists what the command wrote (relative paths).
OUTPUT_MARKER = ".nnunet_pde_written.json"


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


#: Hidden siblings of a staged write (:func:`staged_folder`), one token per run:
#: ``.<name>.tmp-<token>`` is being built, ``.<name>.old-<token>`` was moved aside.
STAGED_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<token>[0-9a-f]{8})$")


def staged_sibling(target: Path, kind: str, token: str) -> Path:
    """``target.parent / ".<target.name>.<kind>-<token>"`` (``kind``: ``tmp`` or ``old``)."""
    return target.parent / f".{target.name}.{kind}-{token}"


def _try_lock(folder: Path) -> tuple[str, int | None]:
    """Take an exclusive, non-blocking ``flock`` on ``folder``.

    Returns ``("locked", fd)`` (close ``fd`` to release), ``("busy", None)`` when another
    process holds it (a run in progress) or ``("unknown", None)`` where ``flock`` does not
    work (no ``fcntl``, a file system without locks).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return "unknown", None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return "unknown", None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return "busy", None
    except OSError:
        os.close(fd)
        return "unknown", None
    return "locked", fd


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def recover_interrupted(
    parent: str | os.PathLike[str], report: Callable[[str], None] | None = None
) -> list[str]:
    """Finish or undo what killed runs of :func:`staged_folder` left in ``parent``.

    A process killed outright (SIGKILL, out of memory, power loss) runs no clean-up, so its
    hidden siblings stay: a half-built ``.<name>.tmp-<token>``, and, when it was replacing
    a folder (``--overwrite``), the old one moved aside as ``.<name>.old-<token>``. Every
    writer calls this before it looks at its destination, and for each run whose writer is
    no longer alive (its ``tmp`` folder is not locked, see :func:`staged_folder`):

    * the run had not swapped its new folder in (its ``tmp`` folder still exists): each
      folder it had moved aside is renamed back to its name; if that name is taken again,
      it is left where it is and reported (keep one of the two yourself). The ``tmp``
      folder is deleted;
    * the run had swapped its new folder in (no ``tmp`` folder): the folders it replaced
      were still to be deleted, and are.

    A run still in progress is left alone. Where locks do not work, nothing is touched
    and every such folder is reported instead.

    Parameters
    ----------
    parent
        The folder the writer writes into (``nnUNet_raw``, the parent of ``--output``).
    report
        Called with one line per action (default: ``warning: ...`` on stderr).

    Returns
    -------
    list of str
        The reported lines.
    """
    parent = Path(parent)
    say = report or _warn
    lines: list[str] = []

    def tell(message: str) -> None:
        lines.append(message)
        say(message)

    if not parent.is_dir():
        return lines
    runs: dict[str, dict[str, list[tuple[str, Path]]]] = {}
    for entry in sorted(parent.iterdir()):
        match = STAGED_PATTERN.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        run = runs.setdefault(match["token"], {"tmp": [], "old": []})
        run[match["kind"]].append((match["name"], entry))
    for run in runs.values():
        fds: list[int] = []
        try:
            states = []
            for _, tmp in run["tmp"]:
                state, fd = _try_lock(tmp)
                states.append(state)
                if fd is not None:
                    fds.append(fd)
            if "busy" in states:
                continue  # a run in progress
            if "unknown" in states:
                for _, tmp in run["tmp"]:
                    tell(
                        f"{tmp} was left by an interrupted nnunet-pde run (no file locks here "
                        "to tell whether it still runs); if none runs, remove it"
                    )
                for name, old in run["old"]:
                    tell(
                        f"{old} holds the earlier {name}, moved aside by an interrupted "
                        f"--overwrite run (no file locks here to tell whether it still runs); "
                        f"if none runs and {parent / name} is missing, rename it back"
                    )
                continue
            _recover_run(parent, run, tell)
        finally:
            for fd in fds:
                os.close(fd)
    return lines


def _recover_run(
    parent: Path, run: dict[str, list[tuple[str, Path]]], tell: Callable[[str], None]
) -> None:
    """Undo (``tmp`` folder present) or finish (absent) one killed run; see
    :func:`recover_interrupted`."""
    if run["tmp"]:
        for name, old in run["old"]:
            original = parent / name
            if original.exists() or original.is_symlink():
                tell(
                    f"{old} holds the earlier {name} that an interrupted --overwrite run had "
                    f"moved aside, and {original} exists again; nothing was changed: keep one "
                    f"(e.g. rename {old} back to {original} after moving the other away)"
                )
                continue
            old.rename(original)
            tell(
                f"restored {original} from {old}, where an interrupted --overwrite run had "
                "moved it before it was killed"
            )
        for _, tmp in run["tmp"]:
            shutil.rmtree(tmp, ignore_errors=True)
            tell(f"removed {tmp}: the unfinished output of an interrupted run")
    else:
        for name, old in run["old"]:
            shutil.rmtree(old, ignore_errors=True)
            tell(
                f"removed {old}: the earlier {name}, which an interrupted --overwrite run had "
                "already replaced but not yet deleted"
            )


@contextlib.contextmanager
def staged_folder(
    target: Path, command: str | None = None, also_replace: Sequence[Path] = ()
) -> Iterator[Path]:
    """Build a folder under a hidden temporary name next to ``target``, then swap it in.

    Yields the temporary folder (created, and locked with ``flock`` while the block runs, so
    that :func:`recover_interrupted` can tell a run in progress from a killed one). When the
    block succeeds, the marker file is written (if ``command`` is given), an existing
    ``target`` and the existing folders of ``also_replace`` (siblings of ``target``, e.g.
    another dataset with the same id) are moved aside, the new folder renamed to ``target``
    and the old ones deleted. On any exception, Ctrl-C or SIGTERM (see
    :func:`interrupt_signals`) the temporary folder is removed and the old ones are put
    back. A killed process leaves the hidden siblings, which the writer's next run finds
    with :func:`recover_interrupted`: the moved-aside folders are renamed back until the
    new folder is in place, so the only copy of a folder never stays under a hidden name.
    Hidden names never start with ``Dataset``, so nnU-Net never sees them.
    """
    target = Path(target)
    token = uuid.uuid4().hex[:8]
    tmp = staged_sibling(target, "tmp", token)
    replace = [target] + [Path(p) for p in also_replace if Path(p) != target]
    for p in replace:
        if p.parent != target.parent:
            raise ValueError(f"{p} is not a sibling of {target}")
    moved: list[tuple[Path, Path]] = []
    done = False
    lock: int | None = None
    with interrupt_signals():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            lock = _try_lock(tmp)[1]
            yield tmp
            if command is not None:
                write_marker(tmp, command)
            for p in replace:
                if p.exists() or p.is_symlink():
                    old = staged_sibling(p, "old", token)
                    p.rename(old)
                    moved.append((p, old))
            tmp.rename(target)
            done = True
        except BaseException:
            if not done:
                for p, old in reversed(moved):
                    if old.exists() and not p.exists():
                        old.rename(p)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if done:
                for _, old in moved:
                    shutil.rmtree(old, ignore_errors=True)
            if lock is not None:
                os.close(lock)
