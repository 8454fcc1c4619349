"""Surface extraction and spacing-aware surface distances of binary masks.

All arrays are in numpy axis order (for a 3-D image read with SimpleITK: z, y, x) and
``spacing`` is the physical voxel size along those same axes, in mm. Nothing here knows
about labels, files or nnU-Net; the metric functions in :mod:`nnunet_pde.metrics.distance`
build on the two functions below.

Definitions
-----------
surface
    ``mask & ~erode(mask)`` with the face-connected structuring element (connectivity 1:
    the 6-neighbourhood in 3-D, 4-neighbourhood in 2-D) and everything outside the image
    counted as background, so a mask touching the image border has a surface there. This is
    what MONAI's ``get_mask_edges`` does without sub-voxel areas.
directed surface distances from A to B
    for every surface voxel of A, the Euclidean distance in mm between its centre and the
    centre of the nearest surface voxel of B (exact, ``scipy.ndimage.distance_transform_edt``
    with ``sampling=spacing``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "SURFACE_CONNECTIVITY",
    "as_binary_pair",
    "directed_surface_distances",
    "surface_voxels",
    "validate_spacing",
]

#: Connectivity of the erosion that defines the surface (1 = faces only).
SURFACE_CONNECTIVITY = 1


def validate_spacing(spacing: Sequence[float] | np.ndarray, ndim: int) -> np.ndarray:
    """Return ``spacing`` as a float64 array after checking it fits an ``ndim``-D image.

    Parameters
    ----------
    spacing
        Voxel size in mm per axis, numpy axis order.
    ndim
        Number of image axes.

    Raises
    ------
    ValueError
        If the length is not ``ndim`` or a value is not a finite positive number.
    """
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size != ndim:
        raise ValueError(
            f"spacing must have one value per image axis ({ndim}), got {sp.size}: {list(sp)}"
        )
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing values must be finite and > 0 (mm), got {list(sp)}")
    return sp


def as_binary_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays (non-zero = foreground) after checking their shapes match.

    Raises
    ------
    ValueError
        If the shapes differ or the masks are 0-dimensional.
    """
    p = np.asarray(pred).astype(bool, copy=False)
    r = np.asarray(ref).astype(bool, copy=False)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}")
    if p.ndim == 0:
        raise ValueError("pred and ref must be arrays with at least one axis, got scalars")
    return p, r


def surface_voxels(mask: np.ndarray, connectivity: int = SURFACE_CONNECTIVITY) -> np.ndarray:
    """Boolean surface of a mask: the mask minus its binary erosion.

    Parameters
    ----------
    mask
        Binary mask (non-zero = foreground), any number of axes.
    connectivity
        Connectivity of the structuring element of the erosion (1 = face neighbours, the
        default and the one every metric here uses; ``mask.ndim`` = full neighbourhood).

    Returns
    -------
    numpy.ndarray
        Boolean array of ``mask.shape``; True on the surface voxels. Voxels outside the image
        count as background (``border_value=0``), so foreground on the image border is surface.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if not m.any():
        return np.zeros(m.shape, dtype=bool)
    structure = ndimage.generate_binary_structure(m.ndim, connectivity)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def _union_bbox(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` (both assumed non-empty somewhere)."""
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hit = np.flatnonzero(union.any(axis=other)) if other else np.flatnonzero(union)
        slices.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(slices)


def directed_surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Surface distances in both directions, in mm.

    Parameters
    ----------
    pred, ref
        Binary masks of the same shape (non-zero = foreground), numpy axis order.
    spacing
        Voxel size in mm per axis, numpy axis order.

    Returns
    -------
    (pred_to_ref, ref_to_pred)
        1-D float64 arrays: for each surface voxel of ``pred`` the distance to the nearest
        surface voxel of ``ref``, and the other way round. Where the target mask is empty
        the distances are ``inf`` (one per source surface voxel); an empty source mask gives
        an empty array. Both empty: two empty arrays.
    """
    p, r = as_binary_pair(pred, ref)
    sp = validate_spacing(spacing, p.ndim)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return np.empty(0), np.empty(0)
    if not (p_any and r_any):
        src = p if p_any else r
        inf = np.full(int(surface_voxels(src).sum()), np.inf)
        return (inf, np.empty(0)) if p_any else (np.empty(0), inf)

    # Cropping to the bounding box of the union is exact: everything outside is background,
    # which is also what the erosion assumes outside the image, and every surface voxel (the
    # targets of the distance transform) lies inside the box.
    box = _union_bbox(p, r)
    p, r = p[box], r[box]
    sp_pred, sp_ref = surface_voxels(p), surface_voxels(r)
    # EDT measures the distance to the nearest zero, so the surface is the zero set.
    dist_to_ref = ndimage.distance_transform_edt(~sp_ref, sampling=sp)
    dist_to_pred = ndimage.distance_transform_edt(~sp_pred, sampling=sp)
    return dist_to_ref[sp_pred].astype(np.float64), dist_to_pred[sp_ref].astype(np.float64)
