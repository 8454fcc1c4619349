"""Label maps read for evaluation, and the checks that prediction and reference fit together.

:func:`read_label_map` reads a label map (numpy axis order, z, y, x for 3-D) and its grid
(:class:`Geometry`) in one read; :func:`geometry_problem` says where a prediction's grid
differs from its reference's (shape, spacing, origin, direction), :func:`check_geometry`
compares all headers of a folder before any metric is computed, and :func:`checked_labels`
refuses non-integer maps and undeclared label values. SimpleITK reports spacing in (x, y, z)
order, which is reversed here once, on reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.files import read_image, read_image_header
from nnunet_pde.metrics.inputs import EvaluationError

__all__ = [
    "GEOMETRY_ATOL",
    "GEOMETRY_RTOL",
    "SPACING_RTOL",
    "Geometry",
    "check_geometry",
    "checked_labels",
    "geometry_problem",
    "read_geometry",
    "read_label_map",
    "read_segmentation",
]

#: Relative tolerance when comparing prediction and reference spacing: nnU-Net copies the
#: reference geometry into its exports, so anything beyond rounding is a real mismatch.
SPACING_RTOL = 1e-4
#: Tolerances for origin (mm) and direction cosines: ``np.allclose(a, b, rtol, atol)``. nnU-Net's
#: ``verify_dataset_integrity`` compares them with allclose's defaults (rtol 1e-5, atol 1e-8)
#: and only warns; here a mismatch is refused, and atol 1e-5 absorbs the float32 storage of
#: values near zero in NIfTI headers.
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = 1e-5


@dataclass(frozen=True)
class Geometry:
    """An image's grid: shape and spacing in numpy order (z, y, x); origin (mm) and the
    direction matrix (row-major 3x3 for 3-D) in SimpleITK's physical order (x, y, z, LPS)."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def geometry_of(image: Any) -> Geometry:
    """The grid of a SimpleITK image or of an ``ImageFileReader`` after its header read."""
    return Geometry(
        tuple(reversed(image.GetSize())),
        tuple(reversed(image.GetSpacing())),
        tuple(image.GetOrigin()),
        tuple(image.GetDirection()),
    )


def read_geometry(path: Path) -> Geometry:
    """The grid of the image file ``path``, from its header only."""
    return geometry_of(read_image_header(path, EvaluationError))


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """A label map (numpy order) and its grid, from one read of ``path``."""
    import SimpleITK as sitk

    img = read_image(path, EvaluationError)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(
            f"{path} has {img.GetNumberOfComponentsPerPixel()} components per "
            "voxel; a segmentation must be a single-component label map"
        )
    return sitk.GetArrayFromImage(img), geometry_of(img)


def read_segmentation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map and its spacing, both in numpy axis order.

    Returns
    -------
    (seg, spacing)
        ``seg``: integer array (z, y, x for 3-D); ``spacing``: mm per axis, same order.
    """
    seg, geometry = read_label_map(path)
    return seg, np.asarray(geometry.spacing, dtype=np.float64)


def checked_labels(seg: np.ndarray, path: Path, what: str, allowed: set[int]) -> np.ndarray:
    """``seg`` as integers; EvaluationError for non-integer values or undeclared labels.

    An undeclared value would silently count as background in every region, and a map of
    probabilities or a resampled float image would score as an empty prediction.
    """
    if not np.issubdtype(seg.dtype, np.integer):
        if seg.dtype == bool:
            seg = seg.astype(np.uint8)
        else:
            finite = np.isfinite(seg)
            if not finite.all() or not np.array_equal(seg, np.round(seg)):
                bad = np.unique(seg[~finite | (seg != np.round(seg))])[:3]
                raise EvaluationError(
                    f"the {what} {path} is not an integer label map ({seg.dtype} values such "
                    f"as {', '.join(f'{v:g}' for v in bad)}); write label values (e.g. "
                    "nnUNetv2_predict output, or argmax of probabilities), not probabilities"
                )
            seg = seg.astype(np.int64)
    values = np.unique(seg)
    unknown = sorted(int(v) for v in values if int(v) not in allowed)
    if unknown:
        raise EvaluationError(
            f"the {what} {path} contains label value(s) {', '.join(map(str, unknown))} that "
            f"dataset.json does not declare (it declares {', '.join(map(str, sorted(allowed)))});"
            " fix the file or pass the dataset.json it belongs to (--dataset-json)"
        )
    return seg


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def geometry_problem(case: str, p: Geometry, r: Geometry) -> str | None:
    """Where prediction grid ``p`` differs from reference grid ``r`` (None if it does not)."""
    if p.shape != r.shape:
        return f"{case}: shape {p.shape} (prediction) vs {r.shape} (reference)"
    if not np.allclose(p.spacing, r.spacing, rtol=SPACING_RTOL, atol=0.0):
        return (
            f"{case}: spacing {_fmt(p.spacing)} mm (prediction) vs {_fmt(r.spacing)} mm (reference)"
        )
    if len(p.origin) != len(r.origin) or not np.allclose(
        p.origin, r.origin, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL
    ):
        return (
            f"{case}: origin {_fmt(p.origin)} mm (prediction) vs {_fmt(r.origin)} mm "
            "(reference; physical x, y, z): the prediction is shifted"
        )
    if len(p.direction) != len(r.direction) or not np.allclose(
        p.direction, r.direction, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL
    ):
        return (
            f"{case}: direction {_fmt(p.direction)} (prediction) vs {_fmt(r.direction)} "
            "(reference): the axes are flipped or rotated (a re-export in another "
            "orientation, e.g. RAS vs LPS?)"
        )
    return None


def check_geometry(pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """Compare all headers before any metric is computed, so every mismatch is listed at once."""
    problems = []
    for case, p, r in pairs:
        problem = geometry_problem(case, read_geometry(p), read_geometry(r))
        if problem:
            problems.append(problem)
    if problems:
        raise EvaluationError(
            f"{len(problems)} case(s) differ in geometry between prediction and reference "
            "(shape and spacing in numpy order z, y, x): "
            + "; ".join(problems[:10])
            + (f"; ... ({len(problems) - 10} more)" if len(problems) > 10 else "")
            + ". Scoring would compare voxels that are not at the same place; resample or "
            "re-export the predictions on the reference's grid (nnUNetv2_predict does)"
        )
