"""Sweep the regulariser weights (lambda_pde, lambda_tv) of nnUNetTrainerPDE3D on one fold.

For each ``--setting PDE,TV`` the script trains a variant of nnUNetTrainerPDE3D in this
process (nnU-Net's own training loop and final validation), with the given weights and a
short schedule, then scores the fold's validation predictions with nnunet_pde.metrics
against nnU-Net's ``gt_segmentations``. It prints one row per setting (mean Dice and HD95
per region) and writes a JSON next to the results. Used to choose the defaults recorded in
docs/trainers.md; run it with more epochs and folds on real data before trusting a winner.

Example (CPU, after nnUNetv2_plan_and_preprocess)::

    python scripts/lambda_sweep.py 991 --setting 0,0 --setting 0.1,0.05 --setting 0.4,0.2 \
        --epochs 20 --iters 8 --device cpu --output sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path


def parse_setting(text: str) -> tuple[float, float]:
    try:
        pde, tv = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--setting must be PDE,TV (two numbers), got '{text}'"
        ) from None
    if pde < 0 or tv < 0:
        raise argparse.ArgumentTypeError(f"weights must be >= 0, got '{text}'")
    return pde, tv


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", help="dataset id or name in $nnUNet_preprocessed")
    parser.add_argument(
        "--setting",
        type=parse_setting,
        action="append",
        required=True,
        help="lambda_pde,lambda_tv (repeat for each setting)",
    )
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iters", type=int, default=8, help="training iterations per epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--output", type=Path, required=True, help="JSON with the results (must not exist)"
    )
    args = parser.parse_args()

    if args.output.exists():
        print(f"error: {args.output} exists; choose another --output", file=sys.stderr)
        return 2
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(var):
            print(f'error: {var} is not set (eval "$(nnunet-pde env)")', file=sys.stderr)
            return 2

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_pde.files import write_json
    from nnunet_pde.metrics.evaluate import evaluate_folders
    from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D

    folder = Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(args.dataset)
    results = []
    for pde, tv in args.setting:
        tag = f"pde{pde:g}_tv{tv:g}".replace(".", "p")
        cls = type(
            f"nnUNetTrainerPDE3D_Sweep_{tag}",
            (nnUNetTrainerPDE3D,),
            {
                "reg_config": dataclasses.replace(
                    nnUNetTrainerPDE3D.reg_config, lambda_pde=pde, lambda_tv=tv
                ),
                "epochs": args.epochs,
                "iterations_per_epoch": args.iters,
                "val_iterations_per_epoch": 2,
                "__doc__": f"lambda sweep: lambda_pde={pde}, lambda_tv={tv}",
            },
        )
        plans = load_json(str(folder / "nnUNetPlans.json"))
        plans["continue_training"] = False
        trainer = cls(
            plans,
            "3d_fullres",
            args.fold,
            load_json(str(folder / "dataset.json")),
            torch.device(args.device),
        )
        print(
            f"\n=== lambda_pde={pde} lambda_tv={tv}: training into {trainer.output_folder}",
            flush=True,
        )
        trainer.run_training()
        trainer.perform_actual_validation(False)
        val = Path(trainer.output_folder) / "validation"
        _, summary = evaluate_folders(
            val,
            folder / "gt_segmentations",
            folder / "dataset.json",
            num_workers=1,
            progress=False,
            write=False,
            allow_missing_predictions=True,
        )
        row = {"lambda_pde": pde, "lambda_tv": tv, "regions": {}}
        for region, stats in summary["regions"].items():
            row["regions"][region] = {m: stats["metrics"][m]["mean"] for m in ("dice", "hd95_mm")}
        results.append(row)

    print(
        "\nlambda_pde lambda_tv  "
        + "  ".join(f"{r[:14]:>14} Dice/HD95" for r in results[0]["regions"])
    )
    for row in results:
        cells = "  ".join(
            f"{v['dice']:>14.3f}/{v['hd95_mm']:5.2f}" for v in row["regions"].values()
        )
        print(f"{row['lambda_pde']:>10g} {row['lambda_tv']:>9g}  {cells}")
    schedule = {"fold": args.fold, "epochs": args.epochs, "iterations_per_epoch": args.iters}
    write_json(args.output, {"dataset": folder.name, **schedule, "results": results}, indent=1)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
