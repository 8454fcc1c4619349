"""BraTS-like phantom: a head imaged with T1, T1ce, T2 and FLAIR, with a glioma.

The anatomy is a set of nested, smoothly perturbed ellipsoidal shells (scalp, skull, CSF,
cortical grey matter with sulci, white matter), two lateral ventricles, deep grey nuclei and
the interhemispheric fissure. The tumour is a randomly deformed blob with nested
sub-regions: a necrotic core inside an enhancing rim (together the tumour core), surrounded
by edema that spreads through white matter.

Labels follow nnU-Net's Dataset137 BraTS conversion: edema = 1, necrosis / non-enhancing
core = 2, enhancing tumour = 3.

Generation is split, as in TorchIO, into :func:`sample_params` (all random draws, returned
as a JSON-able dict; large random fields are recorded by their seeds) and deterministic
rendering (:func:`render_label` / :func:`render_images`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_pde.data import fields

CHANNEL_NAMES: tuple[str, ...] = ("T1", "T1ce", "T2", "Flair")
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.0)

# Tissue codes of the rendered tissue map.
BACKGROUND, SCALP, SKULL, CSF, GM, WM, EDEMA, NECROSIS, ENHANCING = range(9)
TISSUE_NAMES: tuple[str, ...] = (
    "background", "scalp", "skull", "csf", "grey matter", "white matter",
    "edema", "necrosis", "enhancing tumour",
)  # fmt: skip

#: Mean signal per channel (rows: T1, T1ce, T2, FLAIR) and tissue (columns: tissue codes),
#: arbitrary MR units. T1: WM > GM > CSF, fat bright; T1ce: T1 plus a bright enhancing rim;
#: T2: fluid and edema bright; FLAIR: like T2 with free fluid (CSF) suppressed.
CONTRAST = np.array(
    [
        # bg  scalp skull  csf   gm    wm  edema  nec   enh
        [0.0, 650, 90, 180, 420, 560, 330, 200, 380],  # T1
        [0.0, 650, 90, 190, 440, 570, 340, 210, 880],  # T1ce
        [0.0, 480, 70, 980, 620, 420, 820, 900, 640],  # T2
        [0.0, 420, 60, 130, 520, 390, 820, 360, 620],  # FLAIR
    ],
    dtype=np.float64,
)
#: Relative amplitude of the smooth within-tissue texture, per tissue.
TEXTURE = np.array([0.0, 0.06, 0.10, 0.03, 0.03, 0.03, 0.07, 0.12, 0.09], dtype=np.float32)

LABEL_OF_TISSUE = {EDEMA: 1, NECROSIS: 2, ENHANCING: 3}
LABELS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)

_PSF_SIGMA_VOXELS = 0.6
_MAX_TUMOUR_ATTEMPTS = 50


@dataclass(frozen=True)
class Geometry:
    """Image grid: ``shape`` in voxels and ``spacing`` in mm, both in (z, y, x) order."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def axes_mm(self) -> list[np.ndarray]:
        """Voxel-centre coordinates in mm per axis, field-of-view centre at 0."""
        return [
            ((np.arange(n) + 0.5) - n / 2.0) * s
            for n, s in zip(self.shape, self.spacing, strict=True)
        ]

    @property
    def half_extent_mm(self) -> np.ndarray:
        return np.asarray(self.shape, dtype=np.float64) * np.asarray(self.spacing) / 2.0


def _u(rng: np.random.Generator, low: float, high: float, size: int | None = None):
    value = rng.uniform(low, high, size)
    return float(value) if size is None else [float(v) for v in value]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


def sample_head(rng: np.random.Generator, geometry: Geometry) -> dict:
    """Draw the head anatomy, contrasts, bias and noise seed of one case."""
    half = geometry.half_extent_mm
    scale = _u(rng, 0.93, 1.0)
    axes = half * np.array([0.80, 0.88, 0.76]) * scale * np.array(_u(rng, 0.97, 1.03, 3))
    return {
        "head_center_mm": [float(v) for v in half * np.array(_u(rng, -0.02, 0.02, 3))],
        "head_semi_axes_mm": [float(v) for v in axes],
        "rotation_deg": _u(rng, -6.0, 6.0, 3),
        "scalp_thickness": _u(rng, 0.06, 0.08),
        "skull_thickness": _u(rng, 0.06, 0.08),
        "csf_thickness": _u(rng, 0.03, 0.05),
        "cortex_thickness": _u(rng, 0.09, 0.12),
        "ventricle_scale": _u(rng, 0.7, 1.3),
        "contrast_jitter": [_u(rng, 0.95, 1.05, CONTRAST.shape[1]) for _ in CHANNEL_NAMES],
        "channel_gain": _u(rng, 0.8, 1.25, len(CHANNEL_NAMES)),
        "bias_coefficients": [fields.sample_bias_coefficients(rng, 0.25) for _ in CHANNEL_NAMES],
        "shape_seed": _seed(rng),
        "texture_seed": _seed(rng),
        "noise_seed": _seed(rng),
    }


def sample_tumour(rng: np.random.Generator, head: dict) -> dict:
    """Draw a tumour: whole-tumour size as a fraction of the brain volume, position, shape."""
    brain_radius = 1.0 - head["scalp_thickness"] - head["skull_thickness"] - head["csf_thickness"]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    # Keep the centre off the midline so that most of the tumour sits in one hemisphere.
    direction[2] = np.sign(direction[2] or 1.0) * max(abs(direction[2]), 0.4)
    direction /= np.linalg.norm(direction)
    depth = _u(rng, 0.2, 0.5) * brain_radius
    return {
        "center_head_units": [float(v) for v in direction * depth],
        "brain_fraction": _u(rng, 0.04, 0.12),
        "anisotropy": _u(rng, 0.8, 1.25, 3),
        "core_fraction": _u(rng, 0.58, 0.75),
        "necrosis_fraction": _u(rng, 0.5, 0.75),
        "shape_seed": _seed(rng),
    }


def sample_params(rng: np.random.Generator, geometry: Geometry) -> dict:
    """All random draws of one case (the tumour may be redrawn by :func:`make_case`)."""
    head = sample_head(rng, geometry)
    return {"head": head, "tumour": sample_tumour(rng, head)}


def _head_frame(params: dict, geometry: Geometry) -> tuple[list[np.ndarray], np.ndarray]:
    """Voxel coordinates in the head frame (mm, rotated) and the head semi-axes (mm)."""
    head = params["head"]
    z, y, x = geometry.axes_mm()
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    p = np.stack([zz, yy, xx]).reshape(3, -1) - np.asarray(head["head_center_mm"])[:, None]
    q = fields.rotation_matrix(head["rotation_deg"]) @ p
    return [c.reshape(geometry.shape).astype(np.float32) for c in q], np.asarray(
        head["head_semi_axes_mm"]
    )


def render_tissues(params: dict, geometry: Geometry) -> np.ndarray:
    """Tissue-code map (uint8, shape ``geometry.shape``) from sharp boundaries."""
    head, tumour = params["head"], params["tumour"]
    q, axes = _head_frame(params, geometry)
    u = [c / a for c, a in zip(q, axes, strict=True)]
    mean_axis = float(np.mean(axes))
    positions = geometry.axes_mm()
    rng = np.random.default_rng(head["shape_seed"])

    # Low-frequency shape variation of the whole head, then cortical folding patterns.
    r = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    r *= 1.0 + 0.025 * fields.smooth_noise(rng, positions, 0.5 * mean_axis)
    gyri = fields.smooth_noise(rng, positions, 0.15 * mean_axis)
    sulci = fields.smooth_noise(rng, positions, 0.12 * mean_axis)
    ventricle_shape = fields.smooth_noise(rng, positions, 0.15 * mean_axis)

    r_skull = 1.0 - head["scalp_thickness"]
    r_csf = r_skull - head["skull_thickness"]
    r_brain = r_csf - head["csf_thickness"]
    r_wm = r_brain - head["cortex_thickness"] * (1.0 + 0.6 * gyri)

    tissue = np.zeros(geometry.shape, dtype=np.uint8)
    tissue[r < 1.0] = SCALP
    tissue[r < r_skull] = SKULL
    tissue[r < r_csf] = CSF
    tissue[r < r_brain] = GM
    tissue[r < r_wm] = WM
    in_brain = r < r_brain
    sulcal = (r > r_brain - 0.9 * head["cortex_thickness"]) & (np.abs(sulci) < 0.18)
    tissue[in_brain & sulcal] = CSF
    fissure = (np.abs(q[2]) < 0.7) & (r > 0.35) & (u[0] > -0.3)
    tissue[in_brain & fissure] = CSF

    for side in (-1.0, 1.0):
        deep = (
            ((u[0] - 0.0) / 0.14) ** 2
            + ((u[1] - 0.05) / 0.2) ** 2
            + ((u[2] - side * 0.27) / 0.1) ** 2
        )
        tissue[deep < 1.0] = GM
        vs = head["ventricle_scale"]
        vent = (
            ((u[0] - 0.12) / (0.12 * vs)) ** 2
            + (u[1] / (0.33 * vs)) ** 2
            + ((u[2] - side * 0.1) / (0.07 * vs)) ** 2
        )
        tissue[vent * (1.0 + 0.2 * ventricle_shape) < 1.0] = CSF

    # Tumour: a deformed ellipsoid; each nested boundary gets its own perturbation.
    brain_volume = 4.0 / 3.0 * np.pi * float(np.prod(axes)) * r_brain**3
    radius = (tumour["brain_fraction"] * brain_volume * 3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    semi = radius * np.asarray(tumour["anisotropy"]) / np.prod(tumour["anisotropy"]) ** (1.0 / 3.0)
    center = np.asarray(tumour["center_head_units"]) * axes
    trng = np.random.default_rng(tumour["shape_seed"])
    disp = fields.smooth_displacement(trng, positions, 0.9 * radius, 0.3 * radius)
    d = np.sqrt(
        sum(((c - m + dc) / s) ** 2 for c, m, dc, s in zip(q, center, disp, semi, strict=True))
    )
    d_edema = d * (1.0 + 0.15 * fields.smooth_noise(trng, positions, 0.6 * radius))
    d_core = d * (1.0 + 0.10 * fields.smooth_noise(trng, positions, 0.6 * radius))
    d_necrosis = d * (1.0 + 0.15 * fields.smooth_noise(trng, positions, 0.5 * radius))

    core_radius = tumour["core_fraction"]
    necrosis_radius = core_radius * tumour["necrosis_fraction"]
    # Edema follows white matter and only reaches into the cortex near the tumour.
    edema = (d_edema < 1.0) & ((tissue == WM) | ((tissue == GM) & (d_edema < 0.85)))
    core = (d_core < core_radius) & in_brain
    # The enhancing rim encloses the necrosis: at least one voxel of rim everywhere.
    necrosis = ndimage.binary_erosion(core) & (d_necrosis < necrosis_radius)
    tissue[edema] = EDEMA
    tissue[core] = ENHANCING
    tissue[necrosis] = NECROSIS
    return tissue


def label_from_tissues(tissue: np.ndarray) -> np.ndarray:
    """BraTS label map (uint8): edema 1, necrosis 2, enhancing 3, everything else 0."""
    lut = np.zeros(256, dtype=np.uint8)
    for code, value in LABEL_OF_TISSUE.items():
        lut[code] = value
    return lut[tissue]


def render_images(params: dict, tissue: np.ndarray, geometry: Geometry, noise: float) -> np.ndarray:
    """Four MR channels, int16 array of shape ``(4, z, y, x)``.

    ``noise`` is the standard deviation of the (Rician) noise relative to the white-matter
    signal of each channel.
    """
    head = params["head"]
    table = (
        CONTRAST * np.asarray(head["contrast_jitter"]) * np.asarray(head["channel_gain"])[:, None]
    )
    rng = np.random.default_rng(head["texture_seed"])
    texture = fields.smooth_noise(
        rng, [np.arange(n, dtype=np.float64) for n in geometry.shape], 2.0
    )
    modulation = 1.0 + TEXTURE[tissue] * texture
    noise_rng = np.random.default_rng(head["noise_seed"])
    images = np.empty((len(CHANNEL_NAMES), *geometry.shape), dtype=np.int16)
    for c in range(len(CHANNEL_NAMES)):
        sharp = table[c].astype(np.float32)[tissue] * modulation
        image = fields.partial_volume(sharp, _PSF_SIGMA_VOXELS)
        image *= fields.polynomial_bias_field(geometry.shape, head["bias_coefficients"][c])
        image = fields.rician_noise(image, noise * float(table[c, WM]), noise_rng)
        images[c] = fields.to_int16(image, 0, 32767)
    return images


def _tumour_is_learnable(label: np.ndarray, tissue: np.ndarray) -> bool:
    """Every sub-label present with a minimum size (so every region can be learned)."""
    brain = np.count_nonzero(tissue >= GM)
    min_voxels = max(4, int(0.002 * brain))
    counts = np.bincount(label.ravel(), minlength=4)
    return bool(np.all(counts[1:4] >= min_voxels))


def make_case(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], noise: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample and render one case; ``noise`` as in :func:`render_images`.

    Returns:
        ``(images, label, params)``: int16 ``(4, z, y, x)``, uint8 ``(z, y, x)`` and the
        JSON-able parameters that reproduce the case.
    """
    geometry = Geometry(tuple(int(s) for s in shape), tuple(float(s) for s in spacing))
    params = sample_params(rng, geometry)
    for attempt in range(1, _MAX_TUMOUR_ATTEMPTS + 1):
        tissue = render_tissues(params, geometry)
        label = label_from_tissues(tissue)
        if _tumour_is_learnable(label, tissue):
            break
        # Redraw; grow the tumour on repeated failures, which only happens in tiny images
        # where a thin rim or a small necrosis vanishes on the voxel grid.
        tumour = sample_tumour(rng, params["head"])
        tumour["brain_fraction"] = min(0.35, tumour["brain_fraction"] * 1.1**attempt)
        params["tumour"] = tumour
    else:  # pragma: no cover - would need a pathological image size
        raise RuntimeError(
            f"could not place a tumour with all three sub-regions in a {shape} image"
        )
    return render_images(params, tissue, geometry, noise), label, params
