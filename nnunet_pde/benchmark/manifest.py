"""The manifest of a ``benchmark run``: what ran, how, where, with which software.

One JSON file per invocation in ``$nnUNet_results/<dataset>/nnunet_pde_benchmark/``, named
after the UTC start time (``manifest_20260124T101500Z.json``, with ``_1``, ``_2`` ... when two
runs start in the same second). An existing manifest is never replaced: the file is created
exclusively and only that invocation rewrites it, atomically, as its jobs finish.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde.commands import utc_now
from nnunet_pde.files import write_json

__all__ = [
    "MANIFEST_DIRNAME",
    "close_abandoned_manifests",
    "create_manifest_file",
    "git_revision",
    "software_versions",
    "utc_now",
    "write_manifest",
]

#: Sub-folder of ``$nnUNet_results/<dataset>`` that holds the manifests and local logs.
MANIFEST_DIRNAME = "nnunet_pde_benchmark"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """Versions of python, torch, nnunetv2, dynamic-network-architectures and nnunet-pde.

    Read from the installed distributions' metadata, so nothing heavy is imported; ``None``
    for a package that is not installed.
    """
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "nnunetv2": _version("nnunetv2"),
        "dynamic_network_architectures": _version("dynamic-network-architectures"),
        "nnunet_pde": _version("nnunet-pde"),
        "submitit": _version("submitit"),
    }


def git_revision(path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """``git rev-parse HEAD`` of the repository holding ``path`` and whether it is dirty.

    ``path`` defaults to this package's source folder (the nnunet-pde checkout of an editable
    install). Returns None when git is missing or ``path`` is not inside a work tree (e.g. a
    wheel install).
    """
    folder = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=20
        )

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
        top = git("rev-parse", "--show-toplevel")
    except (OSError, subprocess.SubprocessError):
        return None
    return {
        "repository": top.stdout.strip() or None,
        "commit": head.stdout.strip(),
        "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
    }


def host_info() -> dict[str, Any]:
    """Host name, user, platform and CPU count of the machine that launched the run."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "user": user,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python_executable": sys.executable,
    }


def create_manifest_file(folder: str | os.PathLike[str], started: datetime | None = None) -> Path:
    """Create a new, empty, uniquely named manifest file in ``folder`` and return its path.

    The name is ``manifest_<UTC start, YYYYmmddTHHMMSSZ>[_k].json``; creation is exclusive
    (``O_EXCL``), so an older manifest is never overwritten, even by a concurrent run.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (started or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    k = 0
    while True:
        name = f"manifest_{stamp}{'' if k == 0 else f'_{k}'}.json"
        path = folder / name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            k += 1
            continue
        os.close(fd)
        return path


def write_manifest(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Atomically (re)write this run's own manifest file (temporary file + rename)."""
    write_json(path, manifest, indent=2, default=str)


def _runner_alive(host: Mapping[str, Any] | None) -> bool:
    """Whether the runner that wrote a manifest still runs.

    Only this host's processes can be checked: a runner on another host counts as alive. A
    manifest without a pid (written before runners recorded theirs) counts as gone, and so
    does a pid that now belongs to a process that is not a benchmark runner.
    """
    host = host or {}
    if host.get("hostname") not in (None, socket.gethostname()):
        return True
    pid = host.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True
    return b"benchmark" in cmdline


def close_abandoned_manifests(folder: str | os.PathLike[str]) -> list[Path]:
    """Mark the ``running`` manifests in ``folder`` whose runner is gone as ``abandoned``.

    A runner killed with SIGKILL (the OOM killer) or by a lost node never writes its end, so
    its manifest would say ``running`` forever. Each such manifest gets status ``abandoned``,
    ``ended`` null, ``abandoned_noticed`` (now), and its ``pending``/``running`` jobs the
    outcome ``abandoned`` (a training that still runs keeps its fold lock, and the new run
    reports that fold as busy). Returns the manifests changed.
    """
    changed = []
    for path in sorted(Path(folder).glob("manifest_*.json")):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("status") != "running":
            continue
        if _runner_alive(manifest.get("host")):
            continue
        manifest["status"] = "abandoned"
        manifest["abandoned_noticed"] = utc_now()
        for job in manifest.get("jobs") or []:
            if isinstance(job, dict) and job.get("outcome") in ("pending", "running"):
                job["outcome"] = "abandoned"
        write_manifest(path, manifest)
        changed.append(path)
    return changed
