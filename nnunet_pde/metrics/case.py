"""All metrics of one case and one label or region, computed in one pass.

:func:`compute_metrics` extracts the surfaces and runs the distance transforms once and
derives every boundary metric from the same directed distances, instead of once per call
of :func:`~nnunet_pde.metrics.distance.hd95`, :func:`~nnunet_pde.metrics.distance.hausdorff`,
:func:`~nnunet_pde.metrics.distance.assd` and :func:`~nnunet_pde.metrics.distance.nsd`;
the values are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from nnunet_pde.metrics.distance import (
    assd_from_distances,
    hd_percentile_from_distances,
    nsd_from_distances,
)
from nnunet_pde.metrics.overlap import confusion_counts
from nnunet_pde.metrics.surface import as_binary_pair, directed_surface_distances, validate_spacing

__all__ = [
    "DISTANCE_METRICS",
    "STATUSES",
    "SUMMARY_METRICS",
    "MaskMetrics",
    "case_status",
    "compute_metrics",
    "image_diagonal_mm",
]

#: Per-case status values: what the masks looked like, so that an ``inf`` or ``nan`` can be
#: told apart from a measured value without re-reading the images.
STATUSES = ("ok", "empty_pred", "empty_ref", "both_empty")

#: Metrics in mm that are ``inf`` when exactly one mask is empty (the ones imputation acts on).
DISTANCE_METRICS = ("hd95_mm", "hausdorff_mm", "assd_mm")

#: Metrics summarised over cases, in report order.
SUMMARY_METRICS = (
    "dice",
    "hd95_mm",
    "hausdorff_mm",
    "assd_mm",
    "nsd",
    "precision",
    "recall",
    "pred_volume_mm3",
    "ref_volume_mm3",
)


def case_status(pred_empty: bool, ref_empty: bool) -> str:
    """One of :data:`STATUSES` from whether each mask is empty."""
    if pred_empty and ref_empty:
        return "both_empty"
    if pred_empty:
        return "empty_pred"
    if ref_empty:
        return "empty_ref"
    return "ok"


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | np.ndarray) -> float:
    """Physical length of the image diagonal, ``sqrt(sum((shape * spacing)^2))``, in mm.

    The largest distance between two points of the image extent (voxel edges, not centres);
    used as the worst possible surface distance by the ``volume_diagonal`` imputation.
    """
    sp = validate_spacing(spacing, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * sp) ** 2)))


@dataclass(frozen=True)
class MaskMetrics:
    """Metrics of one prediction mask against one reference mask.

    Distances in mm, volumes in mm^3 (mm^2 for 2-D images), voxel counts in voxels.
    ``inf`` and ``nan`` follow the edge-case table in docs/evaluation.md; ``status`` says
    which case applies.
    """

    status: str
    dice: float
    hd95_mm: float
    hausdorff_mm: float
    assd_mm: float
    nsd: float
    tolerance_mm: float
    precision: float
    recall: float
    pred_volume_mm3: float
    ref_volume_mm3: float
    pred_voxels: int
    ref_voxels: int
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict[str, float | int | str]:
        """Field name -> value, in declaration order."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Field names in declaration order (the CSV column order)."""
        return tuple(f.name for f in fields(cls))


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    tolerance_mm: float = 1.0,
) -> MaskMetrics:
    """Every metric of one binary prediction against one binary reference.

    Parameters
    ----------
    pred, ref
        Binary masks of equal shape, numpy axis order (non-zero = foreground).
    spacing
        Voxel size in mm per axis, numpy axis order.
    tolerance_mm
        NSD tolerance in mm.

    Returns
    -------
    MaskMetrics
        Values equal to those of the single-metric functions (:func:`dice`, :func:`hd95`, ...).
    """
    p, r = as_binary_pair(pred, ref)
    sp = validate_spacing(spacing, p.ndim)
    c = confusion_counts(p, r)
    d_pr, d_rp = directed_surface_distances(p, r, sp)
    voxel_mm3 = float(np.prod(sp))

    def ratio(num: int, den: int) -> float:
        return num / den if den else float("nan")

    return MaskMetrics(
        status=case_status(c.n_pred == 0, c.n_ref == 0),
        dice=ratio(2 * c.tp, c.n_pred + c.n_ref),
        hd95_mm=hd_percentile_from_distances(d_pr, d_rp, 95.0),
        hausdorff_mm=hd_percentile_from_distances(d_pr, d_rp, None),
        assd_mm=assd_from_distances(d_pr, d_rp),
        nsd=nsd_from_distances(d_pr, d_rp, tolerance_mm),
        tolerance_mm=float(tolerance_mm),
        precision=ratio(c.tp, c.n_pred),
        recall=ratio(c.tp, c.n_ref),
        pred_volume_mm3=c.n_pred * voxel_mm3,
        ref_volume_mm3=c.n_ref * voxel_mm3,
        pred_voxels=c.n_pred,
        ref_voxels=c.n_ref,
        tp=c.tp,
        fp=c.fp,
        fn=c.fn,
    )
