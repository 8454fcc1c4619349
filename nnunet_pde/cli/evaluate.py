"""``nnunet-pde evaluate``: the command line of :mod:`nnunet_pde.metrics.evaluate`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnunet_pde.cli.options import (
    add_command,
    imputation_options,
    imputation_policy,
    no_progress_option,
    overwrite_option,
    tolerance_option,
)
from nnunet_pde.metrics.evaluate import (
    PER_CASE_CSV,
    SUMMARY_JSON,
    EvaluationError,
    default_num_workers,
    evaluate_folders,
)

# --------------------------------------------------------------------------- command line

_EXAMPLE = """\
example:
  R=$nnUNet_results/Dataset501_SyntheticBraTS/nnUNetTrainerPDE3D__nnUNetPlans__3d_fullres
  nnunet-pde evaluate $R/fold_0/validation \\
      $nnUNet_preprocessed/Dataset501_SyntheticBraTS/gt_segmentations --allow-missing \\
      --tolerance-mm 1 --impute worst --worst-value 373.13

writes metrics_per_case.csv and metrics_summary.json into the prediction folder (never
nnU-Net's summary.json). Definitions of every metric: docs/evaluation.md.
"""


def _fmt(stats: Mapping[str, Any], digits: int) -> str:
    mean, std = stats["mean"], stats["std"]
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    return text


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """A short text table: per region, cases, statuses, Dice, HD95 and NSD (mean ± SD)."""
    tol = summary.get("metadata", {}).get("tolerance_mm", float("nan"))
    header = ["region", "cases", "status", "Dice", "HD95 mm", f"NSD@{tol:g}mm"]
    lines = []
    for name, reg in summary["regions"].items():
        statuses = ", ".join(f"{k} {v}" for k, v in reg["status_counts"].items() if v) or "-"
        hd = reg["metrics"]["hd95_mm"]
        hd_text = _fmt(hd, 2)
        notes = []
        if hd["n_imputed"]:
            notes.append(f"{hd['n_imputed']} imputed")
        if hd["n_excluded"]:
            notes.append(f"{hd['n_excluded']} excluded")
        if notes:
            hd_text += f" ({', '.join(notes)})"
        lines.append(
            [
                name,
                str(reg["n_cases"]),
                statuses,
                _fmt(reg["metrics"]["dice"], 4),
                hd_text,
                _fmt(reg["metrics"]["nsd"], 4),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *lines]
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    rows, summary = evaluate_folders(
        args.pred_dir,
        args.ref_dir,
        dataset_json=args.dataset_json,
        num_workers=args.workers,
        tolerance_mm=args.tolerance_mm,
        progress=not args.no_progress,
        output_dir=args.output,
        overwrite=args.overwrite,
        policy=imputation_policy(args, EvaluationError),
        allow_missing_predictions=args.allow_missing,
    )
    out_dir = Path(args.output) if args.output is not None else Path(args.pred_dir)
    imp = summary["imputation"]
    imp_text = imp["policy"] + (
        f" ({imp['worst_value_mm']} mm)" if imp["worst_value_mm"] is not None else ""
    )
    print(format_summary_table(summary))
    print(f"\n{summary['metadata']['n_cases']} case(s); infinite distances: {imp_text}. Wrote")
    print(f"  {out_dir / PER_CASE_CSV}  ({len(rows)} rows: one per case and region)")
    print(f"  {out_dir / SUMMARY_JSON}  (per-region statistics over cases)")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an ``argparse`` subparsers object."""
    p = add_command(
        subparsers,
        "evaluate",
        _cmd_evaluate,
        help="Dice, HD95, HD, ASSD, NSD, precision, recall of a prediction folder, per case "
        "and region",
        description=(
            "Evaluate a folder of predicted segmentations against a folder of reference "
            "segmentations, per case and per label or region of dataset.json: Dice, HD95, "
            "Hausdorff distance, ASSD, NSD at a tolerance, precision, recall and volumes (mm, "
            "from the image spacing). Writes metrics_per_case.csv and metrics_summary.json; "
            "nnU-Net's summary.json is never touched."
        ),
        epilog=_EXAMPLE,
    )
    p.add_argument("pred_dir", metavar="PRED_DIR", type=Path, help="folder of predicted label maps")
    p.add_argument(
        "ref_dir",
        metavar="REF_DIR",
        type=Path,
        help="folder of reference label maps with the same file names",
    )
    p.add_argument(
        "--dataset-json",
        type=Path,
        default=None,
        help="dataset.json with the labels/regions (default: found in PRED_DIR, its "
        "parent or grandparent, or next to REF_DIR)",
    )
    tolerance_option(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"parallel processes (default {default_num_workers()}: CPUs, at most 8; "
        "1 = no subprocesses)",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="folder for the outputs (default: PRED_DIR)"
    )
    overwrite_option(p, "replace existing metrics_per_case.csv / metrics_summary.json")
    imputation_options(p, where=" in the summary")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="evaluate only the references that have a prediction (e.g. one fold's "
        "validation folder) instead of failing",
    )
    no_progress_option(p)
    return p
