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


def face_weight_arrays(
    u: np.ndarray, alpha: float, kappa: float | None, spacing: Sequence[float]
) -> list[np.ndarray]:
    """Interior face weights per axis (``n_d - 1`` along axis ``d``), from the formula."""
    out = []
    for d, h in enumerate(spacing):
        du = np.diff(u, axis=d)
        w = np.full(du.shape, alpha / h**2)
        if kappa is not None:
            w = w / (1.0 + (du / (h * kappa)) ** 2)
        out.append(w)
    return out


def axis_matrix(weights: np.ndarray, shape: Sequence[int], axis: int) -> sp.csr_matrix:
    """Sparse ``A_d``: the 1-D flux-form operator along ``axis`` with the given face weights."""
    n = int(np.prod(shape))
    index = np.arange(n).reshape(shape)
    lo = [slice(None)] * len(shape)
    hi = [slice(None)] * len(shape)
    lo[axis] = slice(0, -1)
    hi[axis] = slice(1, None)
    i = index[tuple(lo)].ravel()
    j = index[tuple(hi)].ravel()
    w = weights.ravel()
    diag = np.zeros(n)
    np.add.at(diag, i, -w)
    np.add.at(diag, j, -w)
    rows = np.concatenate([i, j, np.arange(n)])
    cols = np.concatenate([j, i, np.arange(n)])
    vals = np.concatenate([w, w, diag])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def sequential_red_black(
    a: sp.csr_matrix, b: np.ndarray, v0: np.ndarray, tau: float, shape: Sequence[int], sweeps: int
) -> np.ndarray:
    """Gauss-Seidel on ``(I - tau A) v = b``, voxel by voxel, all red then all black voxels.

    A plain in-place loop (lexicographic order within each colour), red = even index sum:
    an independent reference for the vectorised red-black sweep.
    """
    m = (sp.identity(a.shape[0], format="csr") - tau * a).tocsr()
    parity = np.indices(shape).sum(axis=0).ravel() % 2
    v = v0.astype(np.float64).copy()
    for _ in range(sweeps):
        for colour in (0, 1):
            for k in np.flatnonzero(parity == colour):
                start, end = m.indptr[k], m.indptr[k + 1]
                cols, vals = m.indices[start:end], m.data[start:end]
                off = cols != k
                v[k] = (b[k] - vals[off] @ v[cols[off]]) / vals[~off][0]
    return v


def compiled_graph_nodes(n: int) -> int:
    """FX nodes (nested autograd subgraphs included) that ``torch.compile(fullgraph=True)``
    traces for a training step of a default 2-channel block on an ``n^3`` grid."""
    from nnunet_pde.pde import PDEBlock, PDEConfig

    torch._dynamo.reset()
    counts: list[int] = []

    def count_backend(gm, example_inputs):
        counts.append(
            sum(len(m.graph.nodes) for m in gm.modules() if isinstance(m, torch.fx.GraphModule))
        )
        return gm.forward

    block = PDEBlock(2, (1.0, 1.0, 2.0), PDEConfig()).train()
    block.record_consistency = True
    compiled = torch.compile(block, backend=count_backend, fullgraph=True)
    compiled(torch.randn(1, 2, n, n, n, requires_grad=True)).sum().backward()
    torch._dynamo.reset()
    return sum(counts)
