"""Memory-light autograd for the PDE block: fused AOS steps with hand-written backward.

The reference implementation (:func:`~nnunet_pde.pde.solvers.aos_step` and friends,
differentiated by autograd) keeps every intermediate of every step for backward: face
weights, right-hand sides, the slices of the recurrences, the reaction's activations. Here
each piece is one :class:`torch.autograd.Function` that saves only its *input* and the
per-channel parameters and recomputes the rest in backward:

* :class:`AOSStep`: one diffusion-reaction step ``u -> (1/m) sum_d T_d^{-1} (b + ce_d A_d
  u)`` with ``b = u + tau N(u)`` (semi-implicit ``theta = 1``: ``ce = None``; Crank-Nicolson
  ``theta = 1/2``). Saves ``u``. Backward recomputes the face weights ``phi``, the reaction
  (``b`` and the hidden activation ``h``; ``N`` is never needed) and the elimination, and
  solves the adjoint system with the same multipliers (``T_d`` is symmetric). On the CPU
  the per-axis work runs in the compiled kernels of :mod:`~nnunet_pde.pde.native` (face
  weights, right-hand side, Thomas elimination and back substitution in one pass over
  each grid line); elsewhere, or without a C compiler, in the vectorised torch
  implementation of this module (same formulas, tested equal).
* :class:`Standardise`: ``x -> ((x - mean) / std, mean, std)`` per sample and channel;
  saves its output and ``std``.
* :class:`EdgeEnergy`: the regulariser :func:`~nnunet_pde.pde.block.edge_energy`; saves its
  input.
* :class:`GatedResidual`: the block's output and (in training) the regulariser of ``u_K``
  in one function; saves ``u_K`` and ``x_hat``.

With ``K`` steps a training forward of a block therefore saves ``x_hat, u_1, ..., u_K``:
``K + 1`` feature maps (the gated output needs ``u_K`` and ``x_hat``).

Shapes: ``u`` is ``(B, C, *S)`` (``S`` = ``(D, H, W)`` or ``(H, W)``); per-axis parameters
are ``(m, C)`` with ``m = len(S)``; per-channel ones ``(C,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import native
from .kernels import backend, ops, spec, triton_ops
from .kernels.ops import Kernel
from .kernels.torch_aos import channel_view as _view
from .kernels.torch_aos import diffusion_backward_torch, diffusion_forward_torch
from .tail import (
    EdgeEnergy,
    GatedResidual,
    Standardise,
    gate_coefficients,
    standardise_grad,
    standardise_values,
    tail_backward,
    tail_forward,
)


def diffusion_forward(u, b, cA, ce, k) -> torch.Tensor:
    """``(1/m) sum_d T_d^{-1} (b + ce_d A_d u)`` on the backend chosen for ``u``: the custom
    op ``nnunet_pde::aos_diffusion`` (C or Triton), else the torch implementation."""
    if backend.name(u) == "torch":
        return diffusion_forward_torch(u, b, cA, ce, k)
    return ops.aos_diffusion(u, b, cA, ce, k)


def diffusion_backward(u, b, g, cA, ce, k) -> tuple[torch.Tensor, ...]:
    """Backward of :func:`diffusion_forward`: ``(gb, gu, gcA, gce, gk)``; ``gu`` is the
    gradient through the face weights and the explicit half plus ``gb`` (all of ``dL/du``
    where ``b = u``). With the C kernels in eager mode ``gb`` is a per-thread scratch
    buffer, overwritten by the next call: use it before calling again."""
    if backend.name(u) == "torch":
        return diffusion_backward_torch(u, b, g, cA, ce, k)
    return ops.aos_diffusion_backward(u, b, g, cA, ce, k)


# --------------------------------------------------------------------------- the step


def _conv(ndim: int):
    return F.conv3d if ndim == 3 else F.conv2d


def _response_torch(u, w1, b1, w2, b2):
    """``(h, N)``: hidden activation ``tanh(W1 u + b1)`` and ``N = W2 h + b2`` (1x1 convs)."""
    conv = _conv(u.ndim - 2)
    h = torch.tanh(conv(u, w1, b1))
    return h, conv(h, w2, b2)


_response_b_kernel = Kernel(
    spec.RESPONSE_B,
    lambda *args: native.response_forward(*args)[0],  # b only
    # eager: b in a scratch buffer (AOSStep consumes it in the same call)
    eager=lambda *args: native.response_forward(*args, scratch=True)[0],
)
_response_bh_kernel = Kernel(
    spec.RESPONSE_BH,
    lambda *args: native.response_forward(*args, hidden=True),
    # eager: b and h in scratch buffers (AOSStep.backward consumes both in the same call)
    eager=lambda *args: native.response_forward(*args, hidden=True, scratch=True),
)
_response_backward_kernel = Kernel(
    spec.RESPONSE_BACKWARD,
    native.response_backward,
    # eager: dL/du overwrites gu_in (a temporary of AOSStep.backward), one allocation less
    eager=lambda *args: native.response_backward(*args, inplace=True),
)


def response_b(u, tau, w1, b1, w2, b2) -> torch.Tensor:
    """``b = u + tau N(u)`` (compiled kernel where possible; in eager mode it returns a
    per-thread scratch buffer, overwritten by the next call)."""
    if backend.uses_c(u):
        return _response_b_kernel(u, w1, b1, w2, b2, tau)
    _, n = _response_torch(u, w1, b1, w2, b2)
    return u + _view(tau, u.ndim - 2) * n


def response_backward_torch(u, h, n, gb, gu_in, tau, w1, w2) -> tuple[torch.Tensor, ...]:
    """Backward of ``b = u + tau N(u)`` for ``dL/db = gb`` from the forward's ``h =
    tanh(W1 u + b1)`` and ``N``: ``(gu, gw1, gb1, gw2, gb2, gtau)`` (the order of
    :func:`~nnunet_pde.pde.native.response_backward`) with ``gu = gu_in + W1^T
    gpre``, ``gpre = (W2^T (tau gb)) (1 - h^2)`` (torch; what the kernel computes)."""
    ndim = gb.ndim - 2
    conv = _conv(ndim)
    dims = (0, *range(2, gb.ndim))
    gtau = (gb * n).sum(dim=dims)
    gn = _view(tau, ndim) * gb
    # The transposed 1x1 maps as convolutions: matmul of a matrix with a batch would
    # transpose and copy both operands.
    gpre = conv(gn, w2.transpose(0, 1).contiguous())
    gpre = torch.addcmul(gpre, gpre * h, h, value=-1.0)  # * (1 - h^2)
    gu = gu_in + conv(gpre, w1.transpose(0, 1).contiguous())
    # Weight gradients: sums over voxels of outer products, as batched matmuls.
    gnf, hf, gpf = gn.flatten(2), h.flatten(2), gpre.flatten(2)
    gw2 = torch.bmm(gnf, hf.transpose(1, 2)).sum(dim=0).reshape(w2.shape)
    gw1 = torch.bmm(gpf, u.flatten(2).transpose(1, 2)).sum(dim=0).reshape(w1.shape)
    return gu, gw1, gpf.sum(dim=(0, 2)), gw2, gnf.sum(dim=(0, 2)), gtau


def _step_forward(u, tau, cA, ce, k, w1, b1, w2, b2) -> torch.Tensor:
    """One step's output (see :class:`AOSStep`)."""
    b = u if w1 is None else response_b(u, tau, w1, b1, w2, b2)
    return diffusion_forward(u, b, cA, ce, k)


def _step_backward(u, g, tau, cA, ce, k, w1, b1, w2, b2, out_slot: str | None = None):
    """``(gu, gtau, gcA, gce, gk, gw1, gb1, gw2, gb2)`` of one step for upstream ``g`` (the
    reaction's gradients ``None`` without one). With the compiled kernels in eager mode and
    ``out_slot``, ``gu`` is the scratch buffer of that name (not ``g``'s)."""
    native_path = backend.uses_c(u)
    b = u
    h = n = None
    if w1 is not None:
        if native_path:
            # h as well: the reaction's backward reads it instead of recomputing it
            b, h = _response_bh_kernel(u, w1, b1, w2, b2, tau)
        else:
            h, n = _response_torch(u, w1, b1, w2, b2)
            b = u + _view(tau, u.ndim - 2) * n
    g = g.contiguous()
    if native_path and out_slot is not None and not torch.compiler.is_compiling():
        gb, gu, gcA, gce, gk = native.diffusion_backward(
            u, b, g, cA, ce, k, scratch=True, out_slot=out_slot
        )
    else:
        gb, gu, gcA, gce, gk = diffusion_backward(u, b, g, cA, ce, k)
    gtau = gw1 = gb1 = gw2 = gb2 = None
    if w1 is not None:
        if native_path:
            gu, gw1, gb1, gw2, gb2, gtau = _response_backward_kernel(u, gb, gu, h, w1, w2, b2, tau)
        else:
            gu, gw1, gb1, gw2, gb2, gtau = response_backward_torch(u, h, n, gb, gu, tau, w1, w2)
    return (
        gu,
        gtau,
        gcA,
        gce if ce is not None else None,
        gk if k is not None else None,
        gw1,
        gb1,
        gw2,
        gb2,
    )


class AOSStep(torch.autograd.Function):
    """One fused AOS diffusion-reaction step; see the module docstring.

    Inputs: ``u`` ``(B, C, *S)``; ``tau`` ``(C,)`` (the step of the reaction); ``cA``
    ``(m, C)`` = ``m theta tau alpha / h_d^2``; ``ce`` ``(m, C)`` = ``m (1 - theta) tau alpha
    / h_d^2`` or ``None`` (``theta = 1``); ``k`` ``(m, C)`` = ``1 / (h_d kappa)`` or ``None``
    (linear Laplacian); ``w1, b1, w2, b2`` the reaction's 1x1 convolution weights (``None``
    without a reaction). All in ``u``'s dtype.
    """

    @staticmethod
    def forward(ctx, u, tau, cA, ce, k, w1, b1, w2, b2):  # noqa: D102
        ctx.save_for_backward(u, tau, cA, ce, k, w1, b1, w2, b2)
        return _step_forward(u, tau, cA, ce, k, w1, b1, w2, b2)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: D102
        return _step_backward(ctx.saved_tensors[0], g, *ctx.saved_tensors[1:])


def step_coefficients(
    u: torch.Tensor,
    tau: torch.Tensor,
    alpha: torch.Tensor,
    kappa: torch.Tensor | None,
    spacing: Sequence[float],
    theta: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(cA, ce, k)`` ``(m, C)`` of :class:`AOSStep` from the per-channel ``tau``,
    ``alpha``, ``kappa`` ``(C,)`` (``kappa`` ``None``: linear Laplacian), the normalised
    ``spacing`` and ``theta`` (in ``u``'s dtype and device)."""
    m = len(spacing)
    # Python numbers times tensors: no tensor built from host data (no host-device copy)
    base = torch.stack([(tau * alpha) * (1.0 / (h * h)) for h in spacing])  # (m, C)
    cA = (m * theta) * base
    ce = (m * (1.0 - theta)) * base if theta < 1.0 else None
    k = None
    if kappa is not None:
        inv_kappa = 1.0 / kappa
        k = torch.stack([inv_kappa * (1.0 / h) for h in spacing])
    return cA, ce, k


class FusedBlock(torch.autograd.Function):
    """A whole block's forward, ``x -> (y, E)``, when every step is fused: the
    standardisation (:class:`Standardise`), ``steps`` :class:`AOSStep` steps and the tail
    (:class:`GatedResidual`) in one function, with the same formulas and saved tensors
    (``x_hat, u_1, ..., u_K``).

    Being one function, its backward owns every gradient between its input and its output:
    the gradients of ``u_K, ..., u_1`` alternate between two per-thread scratch buffers in
    eager mode on the CPU (instead of a fresh feature map per step), the per-channel
    parameter gradients of the steps are summed here, and ``dL/dx`` (the standardisation's
    backward plus the gate's ``(1 - gamma) gy``) is formed by one kernel pass instead of two
    maps added by autograd.

    Inputs: ``x`` ``(B, C, *S)``; ``gamma`` ``(C,)``; ``tau, cA, ce, k, w1, b1, w2, b2`` as
    for :class:`AOSStep` (shared by all steps); ``steps`` ``K >= 1``; ``spacing`` the
    normalised spacing; ``eps`` the variance floor; ``energy`` whether ``E`` is computed;
    ``keep`` whether a backward may follow (False under ``torch.no_grad``: only the current
    state is kept).
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx, x, gamma, tau, cA, ce, k, w1, b1, w2, b2, steps: int, spacing, eps, energy, keep=True
    ):
        ctx.steps, ctx.spacing, ctx.energy = steps, spacing, energy
        ctx.triton = backend.name(x) == "triton"
        if ctx.triton:  # every pass a Triton kernel (kernels/triton_ops.py)
            y, total, saved = triton_ops.block_forward(
                x, gamma, tau, cA, ce, k, w1, b1, w2, b2, steps, spacing, eps, energy, keep
            )
            if saved is not None:
                ctx.save_for_backward(*saved, tau, cA, ce, k, w1, b1, w2, b2)
            return y, total
        x_hat, mean, std = standardise_values(x, eps)
        # without a backward to come (``keep`` False: inference) each state is dropped once
        # the next exists (``ctx.needs_input_grad`` cannot tell: it ignores the grad mode)
        u, us = x_hat, [x_hat]
        for _ in range(steps):
            u = _step_forward(u, tau, cA, ce, k, w1, b1, w2, b2)
            if keep:
                us.append(u)
        y, total, e_mean, e_inv_std = tail_forward(x, u, gamma, mean, std, spacing, eps, energy)
        if keep:
            ctx.save_for_backward(
                *us, gamma, mean, std, e_mean, e_inv_std, tau, cA, ce, k, w1, b1, w2, b2
            )
        return y, total

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_energy):  # noqa: D102
        K = ctx.steps
        saved = ctx.saved_tensors
        if ctx.triton:
            grads = triton_ops.block_backward(
                saved[: K + 6], saved[K + 6 :], K, ctx.spacing, ctx.energy, gy, g_energy
            )
            return (*grads, None, None, None, None, None)
        us, tail, params = saved[: K + 1], saved[K + 1 : K + 6], saved[K + 6 :]
        x_hat = us[0]
        slots = ("fused_block_g0", "fused_block_g1")
        _, g_u, ggamma, gmean, gstd = tail_backward(
            gy, us[-1], x_hat, *tail, g_energy, ctx.spacing, ctx.energy, False, slots[0]
        )
        grads: list[torch.Tensor | None] | None = None
        for i in range(K - 1, -1, -1):
            out = _step_backward(us[i], g_u, *params, out_slot=slots[(K - i) % 2])
            g_u = out[0]
            if grads is None:
                grads = list(out[1:])
            else:
                grads = [None if p is None else p + q for p, q in zip(grads, out[1:], strict=True)]
        assert grads is not None
        gamma, mean, std = tail[:3]
        a = gate_coefficients(gamma, mean, std)[0]
        dx = standardise_grad(x_hat, std, g_u, gmean, gstd, gy.contiguous(), a)
        gtau, gcA, gce, gk, gw1, gb1, gw2, gb2 = grads
        return dx, ggamma, gtau, gcA, gce, gk, gw1, gb1, gw2, gb2, None, None, None, None, None


__all__ = [
    "AOSStep",
    "EdgeEnergy",
    "FusedBlock",
    "GatedResidual",
    "Standardise",
    "step_coefficients",
]
