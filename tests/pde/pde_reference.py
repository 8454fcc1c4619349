"""Independent numpy/scipy references for the PDE layer tests (no nnunet_pde code inside)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


def diffusion_matrix(
    u: np.ndarray,
    alpha: float,
    kappa: float | None,
    spacing: Sequence[float],
) -> sp.csr_matrix:
    """Sparse ``A(u)`` of the flux-form diffusion on one channel, zero-flux boundary.

    Assembled face by face with ``w = alpha / h^2 / (1 + ((u_j - u_i) / (h kappa))^2)``
    (``kappa=None``: linear, ``w = alpha / h^2``). Only interior faces exist, which is what
    the zero-flux condition means. ``u`` has shape ``(D, H, W)`` (or ``(H, W)``).
    """
    shape = u.shape
    n = u.size
    index = np.arange(n).reshape(shape)
    rows, cols, vals = [], [], []
    diag = np.zeros(n)
    for d, h in enumerate(spacing):
        lo = [slice(None)] * u.ndim
        hi = [slice(None)] * u.ndim
        lo[d] = slice(0, -1)
        hi[d] = slice(1, None)
        i = index[tuple(lo)].ravel()
        j = index[tuple(hi)].ravel()
        du = (u[tuple(hi)] - u[tuple(lo)]).ravel()
        w = np.full(du.shape, alpha / h**2)
        if kappa is not None:
            w = w / (1.0 + (du / (h * kappa)) ** 2)
        rows += [i, j]
        cols += [j, i]
        vals += [w, w]
        np.add.at(diag, i, -w)
        np.add.at(diag, j, -w)
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )


def block_matrix(fn, shape: Sequence[int]) -> np.ndarray:
    """Dense matrix of a *linear* map of single-batch tensors ``(1, C, *S)`` (column by column)."""
    n = int(np.prod(shape))
    cols = []
    with torch.no_grad():
        for k in range(n):
            e = torch.zeros(n, dtype=torch.float64)
            e[k] = 1.0
            cols.append(fn(e.reshape(1, *shape)).reshape(-1).numpy())
    return np.stack(cols, axis=1)


def cell_centres(n: int, h: float) -> np.ndarray:
    """Cell-centre coordinates ``(i + 1/2) h`` of ``n`` cells (zero-flux faces at 0 and n h)."""
    return (np.arange(n) + 0.5) * h
