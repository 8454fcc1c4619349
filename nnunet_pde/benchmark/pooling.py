"""Pooling the out-of-fold predictions of a CV grid, and imputing the cases without a value."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.errors import BenchmarkError
from nnunet_pde.folders import (
    FOLD_FINISHED,
    fold_dir,
    fold_state,
    trainer_dir_name,
)
from nnunet_pde.locks import lock_holder
from nnunet_pde.metrics import DISTANCE_METRICS, ImputationPolicy

# ------------------------------------------------------------------------------- pooling


@dataclass
class PooledPredictions:
    """One trainer's out-of-fold predictions.

    Attributes
    ----------
    trainer
        Trainer name.
    model_folder
        ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``.
    cases
        Case id -> fold whose validation predicted it.
    folds_found
        Folds with at least one prediction.
    missing_folds
        Fold -> why it contributes nothing (no folder, no predictions, not finished).
    missing_cases
        Fold -> validation cases of ``splits_final.json`` without a prediction.
    unexpected_cases
        Fold -> predictions of cases that ``splits_final.json`` does not put in that fold.
    """

    trainer: str
    model_folder: Path
    cases: dict[str, int] = field(default_factory=dict)
    folds_found: list[int] = field(default_factory=list)
    missing_folds: dict[int, str] = field(default_factory=dict)
    missing_cases: dict[int, list[str]] = field(default_factory=dict)
    unexpected_cases: dict[int, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trainer": self.trainer,
            "model_folder": str(self.model_folder),
            "n_cases": len(self.cases),
            "folds_found": self.folds_found,
            "missing_folds": {str(k): v for k, v in self.missing_folds.items()},
            "missing_cases": {str(k): v for k, v in self.missing_cases.items()},
            "unexpected_cases": {str(k): v for k, v in self.unexpected_cases.items()},
        }


def pool_predictions(
    results: str | os.PathLike[str],
    dataset: str,
    trainer: str,
    plans: str,
    configuration: str,
    folds: Sequence[int],
    file_ending: str = ".nii.gz",
    splits: Sequence[Mapping[str, Sequence[str]]] | None = None,
) -> PooledPredictions:
    """Collect ``fold_k/validation/*<file_ending>`` of the given folds, every case once.

    Only finished folds are pooled (``checkpoint_final.pth`` and ``validation/summary.json``,
    which nnU-Net writes after the last validation export). A fold whose training or final
    validation was interrupted, or is running now, may hold half-written predictions: it is
    listed in ``missing_folds`` with the reason and its files are left out.

    Raises
    ------
    BenchmarkError
        If a case was predicted by more than one fold (the predictions are then not
        out-of-fold), naming the case and the folds.
    """
    results = Path(results)
    model = results / dataset / trainer_dir_name(trainer, plans, configuration)
    pooled = PooledPredictions(trainer, model)
    duplicates: list[str] = []
    for k in folds:
        folder = fold_dir(results, dataset, trainer, plans, configuration, k)
        val = folder / "validation"
        if not val.is_dir():
            pooled.missing_folds[k] = f"no folder {val}"
            continue
        cases = sorted(
            p.name[: -len(file_ending)]
            for p in val.iterdir()
            if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)
        )
        if not cases:
            pooled.missing_folds[k] = f"no *{file_ending} predictions in {val}"
            continue
        if fold_state(folder) != FOLD_FINISHED:
            holder = lock_holder(folder)
            now = (
                f"it is being trained now by {holder.describe()}"
                if holder
                else ("its training or final validation did not finish")
            )
            pooled.missing_folds[k] = (
                f"not finished ({now}: no checkpoint_final.pth or no validation/summary.json in "
                f"{folder}); its {len(cases)} prediction(s) are left out, as they may be "
                "half-written. Finish it with nnunet-pde benchmark run (it continues with --c)"
            )
            continue
        pooled.folds_found.append(k)
        for c in cases:
            if c in pooled.cases:
                duplicates.append(f"{c} (folds {pooled.cases[c]} and {k})")
            else:
                pooled.cases[c] = k
        if splits is not None and k < len(splits):
            expected = set(splits[k].get("val", []))
            missing = sorted(expected - set(cases))
            unexpected = sorted(set(cases) - expected)
            if missing:
                pooled.missing_cases[k] = missing
            if unexpected:
                pooled.unexpected_cases[k] = unexpected
    if duplicates:
        raise BenchmarkError(
            f"{trainer}: {len(duplicates)} case(s) were predicted by more than one fold, so the "
            f"pooled predictions are not out-of-fold: {', '.join(duplicates[:10])}"
        )
    return pooled


def metric_values(
    rows: Sequence[Mapping[str, Any]], metric: str, policy: ImputationPolicy
) -> np.ndarray:
    """``metric`` of each per-case row, in row order; distances imputed under ``policy``
    from each row's ``image_diagonal_mm`` (:func:`impute_aligned`)."""
    values = np.asarray([float(r[metric]) for r in rows], dtype=np.float64)
    if metric in DISTANCE_METRICS:
        diagonals = [float(r["image_diagonal_mm"]) for r in rows]
        values = impute_aligned(values, diagonals, policy)
    return values


def impute_aligned(
    values: Sequence[float] | np.ndarray,
    diagonals_mm: Sequence[float] | np.ndarray | None,
    policy: ImputationPolicy,
) -> np.ndarray:
    """Per-case values with ``policy`` applied to infinite entries, keeping the case order.

    Like :func:`nnunet_pde.metrics.impute`, but instead of dropping, an excluded value
    (``inf`` under ``exclude``) becomes ``nan``; ``nan`` stays ``nan``. The finite entries are
    exactly the values :func:`nnunet_pde.metrics.aggregate` summarises, and the alignment
    with the cases is what the paired test needs.
    """
    v = np.asarray(values, dtype=np.float64).copy()
    inf = np.isinf(v)
    if not inf.any():
        return v
    if policy.name == "exclude":
        v[inf] = np.nan
    elif policy.name == "worst":
        v[inf] = float(policy.worst_value_mm)  # type: ignore[arg-type]
    else:
        if diagonals_mm is None:
            raise ValueError("imputation policy 'volume_diagonal' needs the per-case diagonals")
        v[inf] = np.asarray(diagonals_mm, dtype=np.float64)[inf]
    return v
