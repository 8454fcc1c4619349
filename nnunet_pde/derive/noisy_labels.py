"""Noisy training labels: ``nnunet-pde derive noisy-labels``.

:func:`derive_noisy_labels` writes a NEW nnU-Net v2 raw dataset from an existing one whose
training labels (``labelsTr``) are corrupted in a controlled, recorded way, while the clean
labels are kept beside them in ``labelsTr_clean`` for evaluation. Images, test images and
test labels are copied unchanged; the source dataset is only read.

Modes (``magnitude_mm`` is in mm everywhere):

``erode`` / ``dilate``
    Systematic (biased) error: the boundary of each selected structure moves inward /
    outward by ``magnitude_mm`` (Euclidean, spacing-aware; see :func:`morph_mask`).
``random-morph``
    Unbiased error: per case, erosion or dilation (sign drawn 50/50) by ``magnitude_mm``.
``jitter``
    Smooth boundary jitter: a random displacement field (white noise per axis, Gaussian
    smoothed with a standard deviation of ``smoothness_mm``, scaled so that its longest
    displacement near the selected structures, within ``magnitude_mm`` + one voxel of their
    boundaries, is ``magnitude_mm``) warps the label map (nearest-neighbour).
``drop-components``
    Connected components (full connectivity, 26 in 3-D) of each selected structure whose
    equivalent-sphere diameter ``(6 V / pi) ** (1/3)`` is <= ``magnitude_mm`` are removed.
``add-blobs``
    ``blobs`` spurious balls of diameter ``magnitude_mm`` per case, each painted with a
    randomly chosen selected label / region, centred on a random voxel of the body
    (:func:`body_mask`).

Multi-label maps:

* **label datasets** (``dataset.json`` labels are integers, e.g. LiTS liver 1, tumour 2):
  each selected label's mask is transformed. Voxels a label loses take the label of the
  nearest voxel outside that label's clean mask (so eroding the liver next to a tumour
  leaves no background gap); the losses are applied label by label from the last label of
  ``dataset.json`` to the first, reading the map as corrected so far, so that eroding
  liver *and* tumour shrinks the tumour into the liver instead of swapping a shell of the
  two. Voxels a label gains then overwrite what was there, in ``dataset.json`` order (a
  later label wins).
* **region datasets** (list values and ``regions_class_order``, e.g. BraTS whole tumour /
  tumour core / enhancing tumour): every selected region mask gets the same transformation
  (same sign, same field), each region is intersected with every region that contains it
  (containment of the label-value sets: WT >= TC >= ET for BraTS), and the label map is
  recomposed as nnU-Net does for predictions (regions painted in order with the values of
  ``regions_class_order``); voxels whose region membership did not change keep their
  value.
* The ``ignore`` label is never changed, and no structure grows into it.

Randomness: the corrupted cases are the first ``round(fraction * n)`` (at least 1) of a
permutation of the sorted case ids drawn from ``seed`` (so the subsets for growing
fractions are nested); each case's own draws (sign, field seed, blob centres) come from a
generator seeded with ``(seed, crc32(case id))``. They do not depend on the case order, the
fraction or the magnitude, so a magnitude sweep with one seed scales the same fields and
keeps the same signs. The same arguments give a byte-identical dataset.

Arrays are in numpy axis order (z, y, x for 3-D), spacings in mm along those axes
(SimpleITK's (x, y, z) order is reversed once, on reading).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.files import read_image, read_json, write_image, write_json
from nnunet_pde.folders import DATASET_FOLDER, find_raw_dataset

__all__ = [
    "CLEAN_LABELS_DIR",
    "DERIVED_JSON",
    "MODES",
    "Structure",
    "body_mask",
    "default_name",
    "derive_noisy_labels",
    "jitter_field",
    "morph_mask",
    "read_derived_info",
    "structures_from_dataset_json",
]

#: Record of the derivation, written into the derived dataset's folder.
DERIVED_JSON = "nnunet_pde_derived.json"
#: Folder of the untouched source training labels in the derived dataset.
CLEAN_LABELS_DIR = "labelsTr_clean"
#: The corruption modes.
MODES: tuple[str, ...] = (
    "erode",
    "dilate",
    "random-morph",
    "jitter",
    "drop-components",
    "add-blobs",
)
KIND = "noisy-labels"
FORMAT_VERSION = 1

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: Smoothing (voxels) of the mask whose gradient gives the boundary normals.
_NORMAL_SIGMA_VOXELS = 1.0
#: Boundary points whose tangent planes are averaged per distance estimate.
_PLANE_NEIGHBOURS = 8


# --------------------------------------------------------------------------- labels/regions


@dataclass(frozen=True)
class Structure:
    """A label or region of ``dataset.json`` that can be corrupted.

    Attributes
    ----------
    name
        Its key in ``dataset.json["labels"]``, e.g. ``"liver"`` or ``"tumor core"``.
    values
        Label values whose union is its mask (nnU-Net: ``isin(seg, values)``).
    paint
        Value written for it into a label map: the label value, or for a region its entry
        of ``regions_class_order``.
    """

    name: str
    values: tuple[int, ...]
    paint: int

    def mask(self, seg: np.ndarray) -> np.ndarray:
        """Binary mask of this structure in a label map."""
        if len(self.values) == 1:
            return seg == self.values[0]
        return np.isin(seg, self.values)


@dataclass(frozen=True)
class _Scheme:
    structures: tuple[Structure, ...]
    regions: bool
    ignore: int | None

    def ancestors(self, s: Structure) -> list[Structure]:
        """Structures whose value set strictly contains ``s``'s (regions containing it)."""
        own = set(s.values)
        return [o for o in self.structures if own < set(o.values)]


def structures_from_dataset_json(
    dataset_json: Mapping[str, Any],
) -> tuple[list[Structure], bool, int | None]:
    """Foreground structures of a ``dataset.json`` as nnU-Net's ``LabelManager`` sees them.

    Parameters
    ----------
    dataset_json
        The parsed ``dataset.json``.

    Returns
    -------
    (structures, regions, ignore_label)
        ``structures`` in file order without ``background`` and ``ignore``; ``regions`` is
        True when a value is a list of more than one label (region-based training, which
        needs ``regions_class_order``); ``ignore_label`` is ``labels["ignore"]`` or None.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError("dataset.json has no 'labels' mapping (name -> value or list of values)")
    regions = any(isinstance(v, list | tuple) and len(v) > 1 for v in labels.values())
    ignore = labels.get("ignore")
    if ignore is not None and (isinstance(ignore, list | tuple | bool) or int(ignore) != ignore):
        raise ValueError(f"dataset.json: the ignore label must be an integer, got {ignore!r}")
    entries = []
    for name, value in labels.items():
        if name == "ignore":
            continue
        values = tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)
        if not values:
            raise ValueError(f"dataset.json label '{name}' has an empty list of values")
        if name == "background" or set(values) == {0}:
            continue
        entries.append((str(name), values))
    if not entries:
        raise ValueError("dataset.json declares no foreground label or region")
    if regions:
        order = dataset_json.get("regions_class_order")
        if not isinstance(order, list | tuple) or len(order) != len(entries):
            raise ValueError(
                "dataset.json declares regions (list values) but its regions_class_order "
                f"({order!r}) does not have one value per region ({len(entries)})"
            )
        structures = [Structure(n, v, int(p)) for (n, v), p in zip(entries, order, strict=True)]
    else:
        structures = [Structure(n, v, v[0]) for n, v in entries]
    return structures, regions, None if ignore is None else int(ignore)


def _select(
    scheme: _Scheme, labels: str | int | Iterable[str | int] | None
) -> tuple[Structure, ...]:
    """The structures named by ``labels`` (names or values), in ``dataset.json`` order."""
    if labels is None:
        return scheme.structures
    items = [labels] if isinstance(labels, str | Integral) else list(labels)
    if not items:
        raise ValueError("labels is empty; pass None to corrupt every foreground label/region")
    what = "region" if scheme.regions else "label"
    valid = ", ".join(f"'{s.name}' ({s.paint})" for s in scheme.structures)
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | Integral):
            raise ValueError(f"labels must be names or integer values; got {item!r}")
        match = None
        text = str(item).strip()
        if isinstance(item, str):
            exact = [s for s in scheme.structures if s.name == text]
            folded = [s for s in scheme.structures if s.name.lower() == text.lower()]
            match = exact[0] if exact else (folded[0] if len(folded) == 1 else None)
        if match is None and re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
            if scheme.ignore is not None and value == scheme.ignore:
                raise ValueError(f"label {value} is the ignore label, which is never changed")
            hits = [s for s in scheme.structures if s.paint == value]
            match = hits[0] if len(hits) == 1 else None
        if match is None:
            if text.lower() == "ignore" and scheme.ignore is not None:
                raise ValueError("the ignore label is never changed; it cannot be selected")
            how = "regions_class_order value" if scheme.regions else "value"
            raise ValueError(
                f"unknown {what} {item!r} in labels; this dataset has {valid} (name or {how})"
            )
        chosen.add(match.name)
    return tuple(s for s in scheme.structures if s.name in chosen)


# --------------------------------------------------------------------------- transforms


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


def _near_boundaries(masks: Iterable[np.ndarray], spacing: np.ndarray, reach_mm: float):
    """Voxels within ``reach_mm`` of the boundary of any of ``masks`` (None if none has one)."""
    surface = None
    for m in masks:
        inner = m & ~ndimage.binary_erosion(m, border_value=1)
        outer = ndimage.binary_dilation(m) & ~m
        surface = (inner | outer) if surface is None else (surface | inner | outer)
    if surface is None or not surface.any():
        return None
    return ndimage.distance_transform_edt(~surface, sampling=spacing) <= reach_mm


def _warp(seg: np.ndarray, field_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``seg(x + u(x))`` with nearest-neighbour interpolation; edges repeat outward."""
    grid = np.indices(seg.shape, dtype=np.float32)
    coords = grid + field_mm / spacing.astype(np.float32).reshape((-1,) + (1,) * seg.ndim)
    return ndimage.map_coordinates(seg, coords, order=0, mode="nearest")


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def _ball(shape: Sequence[int], spacing: np.ndarray, centre: Sequence[int], radius_mm: float):
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


# --------------------------------------------------------------------------- one case


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(case_id.encode())]))


def _corrupted_cases(case_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    keys = sorted(case_ids)
    n = max(1, min(len(keys), int(math.floor(round(fraction * len(keys), 9) + 0.5))))
    order = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(b"cases")]))
    return sorted(keys[i] for i in order.permutation(len(keys))[:n])


def _compose_labels(
    seg: np.ndarray,
    spacing: np.ndarray,
    new: Mapping[str, np.ndarray],
    selected: Sequence[Structure],
    ignore: np.ndarray | None,
) -> np.ndarray:
    out = seg.copy()
    usable = np.ones(seg.shape, dtype=bool) if ignore is None else ~ignore
    for s in reversed(selected):  # losses: last label first, reading the map corrected so far
        clean = s.mask(seg)
        lost = clean & ~new[s.name]
        if not lost.any():
            continue
        source = ~clean & usable
        if not source.any():
            out[lost] = 0
            continue
        _, idx = ndimage.distance_transform_edt(~source, sampling=spacing, return_indices=True)
        out[lost] = out[tuple(i[lost] for i in idx)]
    for s in selected:  # gains: dataset.json order, a later label wins
        gained = new[s.name] & ~s.mask(seg) & usable
        out[gained] = s.paint
    return out


def _compose_regions(
    seg: np.ndarray,
    scheme: _Scheme,
    new: Mapping[str, np.ndarray],
    ignore: np.ndarray | None,
) -> np.ndarray:
    masks = {s.name: new[s.name] if s.name in new else s.mask(seg) for s in scheme.structures}
    if ignore is not None:
        masks = {k: v & ~ignore for k, v in masks.items()}
    # Nesting: outer regions first, so that a chain WT >= TC >= ET propagates.
    for s in sorted(scheme.structures, key=lambda s: -len(set(s.values))):
        for a in scheme.ancestors(s):
            masks[s.name] &= masks[a.name]
    changed = np.zeros(seg.shape, dtype=bool)
    for s in scheme.structures:
        changed |= masks[s.name] != s.mask(seg)
    painted = np.zeros_like(seg)
    for s in scheme.structures:
        painted[masks[s.name]] = s.paint
    out = seg.copy()
    out[changed] = painted[changed]
    return out


def _r(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def _corrupt(
    seg: np.ndarray,
    spacing: np.ndarray,
    scheme: _Scheme,
    selected: Sequence[Structure],
    settings: Mapping[str, Any],
    rng: np.random.Generator,
    image0: Callable[[], np.ndarray] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Corrupt one label map; returns the new map and every sampled parameter."""
    mode, k = settings["mode"], settings["magnitude_mm"]
    ignore = None if scheme.ignore is None else seg == scheme.ignore
    if ignore is not None and not ignore.any():
        ignore = None
    record: dict[str, Any] = {}
    new: dict[str, np.ndarray] = {}
    if mode in ("erode", "dilate", "random-morph"):
        if mode == "random-morph":
            sign = 1 if int(rng.integers(0, 2)) == 1 else -1
        else:
            sign = -1 if mode == "erode" else 1
        record["sign"] = sign
        record["operation"] = "dilate" if sign > 0 else "erode"
        record["displacement_mm"] = sign * k
        for s in selected:
            new[s.name] = morph_mask(s.mask(seg), spacing, sign * k)
    elif mode == "jitter":
        field_seed = int(rng.integers(0, 2**31 - 1))
        near = _near_boundaries((s.mask(seg) for s in selected), spacing, k + float(spacing.max()))
        field = jitter_field(seg.shape, spacing, k, settings["smoothness_mm"], field_seed, near)
        length = np.sqrt((field.astype(np.float64) ** 2).sum(0))
        record["field_seed"] = field_seed
        record["field_max_mm"] = _r(length.max() if near is None else length[near].max())
        record["field_max_image_mm"] = _r(length.max())
        warped = _warp(seg, field, spacing)
        for s in selected:
            new[s.name] = s.mask(warped)
    elif mode == "drop-components":
        dropped = []
        voxel_volume = float(np.prod(spacing))
        for s in selected:
            mask = s.mask(seg)
            lab, n = _components(mask)
            if n == 0:
                new[s.name] = mask
                continue
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            volumes = sizes * voxel_volume
            diameters = np.cbrt(6.0 * volumes / math.pi)
            small = np.nonzero(diameters <= k + 1e-9)[0]
            small = small[small > 0]
            centroids = ndimage.center_of_mass(mask, lab, small) if small.size else []
            for c, centroid in zip(small, centroids, strict=True):
                dropped.append(
                    {
                        "structure": s.name,
                        "voxels": int(sizes[c]),
                        "volume_mm3": _r(volumes[c]),
                        "diameter_mm": _r(diameters[c]),
                        "centroid_voxel": [_r(x, 2) for x in centroid],
                    }
                )
            new[s.name] = mask & ~np.isin(lab, small)
        record["dropped_components"] = dropped
    elif mode == "add-blobs":
        assert image0 is not None
        image = image0()
        if image.shape != seg.shape:
            raise ValueError(
                f"channel 0 image has shape {image.shape} but the label map {seg.shape}"
            )
        body = body_mask(image)
        candidates = np.flatnonzero(body)
        out = seg.copy()
        blobs = []
        for _ in range(settings["blobs"]):
            centre = np.unravel_index(int(candidates[rng.integers(0, candidates.size)]), seg.shape)
            s = selected[int(rng.integers(0, len(selected)))]
            ball = _ball(seg.shape, spacing, centre, k / 2.0)
            if ignore is not None:
                ball &= ~ignore
            out[ball] = s.paint
            blobs.append(
                {
                    "centre_voxel": [int(c) for c in centre],
                    "structure": s.name,
                    "value": int(s.paint),
                    "diameter_mm": _r(k),
                    "voxels": int(ball.sum()),
                }
            )
        record["body_voxels"] = int(candidates.size)
        record["blobs"] = blobs
        return out, record
    else:  # pragma: no cover - validated before
        raise ValueError(f"unknown mode {mode!r}")
    if scheme.regions:
        out = _compose_regions(seg, scheme, new, ignore)
    else:
        out = _compose_labels(seg, spacing, new, selected, ignore)
    return out, record


def _change_stats(
    clean: np.ndarray, noisy: np.ndarray, spacing: np.ndarray, scheme: _Scheme
) -> dict[str, Any]:
    voxel_volume = float(np.prod(spacing))
    per = {}
    for s in scheme.structures:
        a, b = s.mask(clean), s.mask(noisy)
        n_a, n_b = int(a.sum()), int(b.sum())
        per[s.name] = {
            "voxels_clean": n_a,
            "voxels_noisy": n_b,
            "voxels_added": int((b & ~a).sum()),
            "voxels_removed": int((a & ~b).sum()),
            "volume_clean_mm3": _r(n_a * voxel_volume),
            "volume_noisy_mm3": _r(n_b * voxel_volume),
            "volume_change_mm3": _r((n_b - n_a) * voxel_volume),
        }
    return {"voxels_changed": int((clean != noisy).sum()), "structures": per}


def label_damage(cases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """How much of each label/region the corruption changed, over the corrupted cases.

    Per structure: ``fraction_changed`` (voxels added + removed over its clean voxels),
    ``volume_ratio`` (noisy over clean voxels), ``cases_emptied`` (present in the clean
    label, absent in the noisy one) of ``cases_present``. ``warnings`` names every structure
    the corruption destroys rather than perturbs: emptied in some case, or changed by more
    than its own clean volume.
    """
    per: dict[str, dict[str, Any]] = {}
    for record in cases.values():
        for name, st in (record.get("structures") or {}).items():
            d = per.setdefault(
                name,
                {"voxels_clean": 0, "voxels_noisy": 0, "voxels_changed": 0,
                 "cases_present": 0, "cases_emptied": 0},
            )
            d["voxels_clean"] += st["voxels_clean"]
            d["voxels_noisy"] += st["voxels_noisy"]
            d["voxels_changed"] += st["voxels_added"] + st["voxels_removed"]
            if st["voxels_clean"] > 0:
                d["cases_present"] += 1
                d["cases_emptied"] += st["voxels_noisy"] == 0
    warnings = []
    for name, d in per.items():
        clean = max(d["voxels_clean"], 1)
        d["fraction_changed"] = _r(d["voxels_changed"] / clean)
        d["volume_ratio"] = _r(d["voxels_noisy"] / clean)
        if d["cases_emptied"]:
            warnings.append(
                f"'{name}' emptied in {d['cases_emptied']} of {d['cases_present']} case(s)"
            )
        elif d["fraction_changed"] > 1:
            warnings.append(
                f"'{name}' changed by {100 * d['fraction_changed']:.0f}% of its clean volume "
                f"(noisy/clean volume {d['volume_ratio']:.3g})"
            )
    return {"structures": per, "warnings": warnings}


# --------------------------------------------------------------------------- files


def _read_image(path: Path):
    img = read_image(path, ValueError)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel")
    return img


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_derived_info(dataset_folder: str | os.PathLike[str]) -> dict | None:
    """The parsed :data:`DERIVED_JSON` of a dataset folder, or None if it has none.

    Raises
    ------
    ValueError
        If the file exists but is not a JSON object.
    """
    path = Path(dataset_folder) / DERIVED_JSON
    if not path.is_file():
        return None
    content = read_json(path, ValueError)
    if not isinstance(content, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return content


def _resolve_raw_root(raw_root: str | os.PathLike[str] | None, source: object) -> Path:
    if raw_root is not None:
        return Path(raw_root)
    env = os.environ.get("nnUNet_raw")
    if env:
        return Path(env)
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        return Path(source).resolve().parent
    raise ValueError(
        'no nnUNet_raw folder: pass --raw DIR or set nnUNet_raw (eval "$(nnunet-pde '
        'env)")'
    )


def _label_files(folder: Path, file_ending: str) -> dict[str, Path]:
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)
    }


def _format_mm(value: float) -> str:
    text = f"{value:g}"
    return text.replace(".", "p").replace("-", "m").replace("+", "")


def default_name(source_name: str, mode: str, magnitude_mm: float) -> str:
    """``<source>Noisy<Mode><magnitude>mm``, filename-safe, e.g. ``SyntheticBraTSNoisyErode2mm``."""
    camel = "".join(part.capitalize() for part in mode.split("-"))
    name = f"{source_name}Noisy{camel}{_format_mm(magnitude_mm)}mm"
    return re.sub(r"[^A-Za-z0-9_-]", "", name)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _positive(name: str, value: object, unit: str = " mm") -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise NnunetPdeError(f"must be a finite number; got {value!r}", name)
    if value <= 0:
        raise NnunetPdeError(f"must be > 0{unit}; got {value!r}", name)
    return float(value)


def _validate_parameters(
    dataset_id, mode, magnitude_mm, fraction, seed, name, smoothness_mm, blobs, progress
) -> tuple[int, str, float, float, int, float, int]:
    if not _is_int(dataset_id) or not 1 <= dataset_id <= 999:
        raise NnunetPdeError(
            f"the dataset id must be an integer from 1 to 999 (nnU-Net uses 3 digits); "
            f"got {dataset_id!r}",
            "--id",
        )
    if mode not in MODES:
        raise NnunetPdeError(f"must be one of {', '.join(MODES)}; got {mode!r}", "--mode")
    if isinstance(magnitude_mm, Real) and not isinstance(magnitude_mm, bool) and magnitude_mm == 0:
        raise NnunetPdeError(
            "--magnitude must be > 0 mm: a 0 mm corruption is the source dataset itself (use it as "
            "the clean baseline)"
        )
    magnitude_mm = _positive("--magnitude", magnitude_mm)
    if (
        not isinstance(fraction, Real)
        or isinstance(fraction, bool)
        or math.isnan(fraction)
        or not 0 < fraction <= 1
    ):
        raise NnunetPdeError(
            f"must be in (0, 1] (the share of training cases to corrupt); got {fraction!r}",
            "--fraction",
        )
    if not _is_int(seed) or seed < 0:
        raise NnunetPdeError(f"must be an integer >= 0; got {seed!r}", "--seed")
    if name is not None and (not isinstance(name, str) or not _NAME_PATTERN.match(name)):
        raise NnunetPdeError(
            "must be letters, digits, '_' or '-' (starting with a letter or digit); "
            f"got {name!r}",
            "--name",
        )
    smoothness_mm = _positive("--smoothness", smoothness_mm)
    if not _is_int(blobs) or blobs < 1:
        raise NnunetPdeError(f"must be an integer >= 1; got {blobs!r}", "--blobs")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None; got {progress!r}")
    return (
        int(dataset_id),
        str(mode),
        magnitude_mm,
        float(fraction),
        int(seed),
        smoothness_mm,
        int(blobs),
    )


def _targets_to_replace(
    raw_root: Path, dataset_id: int, folder_name: str, source: Path, overwrite: bool
) -> list[Path]:
    """Existing folders with the target id; refuse unless ``overwrite`` (and never the source)."""
    if raw_root.exists() and not raw_root.is_dir():
        raise NnunetPdeError(f"{raw_root} exists and is not a folder", "--raw")
    if not raw_root.is_dir():
        return []
    prefix = f"Dataset{dataset_id:03d}_"
    existing = sorted(
        p for p in raw_root.iterdir() if p.name.startswith(prefix) or p.name == folder_name
    )
    if not existing:
        return []
    names = ", ".join(p.name for p in existing)
    if not overwrite:
        raise FileExistsError(
            f"dataset id {dataset_id} is already used in {raw_root} ({names}); pass "
            "--overwrite to replace it, or choose another --id"
        )
    src = source.resolve()
    for p in existing:
        r = p.resolve()
        if r == src or r in src.parents or src in r.parents:
            raise ValueError(f"refusing to overwrite {p}: it is (or holds) the source dataset")
        if not p.is_dir():
            raise FileExistsError(f"{p} exists and is not a folder; remove it yourself")
        if p.name != folder_name and not (p / DERIVED_JSON).is_file():
            raise FileExistsError(
                f"dataset id {dataset_id} is used by {p.name}, which was not derived by "
                f"nnunet-pde; overwrite only replaces {folder_name} or derived datasets, so "
                "choose another id"
            )
    return existing


def _command_line(source: object, settings: Mapping[str, Any]) -> str:
    parts = [
        "nnunet-pde",
        "derive",
        KIND,
        str(source),
        "--id",
        str(settings["dataset_id"]),
        "--name",
        settings["name"],
        "--mode",
        settings["mode"],
        "--magnitude",
        f"{settings['magnitude_mm']:g}",
        "--fraction",
        f"{settings['fraction']:g}",
        "--seed",
        str(settings["seed"]),
    ]
    if settings["labels_given"]:
        parts += ["--labels", *settings["labels"]]
    if settings["mode"] == "jitter":
        parts += ["--smoothness", f"{settings['smoothness_mm']:g}"]
    if settings["mode"] == "add-blobs":
        parts += ["--blobs", str(settings["blobs"])]
    return shlex.join(parts)


def derive_noisy_labels(
    source: int | str | os.PathLike[str],
    dataset_id: int,
    *,
    mode: str,
    magnitude_mm: float,
    fraction: float = 1.0,
    seed: int = 0,
    name: str | None = None,
    raw_root: str | os.PathLike[str] | None = None,
    labels: str | int | Iterable[str | int] | None = None,
    smoothness_mm: float = 10.0,
    blobs: int = 1,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a copy of an nnU-Net raw dataset whose training labels are corrupted.

    Parameters
    ----------
    source
        The source dataset: an id (``501`` or ``"501"``), a folder name
        (``"Dataset501_SyntheticBraTS"``) in ``raw_root``, or the path of a raw dataset
        folder. Only read.
    dataset_id
        nnU-Net id of the new dataset, 1 to 999, different from the source's.
    mode
        One of :data:`MODES` (see the module docstring).
    magnitude_mm
        > 0, in mm: boundary displacement (``erode``, ``dilate``, ``random-morph``), largest
        displacement (``jitter``), largest equivalent-sphere diameter removed
        (``drop-components``), blob diameter (``add-blobs``).
    fraction
        Share of the training cases to corrupt, in (0, 1]; ``round(fraction * n)`` cases,
        at least one, chosen by ``seed``. The others are copied unchanged.
    seed
        >= 0; the same arguments give a byte-identical dataset.
    name
        Name of the new dataset; default ``<source name>Noisy<Mode><magnitude>mm``, e.g.
        ``SyntheticBraTSNoisyErode2mm``.
    raw_root
        The ``nnUNet_raw`` folder the source id / name is looked up in and the new dataset
        is written to; default ``$nnUNet_raw`` (or, for a source given as a path, its parent).
    labels
        Labels / regions to corrupt, by name (``"liver"``, ``"tumor core"``) or value (a
        label value; for regions the ``regions_class_order`` value); default every
        foreground label or region. Never the ignore label.
    smoothness_mm
        ``jitter``: standard deviation (mm) of the Gaussian that smooths the field.
    blobs
        ``add-blobs``: balls per corrupted case.
    overwrite
        Replace an existing dataset with ``dataset_id`` (the folder of the same name, or one
        that was itself derived by nnunet-pde). The source is never replaced.
    progress
        Called with a short message after each training case.

    Returns
    -------
    pathlib.Path
        ``raw_root / f"Dataset{dataset_id:03d}_{name}"``, holding ``imagesTr``,
        ``imagesTs`` and ``labelsTs`` (copied if present), ``labelsTr`` (corrupted),
        :data:`CLEAN_LABELS_DIR` (the source's labels), the source's ``dataset.json`` and
        :data:`DERIVED_JSON` (all settings and every case's sampled parameters and volume
        changes).

    Raises
    ------
    ValueError
        A parameter is invalid (nothing is written).
    FileNotFoundError
        The source, its ``dataset.json``, ``labelsTr`` or ``imagesTr`` is missing.
    FileExistsError
        The target id is in use and ``overwrite`` is false.
    """
    dataset_id, mode, magnitude_mm, fraction, seed, smoothness_mm, blobs = _validate_parameters(
        dataset_id, mode, magnitude_mm, fraction, seed, name, smoothness_mm, blobs, progress
    )
    raw_root = _resolve_raw_root(raw_root, source)
    src = find_raw_dataset(source, raw_root)
    dj_path = src / "dataset.json"
    if not dj_path.is_file():
        raise FileNotFoundError(f"{src} has no dataset.json; is it an nnU-Net raw dataset?")
    dataset_json = read_json(dj_path, ValueError)
    if "dataset" in dataset_json:
        raise ValueError(
            f"{dj_path} lists its files explicitly (the 'dataset' key); only datasets with "
            "imagesTr/labelsTr folders are supported"
        )
    file_ending = dataset_json.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending:
        raise ValueError(f"{dj_path} has no 'file_ending'")
    structures, regions, ignore = structures_from_dataset_json(dataset_json)
    scheme = _Scheme(tuple(structures), regions, ignore)
    selected = _select(scheme, labels)
    for sub in ("imagesTr", "labelsTr"):
        if not (src / sub).is_dir():
            raise FileNotFoundError(f"{src} has no {sub} folder")
    clean_files = _label_files(src / "labelsTr", file_ending)
    if not clean_files:
        raise FileNotFoundError(f"no *{file_ending} training labels in {src / 'labelsTr'}")
    info = read_derived_info(src)
    if info is not None and info.get("kind") == KIND:
        raise ValueError(
            f"{src} is itself a noisy-labels dataset; derive from the original dataset, or "
            f"its {CLEAN_LABELS_DIR} would hold noisy labels"
        )
    match = DATASET_FOLDER.match(src.name)
    source_id = int(match.group(1)) if match else None
    source_name = match.group(2) if match else re.sub(r"[^A-Za-z0-9_-]", "", src.name)
    if source_id == dataset_id:
        raise ValueError(
            f"the new dataset needs its own id; {dataset_id} is the source's ({src.name})"
        )
    name = default_name(source_name or "Dataset", mode, magnitude_mm) if name is None else name
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"cannot make a valid dataset name from {name!r}; pass name=")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    to_replace = _targets_to_replace(raw_root, dataset_id, folder_name, src, overwrite)
    case_ids = sorted(clean_files)
    corrupted = set(_corrupted_cases(case_ids, fraction, seed))
    if mode == "add-blobs":
        missing = [
            c
            for c in sorted(corrupted)
            if not (src / "imagesTr" / f"{c}_0000{file_ending}").is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"add-blobs needs channel 0 of each corrupted case; missing "
                f"{src / 'imagesTr'}/{missing[0]}_0000{file_ending}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )

    from nnunet_pde import __version__

    settings: dict[str, Any] = {
        "dataset_id": dataset_id,
        "name": name,
        "mode": mode,
        "magnitude_mm": magnitude_mm,
        "fraction": fraction,
        "seed": seed,
        "labels": [s.name for s in selected],
        "labels_given": labels is not None,
        "smoothness_mm": smoothness_mm,
        "blobs": blobs,
    }
    target = raw_root / folder_name
    raw_root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    # Hidden names that do not start with "Dataset", so nnU-Net never mistakes them for one.
    tmp = raw_root / f".{folder_name}.tmp-{token}"
    olds = [raw_root / f".{p.name}.old-{token}" for p in to_replace]
    moved: list[tuple[Path, Path]] = []
    done = False
    try:
        tmp.mkdir()
        shutil.copytree(src / "imagesTr", tmp / "imagesTr", copy_function=shutil.copy2)
        for sub in ("imagesTs", "labelsTs"):
            if (src / sub).is_dir():
                shutil.copytree(src / sub, tmp / sub, copy_function=shutil.copy2)
        (tmp / "labelsTr").mkdir()
        (tmp / CLEAN_LABELS_DIR).mkdir()
        cases: dict[str, Any] = {}
        hashes: dict[str, str] = {}
        n_changed = 0
        for n, case_id in enumerate(case_ids, start=1):
            path = clean_files[case_id]
            hashes[case_id] = _sha256(path)
            shutil.copy2(path, tmp / CLEAN_LABELS_DIR / path.name)
            if case_id not in corrupted:
                shutil.copy2(path, tmp / "labelsTr" / path.name)
                cases[case_id] = {"corrupted": False}
                message = "copied (not selected)"
            else:
                cases[case_id], changed = _corrupt_file(
                    case_id,
                    path,
                    tmp / "labelsTr" / path.name,
                    src,
                    file_ending,
                    scheme,
                    selected,
                    settings,
                    seed,
                )
                n_changed += changed > 0
                message = f"{mode}: {changed} voxels changed"
            if progress is not None:
                progress(f"[{n}/{len(case_ids)}] {case_id}: {message}")
        shutil.copy2(dj_path, tmp / "dataset.json")
        record = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "dataset_id": dataset_id,
            "name": name,
            "source": {
                "name": src.name,
                "dataset_id": source_id,
                "path": str(src.resolve()),
                "labelsTr_sha256": hashes,
            },
            "mode": mode,
            "magnitude_mm": magnitude_mm,
            "fraction": fraction,
            "seed": seed,
            "labels": settings["labels"],
            "label_type": "regions" if regions else "labels",
            "smoothness_mm": smoothness_mm,
            "blobs": blobs,
            "clean_labels": CLEAN_LABELS_DIR,
            "num_cases": len(case_ids),
            "num_corrupted": len(corrupted),
            "num_changed": int(n_changed),
            "corrupted_cases": sorted(corrupted),
            "label_damage": label_damage({c: cases[c] for c in sorted(corrupted)}),
            "created_by": {
                "tool": f"nnunet-pde {KIND}",
                "version": __version__,
                "command": _command_line(source, settings),
            },
            "cases": cases,
        }
        write_json(tmp / DERIVED_JSON, record, indent=1)
        for p, old in zip(to_replace, olds, strict=True):
            p.rename(old)
            moved.append((p, old))
        tmp.rename(target)
        done = True
    except BaseException:
        if not done:  # put back what was moved aside
            for p, old in reversed(moved):
                if old.exists() and not p.exists():
                    old.rename(p)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if done:
            for old in olds:
                shutil.rmtree(old, ignore_errors=True)
    return target


def _corrupt_file(
    case_id: str,
    path: Path,
    out_path: Path,
    src: Path,
    file_ending: str,
    scheme: _Scheme,
    selected: Sequence[Structure],
    settings: Mapping[str, Any],
    seed: int,
) -> tuple[dict[str, Any], int]:
    import SimpleITK as sitk

    img = _read_image(path)
    seg = sitk.GetArrayFromImage(img)
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.array_equal(seg, np.round(seg)):
            raise ValueError(f"{path} is not an integer label map (dtype {seg.dtype})")
    spacing = np.asarray(img.GetSpacing()[::-1], dtype=np.float64)

    def image0() -> np.ndarray:
        ch0 = _read_image(src / "imagesTr" / f"{case_id}_0000{file_ending}")
        return sitk.GetArrayFromImage(ch0)

    noisy, params = _corrupt(
        seg, spacing, scheme, selected, settings, _case_rng(seed, case_id), image0
    )
    if np.issubdtype(seg.dtype, np.integer):
        info = np.iinfo(seg.dtype)
        if noisy.min() < info.min or noisy.max() > info.max:
            raise ValueError(f"{path}: corrupted labels do not fit its data type {seg.dtype}")
    stats = _change_stats(seg, noisy, spacing, scheme)
    if stats["voxels_changed"]:
        # origin, spacing, direction of the source label
        write_image(noisy.astype(seg.dtype, copy=False), out_path, reference=img)
    else:
        shutil.copy2(path, out_path)
    record = {
        "corrupted": True,
        "shape": [int(s) for s in seg.shape],
        "spacing_mm": [_r(s, 6) for s in spacing],
        **params,
        **stats,
    }
    return record, stats["voxels_changed"]
