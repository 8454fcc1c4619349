"""Shared fixtures for the metric tests: analytic shapes and a brute-force reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def cube(shape: Sequence[int], start: Sequence[int], size: int) -> np.ndarray:
    """Boolean array with a cube of ``size`` voxels per side at voxel index ``start``."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def ball(shape: Sequence[int], spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of the image centre (physical, mm)."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2


def blob(shape: Sequence[int], rng: np.random.Generator, fraction: float = 0.2) -> np.ndarray:
    """A random smooth blob (possibly several components) occupying about ``fraction``."""
    x = ndimage.gaussian_filter(rng.random(shape), sigma=2.5)
    return x > np.quantile(x, 1.0 - fraction)


def brute_force_directed(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances by nearest-neighbour search over surface coordinates.

    Independent of the distance transform used in the package: the surface is taken with an
    explicit 6-neighbour test on a zero-padded copy, distances with a KD-tree in mm.
    """

    def surface(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        core = tuple(slice(1, -1) for _ in range(m.ndim))
        for axis in range(m.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[core]
        return m & ~inner

    sp = np.asarray(spacing, dtype=float)
    cp = np.argwhere(surface(pred)) * sp
    cr = np.argwhere(surface(ref)) * sp
    return cKDTree(cr).query(cp)[0], cKDTree(cp).query(cr)[0]
