"""Label corruptions of ``derive noisy-labels``: one case's label map, and what changed.

:func:`corrupt_label_map` applies one mode (:data:`MODES`) to the selected structures of a
label map (:mod:`nnunet_pde.derive.label_structures`), with the mask transforms of
:mod:`nnunet_pde.derive.mask_transforms`, and recomposes the map (label by label, or as
nested regions); :func:`change_stats` and :func:`label_damage` say what changed.
:func:`corruption_rng` and :func:`corrupted_cases` make every draw depend only on the seed
and the case id.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from nnunet_pde.derive.label_structures import LabelScheme, Structure
from nnunet_pde.derive.mask_transforms import (
    ball_mask,
    body_mask,
    connected_components,
    jitter_field,
    morph_mask,
    near_boundaries,
    warp_labels,
)
from nnunet_pde.errors import NnunetPdeError

__all__ = [
    "MODES",
    "change_stats",
    "corrupt_label_map",
    "corrupted_cases",
    "corruption_rng",
    "label_damage",
    "rounded",
]

#: The corruption modes.
MODES: tuple[str, ...] = (
    "erode",
    "dilate",
    "random-morph",
    "jitter",
    "drop-components",
    "add-blobs",
)


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
    near = near_boundaries((s.mask(seg) for s in selected), spacing, k + float(spacing.max()))
    field = jitter_field(seg.shape, spacing, k, smoothness_mm, field_seed, near)
    length = np.sqrt((field.astype(np.float64) ** 2).sum(0))
    record["field_seed"] = field_seed
    record["field_max_mm"] = rounded(length.max() if near is None else length[near].max())
    record["field_max_image_mm"] = rounded(length.max())
    warped = warp_labels(seg, field, spacing)
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
        lab, n = connected_components(mask)
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
        ball = ball_mask(seg.shape, spacing, centre, k / 2.0)
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
