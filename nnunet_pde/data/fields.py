"""Random fields and imaging-physics helpers shared by the synthetic phantoms.

Every function here is deterministic given its arguments; randomness enters only through an
explicit ``numpy.random.Generator`` or through coefficients sampled beforehand. Arrays are in
numpy axis order ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Exponents ``(i, j, k)`` of the monomials ``z**i * y**j * x**k`` used by
#: :func:`polynomial_bias_field`, for polynomials of total degree <= 3 (20 terms).
BIAS_EXPONENTS: tuple[tuple[int, int, int], ...] = tuple(
    (i, j, k) for i in range(4) for j in range(4 - i) for k in range(4 - i - j)
)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    """Centred cubic B-spline kernel (support ``|t| < 2``, integrates to 1)."""
    a = np.abs(t)
    out = np.zeros_like(a)
    inner = a < 1
    outer = (a >= 1) & (a < 2)
    out[inner] = 2.0 / 3.0 - a[inner] ** 2 + 0.5 * a[inner] ** 3
    out[outer] = (2.0 - a[outer]) ** 3 / 6.0
    return out


def _bspline_matrix(positions: np.ndarray, correlation: float) -> np.ndarray:
    """Rows: one output position; columns: B-spline nodes spaced ``correlation`` apart.

    Rows are scaled to unit L2 norm so that white-noise coefficients give a field whose
    variance is exactly 1 at every position (no modulation by the node lattice).
    """
    t = (positions - positions.min()) / correlation
    n_nodes = int(np.floor(t.max())) + 4
    nodes = np.arange(n_nodes) - 1.0
    basis = _cubic_bspline(t[:, None] - nodes[None, :])
    basis /= np.sqrt((basis**2).sum(axis=1, keepdims=True))
    return basis


def smooth_noise(
    rng: np.random.Generator,
    positions: Sequence[np.ndarray],
    correlation: float | Sequence[float],
) -> np.ndarray:
    """Smooth Gaussian random field with zero mean and unit variance on a rectilinear grid.

    The field is a tensor-product cubic B-spline whose node coefficients are white noise,
    which is far cheaper than Gaussian-filtering a full-resolution noise volume and can be
    evaluated on any grid (e.g. sub-slice positions for slice-thickness averaging).

    Args:
        rng: source of the node coefficients.
        positions: one 1-D array of coordinates per axis (any unit, e.g. mm or voxels).
        correlation: node spacing per axis in the same unit; features of the field have
            about this size.

    Returns:
        float32 array of shape ``tuple(len(p) for p in positions)``.
    """
    positions = [np.asarray(p, dtype=np.float64) for p in positions]
    if np.isscalar(correlation):
        correlation = [float(correlation)] * len(positions)
    mats = [_bspline_matrix(p, c) for p, c in zip(positions, correlation, strict=True)]
    coef = rng.standard_normal(tuple(m.shape[1] for m in mats))
    field = coef
    # Contract one axis at a time; tensordot moves the new axis to the end each time.
    for m in mats:
        field = np.tensordot(field, m, axes=([0], [1]))
    return field.astype(np.float32)


def smooth_displacement(
    rng: np.random.Generator,
    positions: Sequence[np.ndarray],
    correlation: float | Sequence[float],
    amplitude: float,
) -> list[np.ndarray]:
    """Smooth random displacement field: one :func:`smooth_noise` per axis times ``amplitude``."""
    return [amplitude * smooth_noise(rng, positions, correlation) for _ in positions]


def normalized_grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Voxel-centre coordinates in ``[-1, 1]`` per axis (1-D arrays), field of view edge at +-1."""
    return [((np.arange(n) + 0.5) / n * 2.0 - 1.0) for n in shape]


def polynomial_bias_field(shape: Sequence[int], coefficients: Sequence[float]) -> np.ndarray:
    """Multiplicative bias field ``exp(sum_c c * z**i * y**j * x**k)`` (TorchIO's model).

    Coordinates span ``[-1, 1]`` over the field of view; ``coefficients`` follow
    :data:`BIAS_EXPONENTS`. Returns a float32 array of ``shape``.
    """
    if len(coefficients) != len(BIAS_EXPONENTS):
        raise ValueError(
            f"expected {len(BIAS_EXPONENTS)} bias coefficients, got {len(coefficients)}"
        )
    z, y, x = normalized_grid(shape)
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    log_bias = np.zeros(tuple(shape), dtype=np.float64)
    for (i, j, k), c in zip(BIAS_EXPONENTS, coefficients, strict=True):
        log_bias += c * (z**i) * (y**j) * (x**k)
    return np.exp(log_bias).astype(np.float32)


def sample_bias_coefficients(rng: np.random.Generator, strength: float) -> list[float]:
    """Uniform coefficients in ``[-strength, strength]``, damped by ``1 + degree``."""
    return [
        float(rng.uniform(-strength, strength) / (1 + i + j + k)) for (i, j, k) in BIAS_EXPONENTS
    ]


def partial_volume(image: np.ndarray, sigma_voxels: float | Sequence[float]) -> np.ndarray:
    """Blur a piecewise-constant rendering with a Gaussian point-spread function.

    Rendering tissues with sharp masks and blurring is the same as mixing tissue intensities
    by their (smoothed) volume fractions, so edges get partial-volume values while labels
    stay the sharp masks.
    """
    return ndimage.gaussian_filter(image, sigma_voxels, mode="nearest")


def rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude MR noise: ``|image + n_re + i n_im|`` with ``n ~ N(0, sigma^2)``."""
    if sigma == 0:
        return image
    re = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(re * re + im * im)


def correlated_gaussian_noise(
    shape: Sequence[int],
    sigma: float,
    rng: np.random.Generator,
    correlation_voxels: Sequence[float],
) -> np.ndarray:
    """Gaussian noise with standard deviation ``sigma`` and a Gaussian autocorrelation.

    CT noise is not white: the reconstruction kernel correlates neighbouring pixels in-plane.
    """
    white = rng.standard_normal(tuple(shape)).astype(np.float32)
    if sigma == 0:
        return np.zeros(tuple(shape), dtype=np.float32)
    coloured = ndimage.gaussian_filter(white, correlation_voxels, mode="wrap")
    return coloured * np.float32(sigma / coloured.std())


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about the z, y and x axes (in that order), angles in degrees."""
    az, ay, ax = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


def to_int16(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Round and clip to ``[low, high]`` and store as int16, as scanners export images."""
    return np.clip(np.rint(image), low, high).astype(np.int16)
