"""Sweeps for the linear system of an implicit step, ``(1 + theta S) v - theta N(v) = b``.

The system matrix is ``I - theta A`` with ``A v = N(v) - S v`` the conductance operator
(``N`` = weighted neighbour sum, ``S`` = total face weight of a voxel, both from
:mod:`~nnunet_pde.pde.operators`). It is an M-matrix with ``theta S / (1 + theta S) < 1``
row sums of the Jacobi iteration matrix, so:

* a sweep writes each ``v(x)`` as a convex combination of ``b(x)`` and neighbour values,
  hence no sweep creates new extrema (maximum principle) for any ``theta >= 0``;
* Jacobi and red-black Gauss-Seidel contract the error in the max norm every sweep, so the
  iterates approach the exact solve monotonically as the number of sweeps ``J`` grows.

All functions are branch-free on tensor values (compile friendly); ``theta`` may be a
scalar tensor or per channel ``(1, C, 1, ..., 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .operators import neighbour_sum


def jacobi_sweep(
    v: torch.Tensor,
    b: torch.Tensor,
    weights: Sequence[torch.Tensor],
    denom: torch.Tensor,
    theta: torch.Tensor,
) -> torch.Tensor:
    """One Jacobi sweep ``v <- (b + theta N(v)) / (1 + theta S)``; ``denom = 1 + theta S``."""
    return (b + theta * neighbour_sum(v, weights)) / denom


def red_black_sweep(
    v: torch.Tensor,
    b: torch.Tensor,
    weights: Sequence[torch.Tensor],
    denom: torch.Tensor,
    theta: torch.Tensor,
    red: torch.Tensor,
) -> torch.Tensor:
    """One red-black Gauss-Seidel sweep: Jacobi on red cells, then on black cells.

    ``red`` is a checkerboard mask (:func:`~nnunet_pde.pde.stencils.checkerboard`); the
    neighbours of a cell have the other colour, so each half-sweep is an exact Gauss-Seidel
    update of its colour written as whole-tensor operations.
    """
    v = torch.where(red, jacobi_sweep(v, b, weights, denom, theta), v)
    return torch.where(red, v, jacobi_sweep(v, b, weights, denom, theta))


def solve(
    v0: torch.Tensor,
    b: torch.Tensor,
    weights: Sequence[torch.Tensor],
    diag: torch.Tensor,
    theta: torch.Tensor,
    iterations: int,
    method: str,
    red: torch.Tensor | None = None,
) -> torch.Tensor:
    """Approximate ``(I - theta A) v = b`` with ``iterations`` sweeps starting from ``v0``.

    Parameters
    ----------
    diag:
        ``S``, the total face weight per voxel (:func:`~nnunet_pde.pde.operators.diagonal`).
    method:
        ``"jacobi"`` or ``"red_black"`` (needs ``red``).
    """
    denom = 1.0 + theta * diag
    v = v0
    for _ in range(iterations):
        if method == "red_black":
            assert red is not None, "red-black sweeps need the checkerboard mask"
            v = red_black_sweep(v, b, weights, denom, theta, red)
        else:
            v = jacobi_sweep(v, b, weights, denom, theta)
    return v


def residual(
    v: torch.Tensor,
    b: torch.Tensor,
    weights: Sequence[torch.Tensor],
    diag: torch.Tensor,
    theta: torch.Tensor,
) -> torch.Tensor:
    """``r = (I - theta A) v - b``: zero only for the exact solution of the step."""
    return (1.0 + theta * diag) * v - theta * neighbour_sum(v, weights) - b
