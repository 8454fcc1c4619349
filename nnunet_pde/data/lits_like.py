"""LiTS-like phantom: thick-slice abdominal CT in Hounsfield units with a liver and tumours.

An axial body cross-section (subcutaneous fat, muscle wall with ribs, a spine with discs
and spinal canal, paraspinal muscles, aorta, inferior vena cava, kidneys, spleen, stomach
with an air-fluid level, bowel loops in visceral fat) around a liver built as the smooth
union of two deformed ellipsoids with an internal vessel tree, holding one to three
hypodense tumours.

The anatomy is defined in normalised coordinates (field of view = ``[-1, 1]`` per axis; y
runs anterior to posterior and x from the patient's right to left, as in the LPS
orientation of an identity-direction NIfTI). Each slice is rendered at three positions
across its thickness and averaged, which gives the through-plane partial-volume effect
of thick slices; labels come from the slice centre. Labels: liver 1, tumour 2.

Random draws are made by :func:`sample_params` (JSON-able, fields recorded by seed);
rendering is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnunet_pde.data import fields

CHANNEL_NAMES: tuple[str, ...] = ("CT",)
DEFAULT_SPACING: tuple[float, float, float] = (4.0, 0.8, 0.8)
LABELS = {"background": 0, "liver": 1, "tumor": 2}

#: Mean attenuation (HU) and texture amplitude (HU) of the non-liver tissues.
HU = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 12.0),
    "muscle": (50.0, 8.0),
    "bowel": (35.0, 10.0),
    "gas": (-850.0, 40.0),
    "cortical bone": (750.0, 60.0),
    "marrow": (230.0, 30.0),
    "disc": (90.0, 8.0),
    "canal": (15.0, 5.0),
    "aorta": (160.0, 6.0),
    "ivc": (120.0, 6.0),
    "kidney": (170.0, 10.0),
    "renal sinus": (-60.0, 15.0),
    "spleen": (50.0, 6.0),
    "gastric fluid": (12.0, 4.0),
}
CT_RANGE = (-1024.0, 3071.0)
_SUBSLICES = 3
_PSF_SIGMA_PIXELS = 0.5
_NOISE_CORRELATION_PIXELS = 0.7
_MAX_TUMOUR_ATTEMPTS = 50


def _u(rng: np.random.Generator, low: float, high: float, size: int | None = None):
    value = rng.uniform(low, high, size)
    return float(value) if size is None else [float(v) for v in value]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


def sample_body(rng: np.random.Generator) -> dict:
    """Draw body habitus, organ positions and sizes, liver attenuation and the noise seed."""
    liver_hu = _u(rng, 50.0, 70.0)
    return {
        "body_center": _u(rng, -0.03, 0.03, 2),
        "body_semi_axes": [_u(rng, 0.60, 0.70), _u(rng, 0.82, 0.90)],
        "fat_thickness": _u(rng, 0.08, 0.16),
        "muscle_thickness": _u(rng, 0.04, 0.06),
        "bowel_threshold": _u(rng, -0.3, 0.1),
        "vertebra_period": _u(rng, 0.32, 0.38),
        "vertebra_phase": _u(rng, 0.0, 1.0),
        "liver_scale": _u(rng, 0.88, 1.08),
        "liver_center": [_u(rng, 0.15, 0.3), _u(rng, -0.06, 0.02), _u(rng, -0.42, -0.34)],
        "liver_hu": liver_hu,
        "vessel_hu": liver_hu + _u(rng, 20.0, 60.0),
        "spleen_scale": _u(rng, 0.8, 1.2),
        "kidney_scale": _u(rng, 0.85, 1.15),
        "shading_hu": _u(rng, 3.0, 10.0),
        "shape_seed": _seed(rng),
        "texture_seed": _seed(rng),
        "noise_seed": _seed(rng),
    }


def sample_tumours(rng: np.random.Generator, candidate_centres: np.ndarray) -> list[dict]:
    """Draw one to three tumours centred at rows of ``candidate_centres`` (normalised z, y, x)."""
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    tumours = []
    for i in range(count):
        radius = _u(rng, 0.11, 0.17) if i == 0 else _u(rng, 0.08, 0.14)
        centre = candidate_centres[int(rng.integers(len(candidate_centres)))]
        tumours.append(
            {
                "center": [float(v) for v in centre],
                "radius": radius,
                "anisotropy": _u(rng, 0.85, 1.15, 3),
                "hu": _u(rng, 20.0, 40.0),
                "necrotic": bool(radius > 0.13 and rng.uniform() < 0.5),
                "shape_seed": _seed(rng),
            }
        )
    return tumours


def _ellipsoid(
    coords: Sequence[np.ndarray], center: Sequence[float], semi: Sequence[float]
) -> np.ndarray:
    """Normalised ellipsoid function: < 1 inside, 1 on the surface."""
    return sum(((c - m) / s) ** 2 for c, m, s in zip(coords, center, semi, strict=True))


class _Canvas:
    """Painter's-algorithm rendering of HU values and labels on the sub-slice grid."""

    def __init__(self, shape: tuple[int, int, int], texture: np.ndarray):
        self.hu = np.full(shape, HU["air"][0], dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)
        self.texture = texture

    def paint(self, mask: np.ndarray, hu: float, texture_hu: float, label: int = 0) -> None:
        self.hu[mask] = hu + texture_hu * self.texture[mask]
        self.label[mask] = label


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Normalised 1-D coordinates; z is sampled at ``_SUBSLICES`` positions per slice."""
    nz, ny, nx = shape
    offsets = (np.arange(_SUBSLICES) + 0.5) / _SUBSLICES - 0.5
    z = ((np.arange(nz)[:, None] + 0.5 + offsets[None, :]) / nz * 2.0 - 1.0).ravel()
    _, y, x = fields.normalized_grid(shape)
    return [z, y, x]


def render_body(body: dict, shape: Sequence[int]) -> tuple[_Canvas, list[np.ndarray], np.ndarray]:
    """Everything but the tumours; returns the canvas, the coordinates and the liver function."""
    axes = _grid(shape)
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    zz, yy, xx = (a.astype(np.float32) for a in (zz, yy, xx))
    rng = np.random.default_rng(body["shape_seed"])
    canvas = _Canvas(
        zz.shape, fields.smooth_noise(np.random.default_rng(body["texture_seed"]), axes, 0.06)
    )

    cy, cx = body["body_center"]
    by = body["body_semi_axes"][0] * (1.0 + 0.04 * zz)
    bx = body["body_semi_axes"][1]
    rb = np.sqrt(((yy - cy) / by) ** 2 + ((xx - cx) / bx) ** 2)
    rb *= 1.0 + 0.02 * fields.smooth_noise(rng, axes, 0.4)
    wall_outer = 1.0 - body["fat_thickness"]
    wall_inner = wall_outer - body["muscle_thickness"]
    canvas.paint(rb < 1.0, *HU["fat"])
    canvas.paint(rb < wall_outer, *HU["muscle"])
    cavity = rb < wall_inner
    bowel = fields.smooth_noise(rng, axes, 0.12) > body["bowel_threshold"]
    gas = bowel & (fields.smooth_noise(rng, axes, 0.06) > 2.0)
    canvas.paint(cavity, *HU["fat"])
    canvas.paint(cavity & bowel, *HU["bowel"])
    canvas.paint(cavity & gas, *HU["gas"])

    # Ribs: oblique bands in the lateral and posterior muscle wall.
    angle = np.arctan2(yy - cy, xx - cx)
    # The phase winds with the angle so that each oblique rib is cut into a short arc.
    rib_phase = (zz + 0.5 * np.abs(angle)) / (0.8 * body["vertebra_period"]) % 1.0
    rib_band = (rb > wall_inner + 0.1 * body["muscle_thickness"]) & (
        rb < wall_outer - 0.1 * body["muscle_thickness"]
    )
    canvas.paint(rib_band & (rib_phase < 0.3) & (yy - cy > -0.25 * by), *HU["cortical bone"])

    # Spine and paraspinal muscles, posterior midline.
    sy = cy + 0.42 * by
    for side in (-1.0, 1.0):
        canvas.paint(
            _ellipsoid((yy, xx), (sy + 0.2, cx + side * 0.15), (0.1, 0.09)) < 1.0, *HU["muscle"]
        )
    vertebra = _ellipsoid((yy, xx), (sy, cx), (0.11, 0.13))
    disc = (zz - body["vertebra_phase"]) / body["vertebra_period"] % 1.0 < 0.2
    canvas.paint((vertebra < 1.0) & ~disc, *HU["cortical bone"])
    canvas.paint((vertebra < 0.6) & ~disc, *HU["marrow"])
    canvas.paint((vertebra < 1.0) & disc, *HU["disc"])
    canal = _ellipsoid((yy, xx), (sy + 0.17, cx), (0.05, 0.05))
    canvas.paint((canal < 2.8) & (canal >= 1.0), *HU["cortical bone"])
    canvas.paint(_ellipsoid((yy, xx), (sy + 0.29, cx), (0.06, 0.025)) < 1.0, *HU["cortical bone"])
    canvas.paint(canal < 1.0, *HU["canal"])

    # Retroperitoneal and left upper quadrant organs.
    ks = body["kidney_scale"]
    for side in (-1.0, 1.0):
        kidney = _ellipsoid(
            (zz, yy, xx), (-0.45, sy - 0.02, cx + side * 0.42), (0.32 * ks, 0.17 * ks, 0.12 * ks)
        )
        canvas.paint(cavity & (kidney < 1.0), *HU["kidney"])
        canvas.paint(cavity & (kidney < 0.25), *HU["renal sinus"])
    ss = body["spleen_scale"]
    spleen = _ellipsoid((zz, yy, xx), (0.3, cy + 0.22, cx + 0.55), (0.3 * ss, 0.24 * ss, 0.14 * ss))
    spleen *= 1.0 + 0.1 * fields.smooth_noise(rng, axes, 0.25)
    canvas.paint(cavity & (spleen < 1.0), *HU["spleen"])
    stomach = _ellipsoid((zz, yy, xx), (0.4, cy - 0.2, cx + 0.25), (0.3, 0.22, 0.22))
    stomach *= 1.0 + 0.1 * fields.smooth_noise(rng, axes, 0.25)
    canvas.paint(cavity & (stomach < 1.0), *HU["muscle"])
    canvas.paint(cavity & (stomach < 0.6), *HU["gastric fluid"])
    # Supine patient: gas rises anteriorly (towards -y) above a flat fluid level.
    canvas.paint(cavity & (stomach < 0.6) & (yy < cy - 0.27), *HU["gas"])

    # Liver: smooth union of the right lobe and the left lobe, deformed.
    disp = fields.smooth_displacement(rng, axes, 0.35, 0.05)
    dz, dy, dx = (c + d for c, d in zip((zz, yy, xx), disp, strict=True))
    s = body["liver_scale"]
    lz, ly, lx = body["liver_center"]
    right = _ellipsoid((dz, dy, dx), (lz, cy + ly, cx + lx), (0.55 * s, 0.5 * s, 0.42 * s))
    left = _ellipsoid(
        (dz, dy, dx), (lz + 0.12, cy + ly - 0.28, cx + lx + 0.42), (0.3 * s, 0.2 * s, 0.3 * s)
    )
    k = 0.15
    liver_fn = -k * np.logaddexp(-right / k, -left / k)
    liver_fn *= 1.0 + 0.08 * fields.smooth_noise(rng, axes, 0.25)
    liver = cavity & (rb < wall_inner - 0.02) & (liver_fn < 1.0)
    canvas.paint(liver, body["liver_hu"], 5.0, label=1)
    vessels = (np.abs(fields.smooth_noise(rng, axes, 0.3)) < 0.07) & (
        np.abs(fields.smooth_noise(rng, axes, 0.3)) < 0.07
    )
    canvas.paint(liver & vessels & (liver_fn < 0.9), body["vessel_hu"], 6.0, label=1)

    # Great vessels last: the IVC runs through the liver's bare area but is not liver.
    canvas.paint(_ellipsoid((yy, xx), (sy - 0.2, cx + 0.1), (0.065, 0.065)) < 1.0, *HU["aorta"])
    ivc = _ellipsoid((yy, xx), (sy - 0.22, cx - 0.17), (0.06, 0.075)) < 1.0
    canvas.paint(ivc & (zz > -0.7), *HU["ivc"])
    liver_fn = np.where(canvas.label == 1, liver_fn, np.inf).astype(np.float32)
    return canvas, [zz, yy, xx], liver_fn


def paint_tumours(
    canvas: _Canvas, coords: Sequence[np.ndarray], liver_fn: np.ndarray, tumours: list[dict]
) -> None:
    """Paint hypodense tumours, clipped to the liver (``liver_fn`` is finite inside it)."""
    nz, ny, nx = liver_fn.shape
    axes = _grid((nz // _SUBSLICES, ny, nx))
    liver = np.isfinite(liver_fn)
    for t in tumours:
        rng = np.random.default_rng(t["shape_seed"])
        r = t["radius"]
        disp = fields.smooth_displacement(rng, axes, 0.8 * r, 0.15 * r)
        semi = r * np.asarray(t["anisotropy"])
        f = _ellipsoid([c + d for c, d in zip(coords, disp, strict=True)], t["center"], semi)
        f *= 1.0 + 0.12 * fields.smooth_noise(rng, axes, 0.6 * r)
        canvas.paint(liver & (f < 1.0), t["hu"], 7.0, label=2)
        if t["necrotic"]:
            canvas.paint(liver & (f < 0.2), t["hu"] - 15.0, 5.0, label=2)


def _slice_centres(array: np.ndarray) -> np.ndarray:
    return array[_SUBSLICES // 2 :: _SUBSLICES]


def _tumour_candidates(coords: Sequence[np.ndarray], liver_fn: np.ndarray) -> np.ndarray:
    """Slice-centre points well inside the liver, as ``(n, 3)`` normalised coordinates."""
    inner = _slice_centres(liver_fn) < 0.6
    if not inner.any():
        inner = np.isfinite(_slice_centres(liver_fn))
    return np.stack([_slice_centres(c)[inner] for c in coords], axis=1)


def render_images(canvas: _Canvas, body: dict, shape: Sequence[int], noise_hu: float) -> np.ndarray:
    """Average sub-slices, blur in-plane, add shading and correlated noise; int16 (1, z, y, x).

    ``noise_hu`` is the standard deviation of the noise in HU.
    """
    nz, ny, nx = shape
    hu = canvas.hu.reshape(nz, _SUBSLICES, ny, nx).mean(axis=1)
    hu = fields.partial_volume(hu, (0.0, _PSF_SIGMA_PIXELS, _PSF_SIGMA_PIXELS))
    rng = np.random.default_rng(body["noise_seed"])
    # Low-frequency HU shading (beam hardening / scatter), then reconstruction-kernel noise.
    hu += body["shading_hu"] * fields.smooth_noise(rng, fields.normalized_grid(shape), 0.8)
    hu += fields.correlated_gaussian_noise(
        shape, noise_hu, rng, (0.0, _NOISE_CORRELATION_PIXELS, _NOISE_CORRELATION_PIXELS)
    )
    return fields.to_int16(hu, *CT_RANGE)[None]


def make_case(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], noise_hu: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample and render one case with ``noise_hu`` HU of noise (standard deviation).

    ``spacing`` does not change the anatomy (defined relative to the field of view); it is
    only written to the image header.

    Returns:
        ``(images, label, params)``: int16 ``(1, z, y, x)`` in HU, uint8 ``(z, y, x)`` and the
        JSON-able parameters that reproduce the case.
    """
    del spacing
    shape = tuple(int(s) for s in shape)
    body = sample_body(rng)
    base, coords, liver_fn = render_body(body, shape)
    candidates = _tumour_candidates(coords, liver_fn)
    min_voxels = max(8, int(0.01 * np.count_nonzero(_slice_centres(base.label) == 1)))
    for _ in range(_MAX_TUMOUR_ATTEMPTS):
        tumours = sample_tumours(rng, candidates)
        canvas = _Canvas(base.hu.shape, base.texture)
        canvas.hu[:], canvas.label[:] = base.hu, base.label
        paint_tumours(canvas, coords, liver_fn, tumours)
        label = _slice_centres(canvas.label).copy()
        if (
            np.count_nonzero(label == 2) >= min_voxels
            and np.count_nonzero(label == 1) >= min_voxels
        ):
            break
    else:  # pragma: no cover - would need a pathological image size
        raise RuntimeError(f"could not place a liver tumour in a {shape} image")
    params = {"body": body, "tumours": tumours}
    return render_images(canvas, body, shape, noise_hu), label, params
