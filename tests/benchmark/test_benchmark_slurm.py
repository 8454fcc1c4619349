"""The SLURM executor against a real single-node SLURM (slurmctld + slurmd + munged).

The cluster is started by the test in a temporary folder (see slurm_localhost.py); the jobs
run the stand-in for ``nnUNetv2_train`` from benchmark_fixtures, so no training happens. The
test is skipped, with the reason, only where SLURM cannot be installed or started.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
from benchmark_fixtures import CONF, DATASET, PLANS, make_nnunet_env, read_calls, write_fake_trainer
from slurm_localhost import LocalSlurm, SlurmUnavailable

from nnunet_pde.benchmark.run import run_benchmark
from nnunet_pde.commands import SlurmExecutor

pytestmark = pytest.mark.slow

T1, T2 = "nnUNetTrainerPDE3D_2epochs_4iters", "nnUNetTrainerPDE3D_Backbone_2epochs_4iters"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip(
        "submitit", reason="the slurm executor needs submitit (pip install submitit)"
    )
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no SLURM on this machine: {exc}")
    yield cluster
    cluster.stop()


def test_slurm_grid_with_failure_and_resume(
    slurm: LocalSlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])  # sbatch is called by submitit
    env = make_nnunet_env(tmp_path / "nnunet", with_gt=False)
    cmd, calls = write_fake_trainer(tmp_path)
    env.update(
        SLURM_CONF=slurm.env["SLURM_CONF"],
        FAKE_TRAIN_CALLS=str(calls),
        FAKE_TRAIN_FAIL=f"{T2}/fold_1",
    )
    folder = tmp_path / "submitit"
    executor = SlurmExecutor(folder, partition="debug", gpus=0, time_min=5, poll_s=0.5)
    lines: list[str] = []

    def run() -> Any:
        return run_benchmark(
            "987",
            [T1, T2],
            executor,
            folds=[0, 1],
            device="cpu",
            train_command=shlex.split(cmd),
            environ=env,
            print_fn=lines.append,
        )

    t0 = time.monotonic()
    out = run()
    assert time.monotonic() - t0 < 240
    text = "\n".join(lines)
    assert sorted(out.succeeded) == [f"{T1}/fold_0", f"{T1}/fold_1", f"{T2}/fold_0"], text
    assert out.failed == [f"{T2}/fold_1"]
    assert "SLURM job" in text

    manifest = json.loads(out.manifest.read_text())
    assert manifest["executor"]["executor"] == "slurm"
    assert manifest["executor"]["partition"] == "debug"
    jobs = {(j["trainer"], j["fold"]): j for j in manifest["jobs"]}
    assert all(j["job_id"] and j["job_id"].isdigit() for j in jobs.values())
    assert jobs[(T2, 1)]["returncode"] == 3 and jobs[(T2, 1)]["outcome"] == "failed"
    assert jobs[(T1, 0)]["returncode"] == 0 and jobs[(T1, 0)]["outcome"] == "finished"
    # The command ran inside the SLURM job and logged to the fold's log.
    log = Path(jobs[(T2, 1)]["log"]).read_text()
    assert "fake failure" in log and "exit code 3" in log
    assert len(read_calls(calls)) == 4
    # submitit wrote the sbatch script with our settings.
    script = (folder / f"{jobs[(T1, 0)]['job_id']}_submission.sh").read_text()
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=5" in script
    assert "--gpus-per-node" not in script
    fold = Path(env["nnUNet_results"]) / DATASET / f"{T1}__{PLANS}__{CONF}" / "fold_0"
    assert (fold / "checkpoint_final.pth").exists()

    # Resubmit: only the failed fold runs again; submit without waiting.
    del env["FAKE_TRAIN_FAIL"]
    executor.wait = False
    out2 = run()
    assert out2.submitted == [f"{T2}/fold_1"] and len(out2.skipped) == 3
    m2 = json.loads(out2.manifest.read_text())
    assert m2["status"] == "submitted"
    (job2,) = [j for j in m2["jobs"] if j["action"] != "skip"]
    assert job2["job_id"] and job2["outcome"] == "submitted"
    # Let it finish before the cluster goes down.
    result = folder / f"{job2['job_id']}_0_result.pkl"
    deadline = time.monotonic() + 120
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert result.exists()
    assert len(read_calls(calls)) == 5
