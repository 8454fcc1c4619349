"""The AOS diffusion step in vectorised torch: the ``torch`` backend, on any device.

:func:`diffusion_forward_torch` is plain differentiable torch (autograd can differentiate
it: the tests use it as the oracle of the other backends' hand-written backwards);
:func:`diffusion_backward_torch` is the hand-written backward the block uses on this
backend (adjoint solve, nothing of the elimination stored).

The tridiagonal solves (:data:`SOLVERS`, per device type): on the CPU the Thomas loop over
the grid (:func:`~nnunet_pde.pde.tridiagonal.thomas`: least work, and the results the CPU
always had); on every other device parallel cyclic reduction
(:func:`~nnunet_pde.pde.tridiagonal.cyclic_reduction`: ``log2 n`` vectorised levels, no
per-cell loop, so it stays usable on a GPU without Triton and under ``torch.compile``).
CUDA normally runs the Triton kernels (:mod:`.triton_aos`) instead.
"""

from __future__ import annotations

import torch

from ..stencils import pad_faces
from ..tridiagonal import cyclic_reduction, thomas

#: Tridiagonal solver of the torch backend per device type (others: cyclic reduction).
SOLVERS = {"cpu": thomas}


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-channel ``(C,)`` -> ``(1, C, 1, ..., 1)``."""
    return t.reshape(1, -1, *([1] * ndim))


def _solve(a: torch.Tensor, rhs: torch.Tensor, axis: int) -> torch.Tensor:
    solve = SOLVERS.get(rhs.device.type, cyclic_reduction)
    return solve(a.movedim(axis, 0).contiguous(), rhs.movedim(axis, 0).contiguous()).movedim(
        0, axis
    )


def _axis_terms(u, b, cA, ce, k, d):
    """``(delta, phi, a, rhs)`` of spatial axis ``d`` (faces along it have one entry fewer)."""
    ndim = u.ndim - 2
    ax = 2 + d
    delta = torch.diff(u, dim=ax)
    if k is None:
        phi = torch.ones_like(delta)
    else:
        s = delta * channel_view(k[d], ndim)
        phi = 1.0 / (1.0 + s * s)
    a = channel_view(cA[d], ndim) * phi
    rhs = b
    if ce is not None:
        rhs = b + pad_faces(channel_view(ce[d], ndim) * phi * delta, d).diff(dim=ax)
    return delta, phi, a, rhs


def diffusion_forward_torch(u, b, cA, ce, k) -> torch.Tensor:
    """Torch implementation of :func:`~nnunet_pde.pde.native.diffusion_forward` (any device)."""
    m = u.ndim - 2
    out = None
    for d in range(m):
        if u.shape[2 + d] == 1:
            v = b
        else:
            _, _, a, rhs = _axis_terms(u, b, cA, ce, k, d)
            v = _solve(a, rhs, 2 + d)
        out = v if out is None else out + v
    assert out is not None
    return out / m


def diffusion_backward_torch(u, b, g, cA, ce, k) -> tuple[torch.Tensor, ...]:
    """Torch implementation of :func:`~nnunet_pde.pde.native.diffusion_backward` (``gu``
    includes ``gb``)."""
    m = u.ndim - 2
    ndim = m
    gb = torch.zeros_like(u)
    gu = torch.zeros_like(u)
    grads = torch.zeros((3, m, u.shape[1]), dtype=u.dtype, device=u.device)
    gm = g / m
    for d in range(m):
        ax = 2 + d
        if u.shape[ax] == 1:
            gb = gb + gm
            continue
        dims = (0, *range(2, u.ndim))
        delta, phi, a, rhs = _axis_terms(u, b, cA, ce, k, d)
        v = _solve(a, rhs, ax)
        lam = _solve(a, gm, ax)
        gb = gb + lam
        mu = -torch.diff(lam, dim=ax)
        nu = -torch.diff(v, dim=ax)
        gphi = -channel_view(cA[d], ndim) * mu * nu
        gdelta = torch.zeros_like(delta)
        grads[0, d] = (-phi * mu * nu).sum(dim=dims)
        if ce is not None:
            gphi = gphi + channel_view(ce[d], ndim) * mu * delta
            grads[1, d] = (phi * delta * mu).sum(dim=dims)
            gdelta = gdelta + channel_view(ce[d], ndim) * mu * phi
        if k is not None:
            s = delta * channel_view(k[d], ndim)
            gs = gphi * (-2.0 * s * phi * phi)
            grads[2, d] = (delta * gs).sum(dim=dims)
            gdelta = gdelta + channel_view(k[d], ndim) * gs
        gu = gu - pad_faces(gdelta, d).diff(dim=ax)
    return gb, gu + gb, grads[0], grads[1], grads[2]


# --------------------------------------------------------------------------- custom ops
