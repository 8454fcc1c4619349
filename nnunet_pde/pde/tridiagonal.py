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
