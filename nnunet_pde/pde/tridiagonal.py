"""Exact solves of the symmetric tridiagonal systems of one implicit diffusion step per axis.

Along one grid axis with ``n`` cells and ``n - 1`` interior faces, an implicit step of the
1-D flux-form diffusion ``(I - s A_d) v = b`` has the matrix

    T = I + sum_f a_f (e_f - e_{f+1}) (e_f - e_{f+1})^T,      a_f = s * w_f >= 0,

i.e. diagonal ``1 + a_{f-1} + a_f`` and off-diagonals ``-a_f`` (zero-flux boundary: the
boundary faces carry no weight). ``T`` is symmetric, strictly diagonally dominant and an
M-matrix, so

* the Thomas algorithm needs no pivoting (every pivot is ``>= 1 + a_f``);
* ``T^{-1}`` is entrywise non-negative with unit row and column sums: the solve conserves
  ``sum(b)`` exactly and keeps ``v`` inside ``[min b, max b]`` (maximum principle);
* its eigenvalues are ``>= 1``: ``||T^{-1}||_2 <= 1``.

:class:`TridiagonalSolve` differentiates by the adjoint solve: with ``v = T^{-1} b`` and an
upstream gradient ``g``, ``lambda = T^{-1} g`` (``T`` is symmetric: the same solver),
``dL/db = lambda`` and ``dL/da_f = -(lambda_f - lambda_{f+1}) (v_f - v_{f+1})``. Only ``a``
and ``v`` are saved; nothing of the elimination is stored, so backward memory does not grow
with the number of sweeps of the recurrence.

Layout: the solve axis is dimension 0 (``a`` has ``n - 1`` entries there, ``b`` has ``n``);
all other dimensions are independent lines, processed at once.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def thomas(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``T v = b`` along dimension 0 (no autograd bookkeeping of its own).

    Parameters
    ----------
    a:
        ``(n - 1, ...)`` non-negative face coefficients.
    b:
        ``(n, ...)`` right-hand sides (same trailing shape as ``a``).
    """
    n = b.shape[0]
    if n == 1:
        return b.clone()
    # Forward elimination. c_i = a_i / m_i is the multiplier of v_{i+1} in row i after
    # elimination (v_i = y_i + c_i v_{i+1}); m_i is the pivot.
    m = 1.0 + a[0]
    c = a[0] / m
    y = b[0] / m
    cs = [c]
    ys = [y]
    for i in range(1, n):
        a_lo = a[i - 1]
        m = 1.0 + a_lo * (1.0 - c)
        if i < n - 1:
            m = m + a[i]
        y = (b[i] + a_lo * y) / m
        ys.append(y)
        if i < n - 1:
            c = a[i] / m
            cs.append(c)
    # Back substitution.
    v = ys[n - 1]
    out = [v]
    for i in range(n - 2, -1, -1):
        v = ys[i] + cs[i] * v
        out.append(v)
    out.reverse()
    return torch.stack(out, dim=0)


def _before(t: torch.Tensor, s: int, pad: torch.Tensor) -> torch.Tensor:
    """``t_{i - s}`` along dimension 0, ``pad`` (``s`` rows) before the start."""
    return torch.cat([pad, t[:-s]])


def _after(t: torch.Tensor, s: int, pad: torch.Tensor) -> torch.Tensor:
    """``t_{i + s}`` along dimension 0, ``pad`` (``s`` rows) past the end."""
    return torch.cat([t[s:], pad])


def cyclic_reduction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``T v = b`` along dimension 0 by parallel cyclic reduction (same arguments and
    result as :func:`thomas`).

    Each of the ``ceil(log2 n)`` levels eliminates, in every row ``i`` at once, the
    couplings to rows ``i - s`` and ``i + s`` (``s = 1, 2, 4, ...``), after which every row
    is decoupled and ``v = r / d``. ``O(n log n)`` work in ``O(log n)`` vectorised steps of
    about 20 elementwise ops: no Python loop over the cells, so a GPU runs a fixed number of
    kernels per level and ``torch.compile`` traces a graph that grows with ``log n`` only.
    ``T`` is symmetric and strictly diagonally dominant, which keeps every reduced system
    so (no pivoting needed; agrees with :func:`thomas` to rounding, tested).
    """
    n = b.shape[0]
    if n == 1:
        return b.clone()
    zero = a[:1] * 0.0
    lo = torch.cat([zero, -a])  # row i couples to i - 1 with -a_{i-1}
    up = torch.cat([-a, zero])  # and to i + 1 with -a_i
    d = 1.0 + torch.cat([zero, a]) + torch.cat([a, zero])
    r = b
    s = 1
    while s < n:
        pad0 = torch.zeros_like(d[:s])
        pad1 = pad0 + 1.0
        alpha = -lo / _before(d, s, pad1)
        beta = -up / _after(d, s, pad1)
        d = d + alpha * _before(up, s, pad0) + beta * _after(lo, s, pad0)
        r = r + alpha * _before(r, s, pad0) + beta * _after(r, s, pad0)
        lo = alpha * _before(lo, s, pad0)
        up = beta * _after(up, s, pad0)
        s *= 2
    return r / d


class TridiagonalSolve(torch.autograd.Function):
    """``v = T(a)^{-1} b`` along dimension 0, backward by the adjoint (same) solve."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: D102
        v = thomas(a, b)
        ctx.save_for_backward(a, v)
        return v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_v: torch.Tensor):  # noqa: D102
        a, v = ctx.saved_tensors
        lam = thomas(a, grad_v.contiguous())
        grad_a = None
        if ctx.needs_input_grad[0]:
            grad_a = -(lam[:-1] - lam[1:]) * (v[:-1] - v[1:])
        return grad_a, lam


def solve_along(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Solve ``T(a) v = b`` along tensor dimension ``dim`` (``a`` has one entry fewer there)."""
    if b.shape[dim] == 1:
        return b
    a0 = a.movedim(dim, 0).contiguous()
    b0 = b.movedim(dim, 0).contiguous()
    return TridiagonalSolve.apply(a0, b0).movedim(0, dim)
