"""Voxel-overlap metrics of binary masks: Dice, precision, recall and volumes.

Masks are arrays of any number of axes (non-zero = foreground) of the same shape. Values
that are mathematically undefined (0/0) are returned as ``nan``, never silently as 0 or 1;
:mod:`nnunet_pde.metrics.aggregate` decides what to do with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_pde.metrics.surface import as_binary_pair, validate_spacing

__all__ = ["ConfusionCounts", "confusion_counts", "dice", "precision", "recall", "volume_mm3"]


@dataclass(frozen=True)
class ConfusionCounts:
    """Voxel counts of a prediction against a reference (background voxels not counted)."""

    tp: int
    fp: int
    fn: int

    @property
    def n_pred(self) -> int:
        """Foreground voxels of the prediction."""
        return self.tp + self.fp

    @property
    def n_ref(self) -> int:
        """Foreground voxels of the reference."""
        return self.tp + self.fn


def confusion_counts(pred: np.ndarray, ref: np.ndarray) -> ConfusionCounts:
    """True positive, false positive and false negative voxel counts."""
    p, r = as_binary_pair(pred, ref)
    tp = int(np.count_nonzero(p & r))
    return ConfusionCounts(
        tp=tp, fp=int(np.count_nonzero(p)) - tp, fn=int(np.count_nonzero(r)) - tp
    )


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else float("nan")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient ``2 |P & R| / (|P| + |R|)``.

    Returns 0 when exactly one mask is empty and ``nan`` when both are (as nnU-Net does).
    """
    c = confusion_counts(pred, ref)
    return _ratio(2 * c.tp, c.n_pred + c.n_ref)


def precision(pred: np.ndarray, ref: np.ndarray) -> float:
    """Precision (positive predictive value) ``|P & R| / |P|``; ``nan`` when ``pred`` is empty."""
    c = confusion_counts(pred, ref)
    return _ratio(c.tp, c.n_pred)


def recall(pred: np.ndarray, ref: np.ndarray) -> float:
    """Recall (sensitivity) ``|P & R| / |R|``; ``nan`` when ``ref`` is empty."""
    c = confusion_counts(pred, ref)
    return _ratio(c.tp, c.n_ref)


def volume_mm3(mask: np.ndarray, spacing: Sequence[float] | np.ndarray) -> float:
    """Foreground volume in mm^3: voxel count times the voxel volume ``prod(spacing)``.

    ``spacing`` is in mm per axis, numpy axis order (in 2-D the result is an area in mm^2).
    """
    m = np.asarray(mask).astype(bool, copy=False)
    sp = validate_spacing(spacing, m.ndim)
    return float(np.count_nonzero(m)) * float(np.prod(sp))
