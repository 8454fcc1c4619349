"""End-to-end demo of nnunet-pde through nnU-Net's own commands (run via scripts/demo.sh).

Steps, each a real command run as a subprocess with its output streamed:

1. ``nnunet-pde make-dataset brats-like``  (synthetic 4-channel MR, regions WT/TC/ET)
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity``
3. ``nnUNetv2_train ... -tr nnUNetTrainerPDE3D_Demo -device cpu``  (fold 0)
4. ``nnUNetv2_predict`` on imagesTs with the trained fold
5. ``nnUNetv2_evaluate_folder`` against labelsTs (nnU-Net's Dice)
6. ``nnunet-pde evaluate`` (HD95, NSD, ... which nnU-Net does not compute); then the Dice
   and HD95 per region are printed.

Everything is written to a new folder ``demo_work/run-<timestamp>`` (or ``--workdir``,
which must not exist yet): the demo never touches your own nnU-Net folders.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nnunet_pde.commands import build_predict_command, build_train_command

REPO = Path(__file__).resolve().parent.parent
#: nnU-Net's configuration and plans identifier that the demo trains and predicts with
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"


def run(cmd: Sequence[str], env: dict[str, str], step: str) -> float:
    """Run one command, streaming its output; return its wall time in seconds."""
    print(f"\n=== {step}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"demo failed at step '{step}' (exit code {proc.returncode}) after {dt:.0f} s")
    print(f"--- {step}: done in {dt:.0f} s", flush=True)
    return dt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=None, help="output folder (must not exist)")
    parser.add_argument("--dataset-id", type=int, default=991)
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=3)
    parser.add_argument("--size", default="48", help="image size, N or Z,Y,X voxels (default 48)")
    parser.add_argument("--trainer", default="nnUNetTrainerPDE3D_Demo")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workdir = args.workdir or REPO / "demo_work" / time.strftime("run-%Y%m%d-%H%M%S")
    if workdir.exists():
        sys.exit(f"error: {workdir} exists; choose another --workdir (the demo never overwrites)")
    workdir = workdir.resolve()
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(workdir / var)
        Path(env[var]).mkdir(parents=True)
    from nnunet_pde.env import export_lines  # the same lines `nnunet-pde env` prints

    for line in export_lines(environ=env):
        if line.startswith("export nnUNet_extTrainer="):
            env["nnUNet_extTrainer"] = line.split("=", 1)[1].strip("'")
    # nnU-Net sizes its worker pools for a workstation (8 processes by default); the demo
    # targets a 2-core machine. Values the user exported win.
    env.setdefault("nnUNet_n_proc_DA", "2")
    env.setdefault("nnUNet_def_n_proc", "2")
    print(f"demo folder: {workdir}\nnnUNet_extTrainer={env['nnUNet_extTrainer']}")

    did = str(args.dataset_id)
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    times["dataset"] = run(
        [
            "nnunet-pde",
            "make-dataset",
            "brats-like",
            "--id",
            did,
            "--num-train",
            str(args.num_train),
            "--num-test",
            str(args.num_test),
            "--size",
            args.size,
            "--seed",
            str(args.seed),
        ],
        env,
        "1/6 make synthetic BraTS-like dataset",
    )
    times["plan_and_preprocess"] = run(
        [
            "nnUNetv2_plan_and_preprocess",
            "-d",
            did,
            "-c",
            CONFIGURATION,
            "--verify_dataset_integrity",
            "-np",
            "2",
        ],
        env,
        "2/6 nnU-Net plan and preprocess",
    )
    times["train"] = run(
        build_train_command(did, CONFIGURATION, 0, args.trainer, PLANS, device=args.device),
        env,
        f"3/6 train {args.trainer}, fold 0",
    )
    raw = next((workdir / "nnUNet_raw").glob(f"Dataset{args.dataset_id:03d}_*"))
    pred = workdir / "predictions"
    times["predict"] = run(
        build_predict_command(
            raw / "imagesTs", pred, did, CONFIGURATION, PLANS, args.trainer, [0], args.device
        ),
        env,
        "4/6 nnUNetv2_predict on the test images",
    )
    plans = (
        next((workdir / "nnUNet_preprocessed").glob(f"Dataset{args.dataset_id:03d}_*"))
        / f"{PLANS}.json"
    )
    times["evaluate"] = run(
        [
            "nnUNetv2_evaluate_folder",
            str(raw / "labelsTs"),
            str(pred),
            "-djfile",
            str(raw / "dataset.json"),
            "-pfile",
            str(plans),
        ],
        env,
        "5/6 nnUNetv2_evaluate_folder against labelsTs",
    )
    evaluation = workdir / "evaluation"
    times["boundary_metrics"] = run(
        [
            "nnunet-pde",
            "evaluate",
            str(pred),
            str(raw / "labelsTs"),
            "--dataset-json",
            str(raw / "dataset.json"),
            "--output",
            str(evaluation),
            "--no-progress",
        ],
        env,
        "6/6 nnunet-pde evaluate (boundary metrics)",
    )
    total = time.perf_counter() - t_start
    boundary = json.loads((evaluation / "metrics_summary.json").read_text())["regions"]

    summary = json.loads((pred / "summary.json").read_text())
    labels = json.loads((raw / "dataset.json").read_text())["labels"]

    def as_tuple(v: object) -> tuple:
        return tuple(v) if isinstance(v, (list, tuple)) else (v,)

    from nnunetv2.evaluation.evaluate_predictions import key_to_label_or_region

    names = {as_tuple(v): k for k, v in labels.items() if k != "background"}
    print(f"\nTest-set Dice per region ({args.num_test} cases, {args.trainer}, fold 0):")
    for key, metrics in summary["mean"].items():
        name = names.get(as_tuple(key_to_label_or_region(key)), key)
        hd95 = (
            boundary.get(name, {}).get("metrics", {}).get("hd95_mm", {}).get("mean", float("nan"))
        )
        print(f"  {name:<16} {key:<12} Dice {metrics['Dice']:.3f}   HD95 {hd95:5.2f} mm")
    print(f"  {'mean':<29} Dice {summary['foreground_mean']['Dice']:.3f}")
    print(
        "\nwall time per step: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
        + f"; total {total:.0f} s"
    )
    print(
        f"wrote: dataset {raw}\n       model {workdir / 'nnUNet_results'}\n       predictions and "
        f"summary.json {pred}\n       boundary metrics {evaluation}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
