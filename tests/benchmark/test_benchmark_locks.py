"""One writer per fold: the training holds its fold's lock, so a killed runner's orphan keeps
a rerun off its fold, and a manifest whose runner died is closed as ``abandoned``.

Fault injection with the fake trainer (benchmark_fixtures.FAKE_TRAINER): the runner is killed
with SIGKILL (as the OOM killer does) and with SIGHUP (a closed SSH session) while its
training runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmark_fixtures import CONF, DATASET, PLANS, read_calls

from nnunet_pde.benchmark.grid import ACTION_BUSY, ACTION_TRAIN, plan_grid
from nnunet_pde.benchmark.manifest import (
    close_abandoned_manifests,
    create_manifest_file,
    write_manifest,
)
from nnunet_pde.folders import FOLD_FINISHED, fold_state
from nnunet_pde.locks import BUSY_EXIT_CODE, LOCK_NAME, lock_holder, locked_command

T1 = "nnUNetTrainerPDE3D_2epochs_4iters"


def _fold(env: dict[str, str], fold: int = 0) -> Path:
    return Path(env["nnUNet_results"]) / DATASET / f"{T1}__{PLANS}__{CONF}" / f"fold_{fold}"


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped by its parent) holds no lock any more.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _run_args(env: dict[str, str]) -> list[str]:
    return [
        sys.executable, "-m", "nnunet_pde.cli", "benchmark", "run", "987", "--trainers", T1,
        "--folds", "0", "--train-command", env["FAKE_TRAIN_CMD"],
    ]  # fmt: skip


def test_the_lock_is_held_by_the_command_and_released_when_it_ends(tmp_path: Path) -> None:
    folder = tmp_path / "fold_0"
    assert lock_holder(folder) is None  # no folder, no lock
    first = subprocess.Popen(locked_command(folder, ["sleep", "30"]))
    try:
        _wait_for(lambda: lock_holder(folder) is not None)
        holder = lock_holder(folder)
        # exec: the training itself (same pid as the wrapper) holds the lock
        assert holder is not None and holder.pid == first.pid
        assert f"pid {first.pid}" in holder.describe()
        second = subprocess.run(
            locked_command(folder, ["touch", str(tmp_path / "second_ran")]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == BUSY_EXIT_CODE
        assert "being trained by pid" in second.stderr and str(folder) in second.stderr
        assert not (tmp_path / "second_ran").exists()
    finally:
        first.kill()
        first.wait()
    assert lock_holder(folder) is None  # the kernel dropped it with the process
    assert (folder / LOCK_NAME).exists()  # an empty/old lock file is not a held lock
    done = subprocess.run(locked_command(folder, ["touch", str(tmp_path / "third_ran")]))
    assert done.returncode == 0 and (tmp_path / "third_ran").exists()


def test_plan_grid_does_not_start_a_fold_whose_lock_is_held(fake_env: dict[str, str]) -> None:
    folder = _fold(fake_env)
    holder = subprocess.Popen(locked_command(folder, ["sleep", "30"]))
    try:
        _wait_for(lambda: lock_holder(folder) is not None)
        (task,) = plan_grid(fake_env["nnUNet_results"], DATASET, CONF, PLANS, [T1], [0])
        assert task.action == ACTION_BUSY and task.command == ()
        assert task.holder is not None and f"pid {holder.pid}" in task.holder
    finally:
        holder.kill()
        holder.wait()
    (task,) = plan_grid(fake_env["nnUNet_results"], DATASET, CONF, PLANS, [T1], [0])
    assert task.action == ACTION_TRAIN


def test_killed_runner_orphan_keeps_the_rerun_off_its_fold(fake_env: dict[str, str]) -> None:
    """SIGKILL the runner: its training survives; the rerun starts no second one, closes the
    dead runner's manifest, and once the orphan is stopped continues the fold with --c."""
    calls = Path(fake_env["FAKE_TRAIN_CALLS"])
    folder = _fold(fake_env)
    runner = subprocess.Popen(
        _run_args(fake_env),
        env={**fake_env, "FAKE_TRAIN_SLEEP": "120"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: (folder / "checkpoint_latest.pth").exists())
        _wait_for(lambda: lock_holder(folder) is not None)
        runner.kill()  # SIGKILL: no handler runs, the training (own session) lives on
        runner.wait()
        orphan = lock_holder(folder)
        assert orphan is not None and orphan.pid is not None and not _pid_gone(orphan.pid)

        rerun = subprocess.run(
            _run_args(fake_env), env=fake_env, capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 1, rerun.stdout + rerun.stderr
        assert f"being trained by pid {orphan.pid}" in rerun.stdout
        assert "trained by another process now (not started): 1" in rerun.stdout
        assert len(read_calls(calls)) == 1  # no second training was started
        assert "marked 'abandoned'" in rerun.stdout
        manifests = sorted((folder.parents[1] / "nnunet_pde_benchmark").glob("manifest_*.json"))
        first, second = (json.loads(p.read_text()) for p in manifests)
        assert first["status"] == "abandoned" and first["jobs"][0]["outcome"] == "abandoned"
        assert second["jobs"][0]["outcome"] == "busy"
    finally:
        holder = lock_holder(folder)
        if holder is not None and holder.pid is not None:
            os.kill(holder.pid, signal.SIGKILL)
            _wait_for(lambda: _pid_gone(holder.pid))
    _wait_for(lambda: lock_holder(folder) is None)

    resumed = subprocess.run(
        _run_args(fake_env), env=fake_env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "[1/1] continue (--c)" in resumed.stdout
    assert read_calls(calls)[-1][-1] == "--c" and len(read_calls(calls)) == 2
    assert fold_state(folder) == FOLD_FINISHED


def test_sighup_stops_the_runner_and_its_training(fake_env: dict[str, str]) -> None:
    """A closed SSH session (SIGHUP) stops the grid like Ctrl-C: no orphan keeps training."""
    folder = _fold(fake_env)
    runner = subprocess.Popen(
        _run_args(fake_env),
        env={**fake_env, "FAKE_TRAIN_SLEEP": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(lambda: lock_holder(folder) is not None)
    training = lock_holder(folder)
    assert training is not None and training.pid is not None
    runner.send_signal(signal.SIGHUP)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130, out
    assert "interrupted" in out
    _wait_for(lambda: _pid_gone(training.pid), timeout=60)
    assert lock_holder(folder) is None


def test_only_manifests_whose_runner_is_gone_are_closed(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    host = os.uname().nodename
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "benchmark"])
    other = subprocess.Popen(["sleep", "60"])  # a reused pid: alive, but no runner
    try:
        paths = {}
        for name, info in {
            "live": {"hostname": host, "pid": runner.pid},
            "dead": {"hostname": host, "pid": other.pid + 10**6},
            "reused": {"hostname": host, "pid": other.pid},
            "no_pid": {"hostname": host},
            "other_host": {"hostname": "another-node", "pid": 1},
        }.items():
            paths[name] = create_manifest_file(bench)
            write_manifest(
                paths[name],
                {"status": "running", "host": info,
                 "jobs": [{"outcome": "running"}, {"outcome": "pending"}, {"outcome": "finished"}]},
            )  # fmt: skip
        finished = create_manifest_file(bench)
        write_manifest(finished, {"status": "completed", "host": {"hostname": host}, "jobs": []})
        changed = close_abandoned_manifests(bench)
        assert sorted(changed) == sorted(paths[k] for k in ("dead", "reused", "no_pid"))
        d = json.loads(paths["dead"].read_text())
        assert d["status"] == "abandoned" and d["abandoned_noticed"]
        assert [j["outcome"] for j in d["jobs"]] == ["abandoned", "abandoned", "finished"]
        for k in ("live", "other_host"):
            assert json.loads(paths[k].read_text())["status"] == "running"
        assert json.loads(finished.read_text())["status"] == "completed"
    finally:
        for p in (runner, other):
            p.kill()
            p.wait()


def test_a_torn_latest_checkpoint_of_a_busy_fold_is_left_alone(fake_env: dict[str, str]) -> None:
    """A checkpoint_latest.pth that does not load while another process trains the fold may
    be half written right now: not set aside, the fold left alone."""
    folder = _fold(fake_env)
    folder.mkdir(parents=True)
    (folder / "checkpoint_latest.pth").write_bytes(b"PK\x03\x04 half written")
    holder = subprocess.Popen(locked_command(folder, ["sleep", "30"]))
    try:
        _wait_for(lambda: lock_holder(folder) is not None)
        (task,) = plan_grid(fake_env["nnUNet_results"], DATASET, CONF, PLANS, [T1], [0])
        assert task.action == ACTION_BUSY and task.torn is None
    finally:
        holder.kill()
        holder.wait()
    assert (folder / "checkpoint_latest.pth").read_bytes() == b"PK\x03\x04 half written"
