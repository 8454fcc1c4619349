"""``metrics_per_case.csv``: one row per case and region, written and read back.

Floats are written with ``repr`` (full precision; ``inf`` and ``nan`` as such, which
``float()``, numpy and pandas all read back), through the one atomic writer
(:func:`nnunet_pde.files.atomic_write_text`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nnunet_pde.files import atomic_write_text
from nnunet_pde.metrics.case import MaskMetrics

__all__ = ["CSV_COLUMNS", "PER_CASE_CSV", "read_per_case_csv", "write_per_case_csv"]

PER_CASE_CSV = "metrics_per_case.csv"

#: Columns of ``metrics_per_case.csv``, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "case",
    "region",
    "labels",
    *MaskMetrics.field_names(),
    "image_diagonal_mm",
)


def _format_cell(value: Any) -> Any:
    # repr keeps full float precision; inf/nan come out as "inf"/"nan", which
    # float(), numpy and pandas all read back.
    return repr(value) if isinstance(value, float) else value


def write_per_case_csv(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    """Write per-case rows with the columns :data:`CSV_COLUMNS`."""

    text = io.StringIO()  # no newline translation: the csv module's \r\n line ends stay
    w = csv.DictWriter(text, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: _format_cell(row[k]) for k in CSV_COLUMNS})
    atomic_write_text(path, text.getvalue())


def read_per_case_csv(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics_per_case.csv`` back with numbers as int/float (inf and nan included)."""
    ints = {"pred_voxels", "ref_voxels", "tp", "fp", "fn"}
    text = {"case", "region", "labels", "status"}
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: v if k in text else (int(v) if k in ints else float(v)) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]
