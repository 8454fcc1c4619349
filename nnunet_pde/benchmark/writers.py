"""Small public writers shared by the benchmark and robustness reports: numbers, Markdown, CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "STAT_COLUMNS",
    "fmt_num",
    "md_table",
    "regions_in_order",
    "short_trainer",
    "stat_fields",
    "write_csv",
]

#: The statistic columns of a summary row, in order (both reports' ``summary.csv``).
STAT_COLUMNS = ("n_cases", "n", "n_nan", "n_inf", "n_imputed", "n_excluded", "mean", "sd", "median")


def stat_fields(st: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`STAT_COLUMNS` of a summary row from :func:`nnunet_pde.metrics.aggregate`'s
    statistics of one group (its ``std`` is the row's ``sd``)."""
    return {k: st["std" if k == "sd" else k] for k in STAT_COLUMNS}


def regions_in_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``region`` values of ``rows``, each once, in order of first appearance."""
    regions: list[str] = []
    for r in rows:
        if r["region"] not in regions:
            regions.append(str(r["region"]))
    return regions


def fmt_num(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, ``n/a`` when it is not a finite number."""
    return f"{x:.{digits}f}" if isinstance(x, int | float) and math.isfinite(x) else "n/a"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short_trainer(trainer: str) -> str:
    """A trainer name without the ``nnUNetTrainer`` prefix (for figure labels)."""
    return trainer.removeprefix("nnUNetTrainer") or trainer


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` with ``columns`` (floats as their repr, full precision)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
