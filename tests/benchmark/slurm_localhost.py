"""A throw-away single-node SLURM cluster on this machine, for the SLURM executor test.

Uses Debian's packages (``apt-get install slurm-wlm munge``); everything else lives in a
temporary folder: a munge key and socket, ``slurm.conf`` (cluster of one node, this host at
127.0.0.1, free ports, no accounting, no cgroups), state, spool and logs. Clients find it
through ``SLURM_CONF``. :meth:`LocalSlurm.stop` ends exactly the daemons it started, by the
PIDs in their pid files.

If the binaries are missing and we are root with ``apt-get`` available, :func:`ensure_slurm`
installs the packages (set ``NNUNET_PDE_TEST_INSTALL_SLURM=0`` to forbid that).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message is the skip reason."""


def _missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def ensure_slurm() -> None:
    """Make sure the SLURM and munge binaries exist, installing them with apt if allowed."""
    missing = _missing()
    if not missing:
        return
    if os.environ.get("NNUNET_PDE_TEST_INSTALL_SLURM", "1") == "0":
        raise SlurmUnavailable(
            f"SLURM binaries missing ({', '.join(missing)}) and NNUNET_PDE_TEST_INSTALL_SLURM=0"
        )
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"SLURM binaries missing ({', '.join(missing)}); install them with "
            "`apt-get install slurm-wlm munge` (needs root and apt)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SlurmUnavailable(
                f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
    missing = _missing()
    if missing:
        raise SlurmUnavailable(f"still missing after apt-get install: {', '.join(missing)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalSlurm:
    """slurmctld + slurmd + munged for this host, configured in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pidfiles: list[Path] = []

    def _node_line(self, hostname: str) -> str:
        proc = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("NodeName=")), None)
        if proc.returncode != 0 or line is None:
            raise SlurmUnavailable(f"`slurmd -C` failed: {proc.stderr.strip()[-300:]}")
        fields = [f for f in line.split() if not f.startswith(("NodeName=", "RealMemory="))]
        return f"NodeName={hostname} NodeAddr=127.0.0.1 {' '.join(fields)} RealMemory=1000"

    def start(self, timeout_s: float = 90.0) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("the single-node SLURM test needs root (slurmd runs jobs)")
        ensure_slurm()
        r = self.root
        munge = r / "munge"
        for d in (munge, r / "state", r / "spool", r / "log"):
            d.mkdir(parents=True, exist_ok=True)
        munge.chmod(0o711)  # clients must reach the socket
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = munge / "munge.sock"
        self._run_daemon(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            munge / "munged.pid",
        )
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName=nnunetpde{os.getpid()}",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={sock}",
                    "CredType=cred/munge",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SchedulerType=sched/builtin",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    self._node_line(host),
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self._run_daemon(["slurmctld", "-f", str(self.conf)], r / "slurmctld.pid")
        self._run_daemon(["slurmd", "-f", str(self.conf)], r / "slurmd.pid")
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            proc = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            state = proc.stdout.strip() or proc.stderr.strip()
            if state == "idle":
                return
            time.sleep(1)
        logs = "".join(
            (r / "log" / f).read_text()[-800:]
            for f in ("slurmctld.log", "slurmd.log")
            if (r / "log" / f).exists()
        )
        self.stop()
        raise SlurmUnavailable(f"the SLURM node did not become idle (state '{state}'): {logs}")

    def _run_daemon(self, cmd: list[str], pidfile: Path) -> None:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            self.stop()
            raise SlurmUnavailable(
                f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
        deadline = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._pidfiles.append(pidfile)

    def stop(self) -> None:
        """SIGTERM to each daemon we started (by its pid file), newest first, then wait."""
        for pidfile in reversed(self._pidfiles):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
        self._pidfiles.clear()
