#!/usr/bin/env python
"""Run-to-run spread next to the differences between trainers, from benchmark reports.

nnU-Net training is not deterministic, so a paired test over cases says nothing about how
much a second training of the same fold would differ. Give one ``per_case_metrics.csv``
(written by ``nnunet-pde benchmark report``) per repeated run of the same folds; this prints,
per metric and region, the mean of every trainer in every run, the spread between runs
(max - min of the run means) and the difference of every trainer from ``--reference`` in
each run, as a Markdown table (and JSON with ``--json``).

    python scripts/run_spread.py run1/per_case_metrics.csv run2/per_case_metrics.csv \\
        --reference nnUNetTrainerPDE3D_Backbone_6epochs_6iters_noTTA --metrics dice hd95_mm
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path


def run_means(path: Path, metrics: list[str]) -> dict[tuple[str, str, str], float]:
    """(trainer, region, metric) -> mean over the finite per-case values of one run."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for metric in metrics:
                v = float(row[metric])
                if math.isfinite(v):
                    values[(row["trainer"], row["region"], metric)].append(v)
    return {k: sum(v) / len(v) for k, v in values.items() if v}


def spread_table(runs: list[dict], reference: str, metrics: list[str]) -> list[dict]:
    """One row per (metric, region, trainer) present in every run."""
    keys = set.intersection(*(set(r) for r in runs))
    rows = []
    for metric in metrics:
        for region in sorted({k[1] for k in keys if k[2] == metric}):
            for trainer in sorted({k[0] for k in keys if k[1:] == (region, metric)}):
                means = [r[(trainer, region, metric)] for r in runs]
                ref = [r.get((reference, region, metric)) for r in runs]
                rows.append(
                    {
                        "metric": metric,
                        "region": region,
                        "trainer": trainer,
                        "run_means": means,
                        "spread": max(means) - min(means),
                        "minus_reference": [
                            None if b is None else m - b for m, b in zip(means, ref, strict=True)
                        ],
                    }
                )
    return rows


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def markdown(rows: list[dict], n_runs: int, reference: str) -> str:
    runs = " | ".join(f"run {i + 1}" for i in range(n_runs))
    deltas = " | ".join(f"minus ref, run {i + 1}" for i in range(n_runs))
    lines = [
        f"| metric | region | trainer | {runs} | spread between runs | {deltas} |",
        "|---" * (4 + 2 * n_runs) + "|",
    ]
    for r in rows:
        means = " | ".join(f"{m:.4f}" for m in r["run_means"])
        diffs = " | ".join(_fmt(d) for d in r["minus_reference"])
        name = r["trainer"] + (" (reference)" if r["trainer"] == reference else "")
        lines.append(
            f"| {r['metric']} | {r['region']} | {name} | {means} | {r['spread']:.4f} | {diffs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, nargs="+", help="per_case_metrics.csv, one per run")
    parser.add_argument("--reference", required=True, help="trainer the others are compared to")
    parser.add_argument("--metrics", nargs="+", default=["dice", "hd95_mm"])
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if len(args.csv) < 2:
        print("error: csv: give at least two runs to measure a spread", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.csv if not p.is_file()]
    if missing:
        print(f"error: csv: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    runs = [run_means(p, args.metrics) for p in args.csv]
    rows = spread_table(runs, args.reference, args.metrics)
    print(markdown(rows, len(runs), args.reference))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
