"""scripts/gpu_check.py runs end to end on the CPU (the GPU run is the same code path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
TINY = ["--plans", str(REPO / "tests/fixtures/plans/plans_tiny_plain.json"),
        "--dataset-json", str(REPO / "tests/fixtures/plans/dataset_tiny_labels.json")]  # fmt: skip


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_cpu_run_measures_every_configuration_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    proc = _run(
        "--device", "cpu", "--patch", "32", "32", "32", *TINY, "--steps", "2", "--batch", "1",
        "--variants", "stock", "stages01", "--compile-backend", "aot_eager",
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not result["failed"]
    configs = {(r["variant"], r["mode"]) for r in result["rows"]}
    assert configs == {(v, m) for v in ("stock", "stages01") for m in ("eager", "compile")}
    for row in result["rows"]:
        assert row["finite"] and row["median_step_s"] > 0, row
        assert row["pde_blocks"] == (0 if row["variant"] == "stock" else 2)
        assert row["time_ratio_to_stock"] > 0
    bw = result["fused_bandwidth"]
    assert bw["implementation"] == "compiled C kernels"
    assert 0 < bw["fraction_of_copy_bandwidth"]
    assert "fused diffusion step at 1x32x32x32x32" in proc.stdout
    assert "stages01" in proc.stdout and "x stock" in proc.stdout


def test_patch_that_leaves_a_one_voxel_bottleneck_is_refused(tmp_path: Path) -> None:
    proc = _run("--device", "cpu", "--patch", "32", "32", "32", "--output", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "at least 2 voxels" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_missing_gpu_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _run("--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
