"""Label corruptions of ``derive noisy-labels``: structures of a label map, transforms, one case.

Size (about 710 lines): the structures of a label map, the transforms that act on them and
the one-case corruption that combines them use one data model (``Structure``, ``LabelScheme``).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_pde.errors import NnunetPdeError

#: The corruption modes.
MODES: tuple[str, ...] = (
    "erode",
    "dilate",
    "random-morph",
    "jitter",
    "drop-components",
    "add-blobs",
)

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
class LabelScheme:
    """The structures of a dataset (labels or regions) and its ``ignore`` label value."""

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
        raise NnunetPdeError(
            "dataset.json has no 'labels' mapping (name -> value or list of values)"
        )
    regions = any(isinstance(v, list | tuple) and len(v) > 1 for v in labels.values())
    ignore = labels.get("ignore")
    if ignore is not None and (isinstance(ignore, list | tuple | bool) or int(ignore) != ignore):
        raise NnunetPdeError(f"dataset.json: the ignore label must be an integer, got {ignore!r}")
    entries = []
    for name, value in labels.items():
        if name == "ignore":
            continue
        values = tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)
        if not values:
            raise NnunetPdeError(f"dataset.json label '{name}' has an empty list of values")
        if name == "background" or set(values) == {0}:
            continue
        entries.append((str(name), values))
    if not entries:
        raise NnunetPdeError("dataset.json declares no foreground label or region")
    if regions:
        order = dataset_json.get("regions_class_order")
        if not isinstance(order, list | tuple) or len(order) != len(entries):
            raise NnunetPdeError(
                "dataset.json declares regions (list values) but its regions_class_order "
                f"({order!r}) does not have one value per region ({len(entries)})"
            )
        structures = [Structure(n, v, int(p)) for (n, v), p in zip(entries, order, strict=True)]
    else:
        structures = [Structure(n, v, v[0]) for n, v in entries]
    return structures, regions, None if ignore is None else int(ignore)


def select_structures(
    scheme: LabelScheme, labels: str | int | Iterable[str | int] | None
) -> tuple[Structure, ...]:
    """The structures named by ``labels`` (names or values), in ``dataset.json`` order."""
    if labels is None:
        return scheme.structures
    items = [labels] if isinstance(labels, str | Integral) else list(labels)
    if not items:
        raise NnunetPdeError("labels is empty; pass None to corrupt every foreground label/region")
    what = "region" if scheme.regions else "label"
    valid = ", ".join(f"'{s.name}' ({s.paint})" for s in scheme.structures)
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | Integral):
            raise NnunetPdeError(f"labels must be names or integer values; got {item!r}")
        match = None
        text = str(item).strip()
        if isinstance(item, str):
            exact = [s for s in scheme.structures if s.name == text]
            folded = [s for s in scheme.structures if s.name.lower() == text.lower()]
            match = exact[0] if exact else (folded[0] if len(folded) == 1 else None)
        if match is None and re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
            if scheme.ignore is not None and value == scheme.ignore:
                raise NnunetPdeError(f"label {value} is the ignore label, which is never changed")
            hits = [s for s in scheme.structures if s.paint == value]
            match = hits[0] if len(hits) == 1 else None
        if match is None:
            if text.lower() == "ignore" and scheme.ignore is not None:
                raise NnunetPdeError("the ignore label is never changed; it cannot be selected")
            how = "regions_class_order value" if scheme.regions else "value"
            raise NnunetPdeError(
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


def corruption_rng(seed: int, case_id: str) -> np.random.Generator:
    """The generator of one case's draws: ``(seed, crc32(case id))``, independent of order."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(case_id.encode())]))


def corrupted_cases(case_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The first ``round(fraction * n)`` (at least 1) of a seeded permutation, sorted.

    Nested: a larger fraction with the same seed selects a superset.
    """
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
    scheme: LabelScheme,
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


def rounded(x: float, digits: int = 4) -> float:
    """``x`` as a float rounded to ``digits`` decimals (the numbers of the record)."""
    return round(float(x), digits)


def corrupt_label_map(
    seg: np.ndarray,
    spacing: np.ndarray,
    scheme: LabelScheme,
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
    if mode in ("erode", "dilate", "random-morph"):
        new = _morph(seg, spacing, selected, mode, k, rng, record)
    elif mode == "jitter":
        new = _jitter(seg, spacing, selected, k, settings["smoothness_mm"], rng, record)
    elif mode == "drop-components":
        new = _drop_components(seg, spacing, selected, k, record)
    elif mode == "add-blobs":
        assert image0 is not None
        out = _add_blobs(
            seg, spacing, selected, k, settings["blobs"], image0(), ignore, rng, record
        )
        return out, record
    else:  # pragma: no cover - validated before
        raise NnunetPdeError(f"unknown mode {mode!r}")
    if scheme.regions:
        out = _compose_regions(seg, scheme, new, ignore)
    else:
        out = _compose_labels(seg, spacing, new, selected, ignore)
    return out, record


def _morph(
    seg: np.ndarray,
    spacing: np.ndarray,
    selected: Sequence[Structure],
    mode: str,
    k: float,
    rng: np.random.Generator,
    record: dict[str, Any],
) -> dict[str, np.ndarray]:
    """erode / dilate / random-morph: every selected mask moved by ``k`` mm (sign recorded)."""
    if mode == "random-morph":
        sign = 1 if int(rng.integers(0, 2)) == 1 else -1
    else:
        sign = -1 if mode == "erode" else 1
    record["sign"] = sign
    record["operation"] = "dilate" if sign > 0 else "erode"
    record["displacement_mm"] = sign * k
    return {s.name: morph_mask(s.mask(seg), spacing, sign * k) for s in selected}


def _jitter(
    seg: np.ndarray,
    spacing: np.ndarray,
    selected: Sequence[Structure],
    k: float,
    smoothness_mm: float,
    rng: np.random.Generator,
    record: dict[str, Any],
) -> dict[str, np.ndarray]:
    """jitter: the label map warped by a smooth random field of at most ``k`` mm."""
    field_seed = int(rng.integers(0, 2**31 - 1))
    near = _near_boundaries((s.mask(seg) for s in selected), spacing, k + float(spacing.max()))
    field = jitter_field(seg.shape, spacing, k, smoothness_mm, field_seed, near)
    length = np.sqrt((field.astype(np.float64) ** 2).sum(0))
    record["field_seed"] = field_seed
    record["field_max_mm"] = rounded(length.max() if near is None else length[near].max())
    record["field_max_image_mm"] = rounded(length.max())
    warped = _warp(seg, field, spacing)
    return {s.name: s.mask(warped) for s in selected}


def _drop_components(
    seg: np.ndarray,
    spacing: np.ndarray,
    selected: Sequence[Structure],
    k: float,
    record: dict[str, Any],
) -> dict[str, np.ndarray]:
    """drop-components: connected components of equivalent diameter <= ``k`` mm removed."""
    dropped = []
    new: dict[str, np.ndarray] = {}
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
                    "volume_mm3": rounded(volumes[c]),
                    "diameter_mm": rounded(diameters[c]),
                    "centroid_voxel": [rounded(x, 2) for x in centroid],
                }
            )
        new[s.name] = mask & ~np.isin(lab, small)
    record["dropped_components"] = dropped
    return new


def _add_blobs(
    seg: np.ndarray,
    spacing: np.ndarray,
    selected: Sequence[Structure],
    k: float,
    n_blobs: int,
    image: np.ndarray,
    ignore: np.ndarray | None,
    rng: np.random.Generator,
    record: dict[str, Any],
) -> np.ndarray:
    """add-blobs: ``n_blobs`` balls of diameter ``k`` mm painted inside the body of ``image``."""
    if image.shape != seg.shape:
        raise NnunetPdeError(
            f"channel 0 image has shape {image.shape} but the label map {seg.shape}"
        )
    body = body_mask(image)
    candidates = np.flatnonzero(body)
    out = seg.copy()
    blobs = []
    for _ in range(n_blobs):
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
                "diameter_mm": rounded(k),
                "voxels": int(ball.sum()),
            }
        )
    record["body_voxels"] = int(candidates.size)
    record["blobs"] = blobs
    return out


def change_stats(
    clean: np.ndarray, noisy: np.ndarray, spacing: np.ndarray, scheme: LabelScheme
) -> dict[str, Any]:
    """Voxels and volumes (mm^3) of every structure before and after, and voxels changed."""
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
            "volume_clean_mm3": rounded(n_a * voxel_volume),
            "volume_noisy_mm3": rounded(n_b * voxel_volume),
            "volume_change_mm3": rounded((n_b - n_a) * voxel_volume),
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
                {
                    "voxels_clean": 0,
                    "voxels_noisy": 0,
                    "voxels_changed": 0,
                    "cases_present": 0,
                    "cases_emptied": 0,
                },
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
        d["fraction_changed"] = rounded(d["voxels_changed"] / clean)
        d["volume_ratio"] = rounded(d["voxels_noisy"] / clean)
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
