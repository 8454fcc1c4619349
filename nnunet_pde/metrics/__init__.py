"""Segmentation metrics with exact, documented definitions (docs/evaluation.md).

Pure numpy/scipy functions on binary masks (numpy axis order, spacing in mm per axis):

* overlap: :func:`dice`, :func:`precision`, :func:`recall`, :func:`volume_mm3`;
* boundary: :func:`hd95`, :func:`hausdorff`, :func:`assd`, :func:`nsd`;
* everything for one case and region at once: :func:`compute_metrics` -> :class:`MaskMetrics`;
* summaries over cases with a named imputation policy: :func:`aggregate`, :class:`ImputationPolicy`.

Folder evaluation (files, dataset.json, parallelism, the ``evaluate`` command) is in
:mod:`nnunet_pde.metrics.evaluate`, which is not imported here so that this package stays
importable without SimpleITK. Nothing in this package imports torch or nnunetv2.
"""

from __future__ import annotations

from nnunet_pde.metrics.aggregate import (
    IMPUTATION_POLICIES,
    ImputationPolicy,
    aggregate,
    impute,
    summarize,
)
from nnunet_pde.metrics.case import (
    DISTANCE_METRICS,
    STATUSES,
    SUMMARY_METRICS,
    MaskMetrics,
    compute_metrics,
    image_diagonal_mm,
)
from nnunet_pde.metrics.distance import assd, hausdorff, hd95, nsd
from nnunet_pde.metrics.info import METRIC_INFO
from nnunet_pde.metrics.overlap import confusion_counts, dice, precision, recall, volume_mm3
from nnunet_pde.metrics.surface import directed_surface_distances, surface_voxels

__all__ = [
    "METRIC_INFO",
    "DISTANCE_METRICS",
    "IMPUTATION_POLICIES",
    "STATUSES",
    "SUMMARY_METRICS",
    "ImputationPolicy",
    "MaskMetrics",
    "aggregate",
    "assd",
    "compute_metrics",
    "confusion_counts",
    "dice",
    "directed_surface_distances",
    "hausdorff",
    "hd95",
    "image_diagonal_mm",
    "impute",
    "nsd",
    "precision",
    "recall",
    "summarize",
    "surface_voxels",
    "volume_mm3",
]
