"""Transforms of binary masks and label maps, in mm, that the label corruptions are made of.

:func:`morph_mask` moves a mask's boundary by a distance in mm (sub-voxel accurate, also on
anisotropic grids), :func:`jitter_field` draws a smooth random displacement field and
:func:`warp_labels` applies it, :func:`connected_components`, :func:`ball_mask` and
:func:`body_mask` give the pieces of ``drop-components`` and ``add-blobs``. Arrays are in
numpy axis order, spacings in mm along those axes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "ball_mask",
    "body_mask",
    "connected_components",
    "jitter_field",
    "morph_mask",
    "near_boundaries",
    "warp_labels",
]

#: Smoothing (voxels) of the mask whose gradient gives the boundary normals.
_NORMAL_SIGMA_VOXELS = 1.0
#: Boundary points whose tangent planes are averaged per distance estimate.
_PLANE_NEIGHBOURS = 8


def _expanded_box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(
        slice(max(0, s.start - m), min(n, s.stop + m))
        for s, m, n in zip(box, margin, mask.shape, strict=True)
    )


def _gradient(f: np.ndarray, spacing: np.ndarray) -> list[np.ndarray]:
    """``np.gradient`` per axis in 1/mm, zero along axes of length 1."""
    return [
        np.gradient(f, float(h), axis=a) if f.shape[a] > 1 else np.zeros_like(f)
        for a, h in enumerate(spacing)
    ]


def _boundary_points(m: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel boundary samples of a mask and their outward unit normals.

    A sample is the midpoint of two face-adjacent voxels of which one is in the mask; its
    normal is minus the gradient of the mask smoothed by one voxel (the axis direction
    where that gradient vanishes). Both in mm, shape ``(P, ndim)``.
    """
    ndim = m.ndim
    smooth = ndimage.gaussian_filter(m.astype(np.float32), _NORMAL_SIGMA_VOXELS, mode="nearest")
    grad = _gradient(smooth, spacing)
    points, normals = [], []
    for ax in range(ndim):
        if m.shape[ax] < 2:
            continue
        lo = tuple(slice(0, -1) if a == ax else slice(None) for a in range(ndim))
        hi = tuple(slice(1, None) if a == ax else slice(None) for a in range(ndim))
        idx = np.nonzero(m[lo] != m[hi])
        if not idx[0].size:
            continue
        p = np.stack(idx, axis=1).astype(np.float64)
        p[:, ax] += 0.5
        n = -np.stack([(g[lo][idx] + g[hi][idx]) / 2.0 for g in grad], axis=1).astype(np.float64)
        length = np.linalg.norm(n, axis=1)
        flat = length < 1e-6
        n[~flat] /= length[~flat, None]
        n[flat] = 0.0
        n[flat, ax] = np.where(m[lo][idx][flat], 1.0, -1.0)  # from the inside voxel outwards
        points.append(p * spacing)
        normals.append(n)
    if not points:
        return np.zeros((0, ndim)), np.zeros((0, ndim))
    return np.concatenate(points), np.concatenate(normals)


def _surface_distance(
    m: np.ndarray, spacing: np.ndarray, query: np.ndarray, edt: np.ndarray, inside: bool
) -> np.ndarray:
    """Sub-voxel distance (mm) from voxel centres ``query`` (index array ``(Q, ndim)``) to
    the boundary of ``m``, for voxels inside (``inside``) or outside the mask.

    The distance to the nearest voxel centre on the other side (``edt``) overestimates the
    distance to the boundary by up to one voxel, which biases a threshold at ``k`` mm by
    about half a voxel. Here the boundary is sampled at the midpoints between inside and
    outside voxels (:func:`_boundary_points`); a query point is projected onto the tangent
    plane of its nearest sample, and its distances to the tangent planes of the
    ``_PLANE_NEIGHBOURS`` samples nearest to that foot point are averaged (choosing the
    samples around the foot point, not around the query, keeps the staircase noise from
    biasing the estimate). The result is clipped to ``[edt - max spacing, edt]``.
    """
    pts, nrm = _boundary_points(m, spacing)
    if len(pts) == 0:
        return edt
    tree = cKDTree(pts)
    q = query.astype(np.float64) * spacing
    _, j0 = tree.query(q)
    s0 = np.einsum("qd,qd->q", q - pts[j0], nrm[j0])
    foot = q - s0[:, None] * nrm[j0]
    kn = min(_PLANE_NEIGHBOURS, len(pts))
    _, j = tree.query(foot, k=kn)
    j = np.asarray(j).reshape(len(q), kn)
    signed = np.einsum("qkd,qkd->qk", q[:, None, :] - pts[j], nrm[j]).mean(axis=1)
    dist = -signed if inside else signed
    return np.clip(dist, np.maximum(edt - float(spacing.max()), 0.0), edt)


def morph_mask(
    mask: np.ndarray, spacing: Sequence[float] | np.ndarray, distance_mm: float
) -> np.ndarray:
    """Move the boundary of a binary mask by ``distance_mm``: outward (dilation) if positive,
    inward (erosion) if negative.

    A voxel is removed by an erosion by ``k`` mm if its centre lies within ``k`` mm of the
    mask boundary, and added by a dilation if it lies outside within ``k`` mm. Distances are
    Euclidean in mm (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``),
    refined to sub-voxel accuracy near the threshold (:func:`_surface_distance`), so that
    a voxelised sphere of radius ``R`` becomes one of radius ``R -/+ k`` also on anisotropic
    grids. The image border is not a boundary (a structure cut by the field of view is not
    eroded from there).

    Parameters
    ----------
    mask
        Boolean array, numpy axis order.
    spacing
        Voxel size in mm per axis, same order.
    distance_mm
        Signed boundary displacement in mm.

    Returns
    -------
    numpy.ndarray
        New boolean mask of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = np.asarray(spacing, dtype=np.float64)
    k = abs(float(distance_mm))
    if k == 0.0 or not mask.any():
        return mask.copy()
    erode = distance_mm < 0
    hmax = float(spacing.max())
    if erode:
        margin = [1] * mask.ndim
    else:
        margin = [int(math.ceil((k + hmax) / h)) + 1 for h in spacing]
    box = _expanded_box(mask, margin)
    m = mask[box]
    side = m if erode else ~m
    if side.all():  # nothing on the other side (the mask fills the image, or is empty)
        return mask.copy()
    edt = ndimage.distance_transform_edt(side, sampling=spacing)
    flip = side & (edt <= k)  # the boundary distance is <= edt, so these are within k
    band = side & (edt > k) & (edt <= k + hmax)  # may or may not be within k
    if band.any():
        query = np.argwhere(band)
        est = _surface_distance(m, spacing, query, edt[band], inside=erode)
        flip[tuple(query.T)] = est <= k
    out = mask.copy()
    out[box] = (m & ~flip) if erode else (m | flip)
    return out


def jitter_field(
    shape: Sequence[int],
    spacing: Sequence[float] | np.ndarray,
    magnitude_mm: float,
    smoothness_mm: float,
    seed: int,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth random displacement field whose longest vector (within ``where``) is
    ``magnitude_mm`` long.

    Each component is white Gaussian noise smoothed with a Gaussian of standard deviation
    ``smoothness_mm`` (in mm, converted per axis with the spacing); the field is then scaled
    so that the largest Euclidean displacement among the voxels of ``where`` (default: the
    whole image) is ``magnitude_mm``. Axes of length 1 (2-D data stored as 3-D) get no
    displacement.

    Returns
    -------
    numpy.ndarray
        float32 ``(ndim, *shape)``, displacement in mm along each axis.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    field = rng.standard_normal((len(shape), *shape), dtype=np.float32)
    sigma = smoothness_mm / spacing
    for a in range(len(shape)):
        if shape[a] < 2:
            field[a] = 0.0
        else:
            field[a] = ndimage.gaussian_filter(field[a], sigma, mode="reflect")
    length = np.sqrt((field.astype(np.float64) ** 2).sum(axis=0))
    if where is not None and where.any():
        length = length[where]
    top = float(length.max())
    if top > 0:
        field *= np.float32(magnitude_mm / top)
    return field


def near_boundaries(
    masks: Iterable[np.ndarray], spacing: np.ndarray, reach_mm: float
) -> np.ndarray | None:
    """Voxels within ``reach_mm`` of the boundary of any of ``masks`` (None if none has one)."""
    surface = None
    for m in masks:
        inner = m & ~ndimage.binary_erosion(m, border_value=1)
        outer = ndimage.binary_dilation(m) & ~m
        surface = (inner | outer) if surface is None else (surface | inner | outer)
    if surface is None or not surface.any():
        return None
    return ndimage.distance_transform_edt(~surface, sampling=spacing) <= reach_mm


def warp_labels(seg: np.ndarray, field_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``seg(x + u(x))`` with nearest-neighbour interpolation; edges repeat outward."""
    grid = np.indices(seg.shape, dtype=np.float32)
    coords = grid + field_mm / spacing.astype(np.float32).reshape((-1,) + (1,) * seg.ndim)
    return ndimage.map_coordinates(seg, coords, order=0, mode="nearest")


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labelled connected components of ``mask`` (full connectivity: 26 in 3-D) and their number."""
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def ball_mask(
    shape: Sequence[int], spacing: np.ndarray, centre: Sequence[int], radius_mm: float
) -> np.ndarray:
    """Boolean ball of voxel centres within ``radius_mm`` of ``centre`` (always the centre)."""
    reach = [int(math.floor(radius_mm / h)) for h in spacing]
    box = tuple(
        slice(max(0, c - r), min(n, c + r + 1))
        for c, r, n in zip(centre, reach, shape, strict=True)
    )
    grids = np.ogrid[box]
    d2 = sum(((g - c) * h) ** 2 for g, c, h in zip(grids, centre, spacing, strict=True))
    out = np.zeros(tuple(shape), dtype=bool)
    out[box] = d2 <= radius_mm**2 + 1e-9
    return out


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def body_mask(image: np.ndarray) -> np.ndarray:
    """Where spurious blobs may be centred: the body in an image's first channel.

    Voxels above Otsu's threshold of the intensities (which separates air / outside from
    tissue for CT in HU as well as for MR with or without background noise), with enclosed
    holes filled (e.g. bowel gas, ventricles). The whole image if that is empty or the image
    is constant.
    """
    image = np.asarray(image)
    finite = np.isfinite(image)
    values = image[finite].astype(np.float64)
    if values.size == 0 or values.min() == values.max():
        return np.ones(image.shape, dtype=bool)
    body = finite & (image > _otsu_threshold(values))
    body = ndimage.binary_fill_holes(body)
    return body if body.any() else np.ones(image.shape, dtype=bool)
