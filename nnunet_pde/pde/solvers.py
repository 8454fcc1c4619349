"""One time step of the diffusion part of a PDE block, per solver.

Notation (spatial axes ``d = 1..m``, tensors ``(B, C, *S)``): ``A = sum_d A_d`` is the
flux-form conductance operator with face weights ``w_d`` lagged at ``u^n`` (an M-matrix
generator: symmetric, non-positive diagonal ``-S``, non-negative neighbour weights,
columns summing to 0); ``b = u^n + tau N(u^n)`` carries the explicit (IMEX) reaction.

* :func:`aos_step` (``semi_implicit``, ``theta = 1``; ``crank_nicolson``, ``theta = 1/2``)::

      u^{n+1} = (1/m) sum_d (I - m theta tau A_d)^{-1} (b + m (1 - theta) tau A_d u^n)

  one exact tridiagonal solve per axis (:mod:`~nnunet_pde.pde.tridiagonal`). Additive
  operator splitting (Weickert, ter Haar Romeny, Viergever 1998): every term is
  symmetric, so the average is translation-equivariant and mass-conserving, and for
  ``theta = 1`` every term is a convex combination of ``b`` (maximum principle) for any
  ``tau``.
* :func:`explicit_step`: ``u^{n+1} = b + tau A u^n``.
* :func:`sweep_step` (``jacobi``, ``gauss_seidel``): ``J`` (damped) Jacobi or red-black
  Gauss-Seidel sweeps of the *unsplit* system ``(I - tau A) v = b`` started from ``u^n``.
  One undamped Jacobi sweep is ``u + tau (A u + tau^{-1}(b - u)) / (1 + tau S)``: a
  per-voxel rescaled explicit step, not an implicit solve.

All functions are branch-free on tensor values (compile friendly); ``tau`` is per channel
``(1, C, 1, ..., 1)`` or a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .operators import apply_weights, axis_apply, neighbour_sum
from .tridiagonal import solve_along


def aos_step(
    u: torch.Tensor,
    b: torch.Tensor,
    interior: Sequence[torch.Tensor],
    tau: torch.Tensor,
    theta: float,
) -> torch.Tensor:
    """AOS theta-scheme step; ``interior[d]`` are the interior face weights along axis ``d``.

    ``theta = 1`` is the semi-implicit (backward Euler) AOS scheme, ``theta = 1/2``
    Crank-Nicolson on the same splitting.
    """
    m = len(interior)
    out = None
    for d, w in enumerate(interior):
        rhs = b
        if theta < 1.0:
            rhs = b + (m * (1.0 - theta)) * tau * axis_apply(u, w, d)
        v = solve_along((m * theta) * tau * w, rhs, 2 + d)
        out = v if out is None else out + v
    assert out is not None
    return out / m


def explicit_step(
    u: torch.Tensor, b: torch.Tensor, weights: Sequence[torch.Tensor], tau: torch.Tensor
) -> torch.Tensor:
    """Forward Euler: ``b + tau A u`` (``weights`` with boundary faces, see ``face_weights``)."""
    return b + tau * apply_weights(u, weights)


def jacobi_sweep(
    v: torch.Tensor,
    b: torch.Tensor,
    weights: Sequence[torch.Tensor],
    denom: torch.Tensor,
    tau: torch.Tensor,
    omega: float = 1.0,
) -> torch.Tensor:
    """One (damped) Jacobi sweep ``v <- (1 - omega) v + omega (b + tau N(v)) / (1 + tau S)``.

    ``denom = 1 + tau S``. For ``omega <= 1`` the result is a convex combination of ``v``,
    ``b`` and neighbour values of ``v``: no new extrema (maximum principle).
    """
    new = (b + tau * neighbour_sum(v, weights)) / denom
    if omega == 1.0:
        return new
    return v + omega * (new - v)


def red_black_sweep(
    v: torch.Tensor,
    b: torch.Tensor,
    weights: Sequence[torch.Tensor],
    denom: torch.Tensor,
    tau: torch.Tensor,
    red: torch.Tensor,
) -> torch.Tensor:
    """One red-black Gauss-Seidel sweep: all red cells, then all black cells.

    ``red`` is a checkerboard mask (:func:`~nnunet_pde.pde.stencils.checkerboard`); the
    7-point neighbours of a cell have the other colour, so each half-sweep is an exact
    sequential Gauss-Seidel update of its colour written as whole-tensor operations (black
    cells see the red cells' new values).
    """
    v = torch.where(red, jacobi_sweep(v, b, weights, denom, tau), v)
    return torch.where(red, v, jacobi_sweep(v, b, weights, denom, tau))


def sweep_step(
    u: torch.Tensor,
    b: torch.Tensor,
    weights: Sequence[torch.Tensor],
    diag: torch.Tensor,
    tau: torch.Tensor,
    iterations: int,
    method: str,
    omega: float = 1.0,
    red: torch.Tensor | None = None,
) -> torch.Tensor:
    """``iterations`` sweeps of ``(I - tau A) v = b`` from ``v = u``.

    Parameters
    ----------
    diag:
        ``S``, the total face weight per voxel (:func:`~nnunet_pde.pde.operators.diagonal`).
    method:
        ``"jacobi"`` (damped by ``omega``) or ``"gauss_seidel"`` (red-black, needs ``red``).
    """
    denom = 1.0 + tau * diag
    v = u
    for _ in range(iterations):
        if method == "gauss_seidel":
            assert red is not None, "red-black sweeps need the checkerboard mask"
            v = red_black_sweep(v, b, weights, denom, tau, red)
        else:
            v = jacobi_sweep(v, b, weights, denom, tau, omega)
    return v
