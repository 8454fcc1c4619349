"""scripts/gpu_check.py: runs end to end on the CPU without nnunetv2 and SimpleITK (the GPU
run is the same code path), keeps to its time budget, and builds what the trainers build."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from plan_fixtures import FIXTURES, load_plans, managers

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
TINY = ["--plans", str(FIXTURES / "plans_tiny_plain.json"),
        "--dataset-json", str(FIXTURES / "dataset_tiny_labels.json")]  # fmt: skip
#: The CPU invocation of docs/performance.md at its smallest: 16^3 leaves 2 voxels at the
#: tiny plans' bottleneck.
CPU_ARGS = ["--device", "cpu", "--block-shape", "1", "32", "8", "8", "8", *TINY,
            "--patch", "16", "16", "16", "--batch", "1", "--steps", "2", "--reps", "2",
            "--infer-reps", "2", "--compile-backend", "aot_eager"]  # fmt: skip
ROWS = [
    "block_vs_conv/fp16",
    "block_vs_conv/bf16",
    "train/stock/eager",
    "train/default/eager",
    "train/stages01/eager",
    "train/stock/compile",
    "train/default/compile",
    "train/stages01/compile",
    "infer/stock/eager",
    "infer/default/eager",
    "estimates",
]
STATUSES = {"passed", "failed", "skipped"}

#: Runs the script as __main__ with nnunetv2 and SimpleITK unimportable (``None`` in
#: sys.modules makes ``import`` raise ImportError), as on a machine that has only torch and
#: triton; exits 3 if a submodule of either got imported anyway.
NO_NNUNET = (
    "import runpy, sys\n"
    "sys.modules['nnunetv2'] = None\n"
    "sys.modules['SimpleITK'] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    leaked = [m for m in sys.modules if m.startswith(('nnunetv2.', 'SimpleITK.'))]\n"
    "    if leaked:\n"
    "        print('imported:', leaked, file=sys.stderr)\n"
    "        sys.exit(3)\n"
)


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_NNUNET, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check_summary(result: dict) -> None:
    rows = result["rows"]
    assert all(r["status"] in STATUSES for r in rows), rows
    for s in STATUSES:
        assert result["summary"][s] == sum(r["status"] == s for r in rows)
    assert sum(result["summary"].values()) == len(rows)


@pytest.mark.slow
def test_cpu_run_without_nnunetv2_measures_every_row(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    proc = _run(*CPU_ARGS, "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] and [r["key"] for r in result["rows"]] == ROWS
    _check_summary(result)
    assert result["summary"] == {"passed": len(ROWS), "failed": 0, "skipped": 0}, [
        (r["key"], r.get("reason")) for r in result["rows"] if r["status"] != "passed"
    ]
    rows = {r["key"]: r for r in result["rows"]}
    for key, row in rows.items():
        assert row["predicted_s"] > 0 and row["prediction_basis"] and row["wall_s"] > 0, key
    for p in ("fp16", "bf16"):
        row = rows[f"block_vs_conv/{p}"]
        assert row["block_s"] > 0 and row["conv_s"] > 0 and row["time_ratio"] > 0
        assert row["backend"].startswith("cpu: ")
        assert row["block_launches_estimate"] > row["conv_launches_estimate"] > 0
        assert row["block_cuda_kernels"] is None  # the profiler counts CUDA kernels only
        assert row["grad_scaler"] == (p == "fp16")
    for mode in ("eager", "compile"):
        assert rows[f"train/stock/{mode}"]["pde_blocks"] == 0
        assert rows[f"train/default/{mode}"]["pde_blocks"] == 1
        assert rows[f"train/stages01/{mode}"]["pde_blocks"] == 2
        for v in ("default", "stages01"):
            assert rows[f"train/{v}/{mode}"]["step_ratio_to_stock"] > 0
    for v in ("stock", "default", "stages01"):
        assert rows[f"train/{v}/compile"]["compile_s"] >= 0
        assert rows[f"train/{v}/eager"]["precision"] == "float32"  # nnU-Net on the CPU
    assert rows["train/default/compile"]["compile_ratio_to_stock"] is not None
    assert rows["infer/default/eager"]["forwards_per_pass"] == 8
    assert rows["infer/default/eager"]["time_ratio_to_stock"] > 0
    launches = rows["estimates"]["launches_per_backend"]
    assert launches["c"]["step_launches"] > 0 and launches["torch"]["step_launches"] > 0
    if "step_launches" in launches["triton"]:  # Triton's interpreter: the GPU's launches
        # 3 axes x (fwd + bwd), the reaction (fwd, its recompute, bwd), the partial sums
        assert launches["triton"]["step_triton_launches"] == 10
        assert launches["triton"]["block_launches"] <= 40  # issue 21's target
    est = result["bytes_estimate"]
    assert est["forward_bytes_per_step"] == 92 * 32 * 8**3  # the docstring's 92 N bytes
    assert est["backward_bytes_per_step"] == 160 * 32 * 8**3
    assert "bytes-moved estimate (on paper, not measured)" in proc.stdout
    assert "launches (estimate) c: " in proc.stdout
    assert f"{len(ROWS)} passed, 0 failed, 0 skipped" in proc.stdout


def test_tiny_budget_skips_rows_and_does_not_count_them_as_passed(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    proc = _run(*CPU_ARGS, "--time-budget", "1", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["key"] for r in result["rows"]] == ROWS
    _check_summary(result)
    skipped = [r for r in result["rows"] if r["status"] == "skipped"]
    assert skipped and all("--time-budget 1 s" in r["reason"] for r in skipped)
    assert result["summary"]["passed"] == len(ROWS) - len(skipped)
    assert f"{len(skipped)} skipped" in proc.stdout


@pytest.fixture
def script() -> dict:
    """The script's globals (loaded as a module, not run)."""
    return runpy.run_path(str(SCRIPT), run_name="gpu_check_under_test")


def _main(script: dict, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "check.json"
    threads = str(torch.get_num_threads())  # main() sets it; keep this process's
    rc = script["main"]([*CPU_ARGS, "--threads", threads, "--output", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_rows_predicted_not_to_fit_are_skipped_before_they_run(
    script: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget is checked against each row's prediction before the row starts; every row
    is in the JSON as soon as it is measured; a failure makes the exit code 1."""
    out = tmp_path / "check.json"
    measured: list[str] = []

    def predict(self, key: str) -> tuple[float, str]:
        return (1e6, "stub: too long") if "compile" in key else (0.0, "stub")

    def measure(self, key: str) -> dict:
        # every earlier row is already on disk
        on_disk = [r["key"] for r in json.loads(out.read_text())["rows"]]
        assert on_disk == [r["key"] for r in self.rows]
        measured.append(key)
        if key == "infer/default/eager":
            raise RuntimeError("boom")
        return {"block_s": 1.0, "conv_s": 1.0, "step_s": 1.0, "pass_s": 1.0}

    monkeypatch.setattr(script["Check"], "predict", predict)
    monkeypatch.setattr(script["Check"], "measure", measure)
    monkeypatch.setattr(script["Check"], "line", lambda self, row: row["key"])
    monkeypatch.setitem(script["main"].__globals__, "summary_table", lambda check: "")
    rc, result = _main(script, tmp_path, "--time-budget", "600")
    assert rc == 1
    rows = {r["key"]: r for r in result["rows"]}
    assert [k for k in ROWS if "compile" not in k] == measured
    for key in ROWS:
        if "compile" in key:
            assert rows[key]["status"] == "skipped"
            assert rows[key]["reason"].startswith("predicted 1000000.0 s (stub: too long) >")
    assert rows["infer/default/eager"]["status"] == "failed"
    assert rows["infer/default/eager"]["reason"] == "RuntimeError: boom"
    assert result["summary"] == {"passed": len(ROWS) - 4, "failed": 1, "skipped": 3}
    assert result["complete"]
    assert not list(tmp_path.glob(".*.tmp"))  # written through os.replace


def test_patch_that_leaves_a_one_voxel_bottleneck_is_refused(
    script: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = script["main"](["--device", "cpu", "--patch", "32", "32", "32",
                         "--output", str(tmp_path / "x")])  # fmt: skip
    assert rc == 2 and "at least 2 voxels" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_gpu_is_a_clear_error(
    script: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert script["main"](["--output", str(tmp_path / "x")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["tiny_plain", "tiny_resencm", "brats_plain"])
def test_networks_are_the_trainers_networks(script: dict, case: str) -> None:
    """Built without nnunetv2, the networks equal what the trainers build with it (same
    parameters and initial values; the script opens the gates), and the placements are
    the trainers'."""
    from nnunet_pde.network import build_pde3d_network
    from nnunet_pde.trainers.nnUNetTrainerPDE3D import (
        FULL_REGULARIZER,
        nnUNetTrainerPDE3D,
        nnUNetTrainerPDE3D_Stages01,
    )

    variants = script["VARIANTS"]
    assert variants["default"] == nnUNetTrainerPDE3D.pde_config
    assert variants["stages01"] == nnUNetTrainerPDE3D_Stages01.pde_config
    assert not nnUNetTrainerPDE3D.pde_all_stages and not nnUNetTrainerPDE3D_Stages01.pde_all_stages
    assert script["LAMBDA_PDE"] == FULL_REGULARIZER.lambda_pde

    plans_file = {"tiny_plain": "plans_tiny_plain.json", "tiny_resencm": "plans_tiny_resencm.json",
                  "brats_plain": "plans_brats_plain.json"}[case]  # fmt: skip
    ds_file = "dataset_brats_regions.json" if "brats" in case else "dataset_tiny_labels.json"
    plans, dataset_json = load_plans(case)
    pm, cm, n_in, n_out = managers(plans, dataset_json)
    assert script["channels"](FIXTURES / ds_file) == (n_in, n_out)
    conf = script["load_configuration"](FIXTURES / plans_file, "3d_fullres")
    for name in ("stock", "stages01"):
        ours = script["build_network"](conf, n_in, n_out, variants[name], True, seed=3)
        torch.manual_seed(3)
        theirs = build_pde3d_network(pm, cm, n_in, n_out, True, config=variants[name])
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b)
        for k in a:
            if k.endswith(".gamma"):
                assert bool((a[k] == script["GATE"]).all()) and not b[k].any()
            else:
                assert torch.equal(a[k], b[k]), k
    if case.startswith("tiny"):  # the feature maps the blocks evolve, as the predictor counts
        seen: list[int] = []
        for block in script["pde_blocks"](ours).values():
            block.register_forward_hook(lambda m, inp, out: seen.append(inp[0].numel()))
        patch = [16, 16, 16]
        with torch.no_grad():
            ours.eval()(torch.zeros(1, n_in, *patch))
        assert seen == script["block_elements"](ours, 1, patch)
