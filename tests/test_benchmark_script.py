"""scripts/benchmark_pde.py: stock vs PDE3D step time and memory, alternating."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from plan_fixtures import FIXTURES, REPO

SCRIPT = REPO / "scripts" / "benchmark_pde.py"
TINY = [
    "--plans",
    str(FIXTURES / "plans_tiny_plain.json"),
    "--dataset-json",
    str(FIXTURES / "dataset_tiny_labels.json"),
]


def _load_script():
    """The script as a module (registered in sys.modules: it defines dataclasses)."""
    if "benchmark_pde" in sys.modules:
        return sys.modules["benchmark_pde"]
    spec = importlib.util.spec_from_file_location("benchmark_pde", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_pde"] = module
    spec.loader.exec_module(module)
    return module


def test_runs_on_the_tiny_plans_and_writes_consistent_json(tmp_path):
    out = tmp_path / "bench" / "results.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--patch", "32", "32", "32", "--batch", "1"]
        + ["--reps", "2", "--warmup", "0", "--threads", "1", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rep 2/2" in proc.stdout and f"wrote {out}" in proc.stdout
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"stock", "pde3d"}
    assert res["settings"]["patch"] == [32, 32, 32] and res["settings"]["batch"] == 1
    assert res["settings"]["pde_stages"] == ["encoder.stages.2.pde"]
    stock, pde = res["models"]["stock"], res["models"]["pde3d"]
    for m in (stock, pde):
        assert len(m["times_s"]) == 2 and all(t > 0 for t in m["times_s"])
        assert len(m["cpu_times_s"]) == 2 and all(t > 0 for t in m["cpu_times_s"])
        assert m["median_memory_bytes"] > 0
    assert pde["parameters"] > stock["parameters"]
    assert res["ratio"]["time"] == pytest.approx(pde["median_time_s"] / stock["median_time_s"])
    assert res["ratio"]["cpu_time"] == pytest.approx(
        pde["median_cpu_time_s"] / stock["median_cpu_time_s"]
    )
    per_rep = sorted(p / s for s, p in zip(stock["times_s"], pde["times_s"], strict=True))
    assert res["ratio"]["time_paired_median"] == pytest.approx(sum(per_rep) / 2)
    assert res["ratio"]["memory"] == pytest.approx(
        pde["median_memory_bytes"] / stock["median_memory_bytes"]
    )
    # a PDE block saves its steps' activations: more than the stock network, never less
    assert pde["memory"]["saved_tensor_bytes"] > stock["memory"]["saved_tensor_bytes"]
    assert res["memory_kind"].startswith("cpu: bytes of the tensors autograd saves")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--placement", "everywhere"], "--placement must be"),
        (["--placement", "0,9"], "out of range"),
        (["--patch", "32", "30", "32"], "not divisible by the network's total stride 8x8x8"),
        (["--reps", "0"], "--reps must be >= 1"),
        (["--block-vs-conv", "2x32x48"], "is not a shape NxCxDxHxW"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(capsys, extra, message):
    assert _load_script().main([*TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_bad_arguments_exit_2_as_a_command():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--placement", "bottleneck"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "error: --placement must be" in proc.stderr


def test_saved_tensor_count_dedupes_storages_and_skips_parameters():
    import torch

    bench = _load_script()
    w = torch.nn.Parameter(torch.ones(4))
    x = torch.ones(1000, 4, requires_grad=True)  # 16,000 bytes
    with bench.count_saved_tensors([w]) as counted:
        y = x * w  # saves x and w
        (y * x).sum()  # saves y and x again: x counted once
    assert counted["bytes"] == 2 * 16000 and counted["tensors"] == 2


def test_block_vs_conv_alone_writes_times_and_saved_bytes(tmp_path, capsys):
    out = tmp_path / "bvc.json"
    args = ["--no-networks", "--block-vs-conv", "1x4x8x9x10", "--reps", "3", "--threads", "1"]
    assert _load_script().main([*args, "--output", str(out)]) == 0
    (res,) = json.loads(out.read_text())["block_vs_conv"]
    assert res["shape"] == [1, 4, 8, 9, 10]
    assert set(res["median_time_s"]) == {"conv3x3x3", "block_fused", "block_reference"}
    assert all(len(t) == 3 for t in res["times_s"].values())
    assert res["time_ratio_to_conv"]["conv3x3x3"] == 1.0
    # the median of the per-repetition ratios, from the times it reports
    t = res["times_s"]
    ratios = sorted(b / a for a, b in zip(t["conv3x3x3"], t["block_fused"], strict=True))
    assert res["fused_paired_ratio_median"] == pytest.approx(ratios[1])
    assert all(v >= 0 for v in res["faulted_bytes_median"].values())
    assert set(res["system_time_s_median"]) == set(res["median_time_s"])
    saved = res["saved_bytes_over_input"]
    # default K = 2: x_hat, u_1, u_2 (+ per-channel vectors); the reference keeps far more
    assert 2.9 < saved["block_fused"] < 3.2 and saved["block_reference"] > 10
    assert "block vs one 3x3x3 conv 4->4" in capsys.readouterr().out


def test_no_networks_needs_block_vs_conv(capsys):
    assert _load_script().main(["--no-networks"]) == 2
    assert "--no-networks leaves nothing to measure" in capsys.readouterr().err
