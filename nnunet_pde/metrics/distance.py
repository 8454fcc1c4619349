"""Boundary metrics of binary masks: HD95, Hausdorff distance, ASSD and NSD.

Masks are in numpy axis order, ``spacing`` is the voxel size in mm along the same axes, and
every distance is in mm. Surfaces and directed distances are defined in
:mod:`nnunet_pde.metrics.surface` (face-connected erosion, exact Euclidean distances between
surface-voxel centres). Write ``d(P->R)`` for the distances from every surface voxel of the
prediction to the reference surface and ``d(R->P)`` for the other direction.

Edge cases (also in docs/evaluation.md)::

    prediction  reference   HD95 / HD / ASSD   NSD
    empty       empty       nan                nan
    empty       non-empty   inf                0
    non-empty   empty       inf                0

``inf`` is kept as is; replacing it by a number is an aggregation decision
(:mod:`nnunet_pde.metrics.aggregate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnunet_pde.metrics.surface import directed_surface_distances

__all__ = [
    "assd",
    "assd_from_distances",
    "hausdorff",
    "hd95",
    "hd_percentile_from_distances",
    "nsd",
    "nsd_from_distances",
]

Spacing = Sequence[float] | np.ndarray


def hd_percentile_from_distances(
    pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, percentile: float | None
) -> float:
    """Symmetric percentile Hausdorff distance from directed surface distances (mm).

    ``max(q(d(P->R)), q(d(R->P)))`` where ``q`` is the ``percentile``-th percentile with
    numpy's default linear interpolation (MONAI uses the same via ``torch.quantile``), or the
    maximum when ``percentile`` is None. An empty direction is skipped; both empty gives nan.
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    values = []
    for d in (pred_to_ref, ref_to_pred):
        if d.size == 0:
            continue
        if np.isinf(d).any():
            # np.percentile interpolates inf with finite values into nan; a missing target
            # surface makes every distance inf anyway.
            values.append(float("inf"))
        elif percentile is None:
            values.append(float(d.max()))
        else:
            values.append(float(np.percentile(d, percentile)))
    return max(values) if values else float("nan")


def assd_from_distances(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    """Average symmetric surface distance from directed distances (mm).

    ``(sum d(P->R) + sum d(R->P)) / (|S_P| + |S_R|)``: the mean over the pooled surface
    voxels of both masks (Heimann et al. 2009; MONAI ``symmetric=True``). Both empty: nan.
    """
    n = pred_to_ref.size + ref_to_pred.size
    if n == 0:
        return float("nan")
    return float((pred_to_ref.sum() + ref_to_pred.sum()) / n)


def nsd_from_distances(
    pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, tolerance_mm: float
) -> float:
    """Normalised surface Dice from directed distances.

    ``(#{d(P->R) <= tau} + #{d(R->P) <= tau}) / (|S_P| + |S_R|)``, counting surface voxels
    (MONAI ``compute_surface_dice`` with ``use_subvoxels=False``; DeepMind's version weights
    by surface-element area instead). Both empty: nan.
    """
    _check_tolerance(tolerance_mm)
    n = pred_to_ref.size + ref_to_pred.size
    if n == 0:
        return float("nan")
    hits = np.count_nonzero(pred_to_ref <= tolerance_mm) + np.count_nonzero(
        ref_to_pred <= tolerance_mm
    )
    return float(hits) / float(n)


def _check_tolerance(tolerance_mm: float) -> None:
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm}")


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """95th-percentile Hausdorff distance in mm.

    ``max(P95(d(P->R)), P95(d(R->P)))``: the maximum of the two *directed* 95th percentiles
    (MONAI, DeepMind surface-distance, Metrics Reloaded), not the 95th percentile of the
    pooled distances (medpy). nan if both masks are empty, inf if exactly one is.

    Parameters
    ----------
    pred, ref
        Binary masks of equal shape, numpy axis order (non-zero = foreground).
    spacing
        Voxel size in mm per axis, numpy axis order.
    """
    return hd_percentile_from_distances(*directed_surface_distances(pred, ref, spacing), 95.0)


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """Hausdorff distance (maximum surface distance, both directions) in mm.

    nan if both masks are empty, inf if exactly one is. Arguments as in :func:`hd95`.
    """
    return hd_percentile_from_distances(*directed_surface_distances(pred, ref, spacing), None)


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """Average symmetric surface distance in mm (see :func:`assd_from_distances`).

    nan if both masks are empty, inf if exactly one is. Arguments as in :func:`hd95`.
    """
    return assd_from_distances(*directed_surface_distances(pred, ref, spacing))


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing, tolerance_mm: float) -> float:
    """Normalised surface Dice (surface Dice) at ``tolerance_mm`` (see :func:`nsd_from_distances`).

    In [0, 1]: the fraction of both surfaces that lies within ``tolerance_mm`` of the other
    surface. nan if both masks are empty, 0 if exactly one is. Other arguments as in
    :func:`hd95`.
    """
    _check_tolerance(tolerance_mm)
    return nsd_from_distances(*directed_surface_distances(pred, ref, spacing), tolerance_mm)
