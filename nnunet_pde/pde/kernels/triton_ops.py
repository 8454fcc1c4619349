"""The ``triton`` backend's kernels of the whole block as ``torch.library`` custom ops (one
opaque node each under ``torch.compile``; see :mod:`.ops`), and the block's forward and
backward on them (:func:`block_forward`, :func:`block_backward`, called by
:class:`~nnunet_pde.pde.fused.FusedBlock` where :func:`.backend.choose` picks ``triton``).

Launches per training step of a block with ``K`` steps, reaction and regulariser (each
Triton launch is one kernel; :func:`.launches.count` estimates them):

* forward: parameters 1, standardisation 2, per step reaction 1 + AOS ``m``, gate and
  energy 2, and the sum of the per-chunk energy terms 1: ``6 + K (m + 1)``;
* backward: gate and energy 2, per step reaction 1 + AOS ``m`` + reaction backward 1 + sum
  of the partial sums 1 (the steps' parameter gradients accumulate in it),
  standardisation 2, the sum over samples of ``dL/dgamma`` 1, parameters 1: ``6 + K (m +
  3)``.

The ``c`` and ``torch`` backends never call these ops.
"""

from __future__ import annotations

import math

import torch

from . import triton_aos, triton_reaction, triton_tail
from .ops import Kernel

# --------------------------------------------------------------------------- parameters


def _coef_impl(
    logit: torch.Tensor,
    alpha_raw: torch.Tensor,
    kappa_raw: torch.Tensor | None,
    spacing: list[float],
    tau_max: float,
    rate: float,
    theta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_reaction.coefficients(logit, alpha_raw, kappa_raw, spacing, tau_max, rate, theta)


def _coef_fake(logit, alpha_raw, kappa_raw, spacing, tau_max, rate, theta):
    mc = (len(spacing), alpha_raw.shape[0])
    return (
        torch.empty_like(alpha_raw),
        alpha_raw.new_empty(mc),
        alpha_raw.new_empty(mc if theta < 1.0 else (0,)),
        alpha_raw.new_empty(mc if kappa_raw is not None else (0,)),
    )


coefficients_kernel = Kernel("triton_coefficients", _coef_impl, _coef_fake, devices=None)


def _coef_backward_impl(
    logit: torch.Tensor,
    alpha_raw: torch.Tensor,
    kappa_raw: torch.Tensor | None,
    gts: torch.Tensor,
    gcA: torch.Tensor,
    gce: torch.Tensor | None,
    gk: torch.Tensor | None,
    spacing: list[float],
    tau_max: float,
    rate: float,
    theta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_reaction.coefficients_backward(
        logit, alpha_raw, kappa_raw, gts, gcA, gce, gk, spacing, tau_max, rate, theta
    )


def _coef_backward_fake(logit, alpha_raw, kappa_raw, gts, gcA, gce, gk, *args):
    return torch.empty_like(logit), torch.empty_like(alpha_raw), torch.empty_like(alpha_raw)


coefficients_backward_kernel = Kernel(
    "triton_coefficients_backward", _coef_backward_impl, _coef_backward_fake, devices=None
)


class Coefficients(torch.autograd.Function):
    """``(tau, cA, ce, k)`` of :func:`~.triton_reaction.coefficients` from the raw parameters
    ``logit`` (0-d), ``alpha_raw``, ``kappa_raw`` ``(C,)`` (or ``None``): one launch forward,
    one backward. ``ce``/``k`` are empty where absent (``theta = 1``, no ``kappa_raw``)."""

    @staticmethod
    def forward(ctx, logit, alpha_raw, kappa_raw, spacing, tau_max, rate, theta):  # noqa: D102
        ctx.save_for_backward(logit, alpha_raw, kappa_raw)
        ctx.args = (list(spacing), float(tau_max), float(rate), float(theta))
        ctx.set_materialize_grads(False)  # no zero-filled gradients for empty outputs
        return coefficients_kernel(logit, alpha_raw, kappa_raw, *ctx.args)

    @staticmethod
    def backward(ctx, gts, gcA, gce, gk):  # noqa: D102
        logit, alpha_raw, kappa_raw = ctx.saved_tensors
        spacing, tau_max, rate, theta = ctx.args
        if gts is None:  # tau unused (no reaction)
            gts = torch.zeros_like(alpha_raw)
        if gcA is None:
            gcA = alpha_raw.new_zeros((len(spacing), alpha_raw.shape[0]))
        glogit, gar, gkr = coefficients_backward_kernel(
            logit,
            alpha_raw,
            kappa_raw,
            gts.contiguous(),
            gcA.contiguous(),
            gce.contiguous() if theta < 1.0 and gce is not None else None,
            gk.contiguous() if kappa_raw is not None and gk is not None else None,
            spacing,
            tau_max,
            rate,
            theta,
        )
        return glogit, gar, gkr if kappa_raw is not None else None, None, None, None, None


def coefficients(logit, alpha_raw, kappa_raw, spacing, tau_max: float, rate: float, theta: float):
    """``(tau, cA, ce, k)`` of :class:`~nnunet_pde.pde.fused.AOSStep` (``ce``/``k`` ``None``
    where absent), differentiable, in ``alpha_raw``'s dtype (see :class:`Coefficients`)."""
    ts, cA, ce, k = Coefficients.apply(
        logit, alpha_raw, kappa_raw, tuple(spacing), tau_max, rate, theta
    )
    return ts, cA, ce if theta < 1.0 else None, k if kappa_raw is not None else None


# --------------------------------------------------------------------------- maps


def _standardise_impl(
    x: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_tail.standardise_forward(x, eps)


def _standardise_fake(x, eps):
    stat = (x.shape[0], x.shape[1], *([1] * (x.ndim - 2)))
    cdt = triton_tail.compute_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty(stat, dtype=cdt), x.new_empty(stat, dtype=cdt)


standardise_kernel = Kernel(
    "triton_standardise", _standardise_impl, _standardise_fake, devices=None
)


def _response_b_impl(
    u: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    tau: torch.Tensor,
) -> torch.Tensor:
    return triton_reaction.response_b(u, w1, b1, w2, b2, tau)


def _response_b_fake(u, w1, b1, w2, b2, tau):
    return torch.empty_like(u)


response_b_kernel = Kernel("triton_response_b", _response_b_impl, _response_b_fake, devices=None)


def _tail_forward_impl(
    x: torch.Tensor,
    u: torch.Tensor,
    gamma: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    spacing: list[float],
    eps: float,
    energy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_tail.tail_forward(x, u, gamma, mean, std, spacing, eps, energy)


def _tail_forward_fake(x, u, gamma, mean, std, spacing, eps, energy):
    cdt = triton_tail.compute_dtype(x.dtype)
    stat = mean.shape if energy else (0,)
    nchunk = triton_tail.chunks(math.prod(x.shape[2:]))
    esum = x.new_empty((*x.shape[:2], nchunk) if energy else (0,), dtype=cdt)
    return torch.empty_like(x), esum, x.new_empty(stat, dtype=cdt), x.new_empty(stat, dtype=cdt)


tail_forward_kernel = Kernel(
    "triton_tail_forward", _tail_forward_impl, _tail_forward_fake, devices=None
)


def _tail_backward_impl(
    gy: torch.Tensor,
    u: torch.Tensor,
    x_hat: torch.Tensor,
    gamma: torch.Tensor,
    std: torch.Tensor,
    e_mean: torch.Tensor,
    e_inv: torch.Tensor,
    g_energy: torch.Tensor,
    spacing: list[float],
    energy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_tail.tail_backward(
        gy, u, x_hat, gamma, std, e_mean, e_inv, g_energy, spacing, energy
    )


def _tail_backward_fake(gy, u, x_hat, gamma, std, e_mean, e_inv, g_energy, spacing, energy):
    nchunk = triton_tail.chunks(math.prod(gy.shape[2:]))
    return torch.empty_like(gy), gy.new_empty((*gy.shape[:2], nchunk, 5), dtype=torch.float64)


tail_backward_kernel = Kernel(
    "triton_tail_backward", _tail_backward_impl, _tail_backward_fake, devices=None
)


def _standardise_backward_impl(
    x_hat: torch.Tensor,
    std: torch.Tensor,
    g_hat: torch.Tensor,
    S: torch.Tensor,
    gamma: torch.Tensor,
    gy: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_tail.standardise_backward(x_hat, std, g_hat, S, gamma, gy)


def _standardise_backward_fake(x_hat, std, g_hat, S, gamma, gy):
    return torch.empty_like(x_hat), std.new_empty(x_hat.shape[:2])


standardise_backward_kernel = Kernel(
    "triton_standardise_backward",
    _standardise_backward_impl,
    _standardise_backward_fake,
    devices=None,
)


def _step_backward_impl(
    u: torch.Tensor,
    g: torch.Tensor,
    tau: torch.Tensor,
    cA: torch.Tensor,
    ce: torch.Tensor | None,
    k: torch.Tensor | None,
    w1: torch.Tensor | None,
    b1: torch.Tensor | None,
    w2: torch.Tensor | None,
    b2: torch.Tensor | None,
    acc: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/du, G)`` of one fused step for upstream ``g``: ``G`` the flat parameter gradient
    (:func:`~.triton_reaction.gradient_layout`) plus ``acc``."""
    B, C = u.shape[:2]
    b = u if w1 is None else triton_reaction.response_b(u, w1, b1, w2, b2, tau)
    if u.numel() == 0:
        hidden = None if w1 is None else w1.shape[0]
        size = sum(s for _, _, s in triton_reaction.gradient_layout(u.ndim - 2, C, hidden))
        G = torch.zeros(size, dtype=cA.dtype, device=u.device)
        return torch.zeros_like(u), G if acc is None else G + acc
    gb, gu, parts, programs = triton_aos.diffusion_backward_partials(u, b, g, cA, ce, k)
    resp = None
    if w1 is not None:
        resp = triton_reaction.response_backward(u, gb, gu, w1, b1, w2, b2, tau)
    return gu, triton_reaction.reduce_partials(parts, programs, B, C, resp, acc)


def _step_backward_fake(u, g, tau, cA, ce, k, w1, b1, w2, b2, acc):
    hidden = None if w1 is None else w1.shape[0]
    layout = triton_reaction.gradient_layout(u.ndim - 2, u.shape[1], hidden)
    return torch.empty_like(u), cA.new_empty((sum(s for _, _, s in layout),))


step_backward_kernel = Kernel(
    "triton_step_backward", _step_backward_impl, _step_backward_fake, devices=None
)


# --------------------------------------------------------------------------- the block


def block_forward(x, gamma, tau, cA, ce, k, w1, b1, w2, b2, steps, spacing, eps, energy, keep):
    """``(y, E, saved)`` of :class:`~nnunet_pde.pde.fused.FusedBlock` on the Triton kernels;
    ``saved`` is what :func:`block_backward` needs (``x_hat, u_1, ..., u_K`` and the
    statistics; ``None`` without ``keep``)."""
    x_hat, mean, std = standardise_kernel(x, eps)
    u, us = x_hat, [x_hat]
    for _ in range(steps):
        b = u if w1 is None else response_b_kernel(u, w1, b1, w2, b2, tau)
        u = triton_aos_forward(u, b, cA, ce, k)
        if keep:
            us.append(u)
    y, esum, e_mean, e_inv = tail_forward_kernel(x, u, gamma, mean, std, list(spacing), eps, energy)
    total = esum.sum() if energy else x.new_zeros(())
    saved = (*us, gamma, mean, std, e_mean, e_inv) if keep else None
    return y, total, saved


def triton_aos_forward(u, b, cA, ce, k) -> torch.Tensor:
    """The AOS step through ``nnunet_pde::aos_diffusion`` (Triton on this backend)."""
    from . import ops

    return ops.aos_diffusion(u, b, cA, ce, k)


def block_backward(saved, params, steps, spacing, energy, gy, g_energy):
    """The input gradients of :class:`~nnunet_pde.pde.fused.FusedBlock` on the Triton
    kernels: ``(dx, ggamma, gtau, gcA, gce, gk, gw1, gb1, gw2, gb2)`` (``None`` where the
    input is ``None``); ``params`` is ``(tau, cA, ce, k, w1, b1, w2, b2)``."""
    us = saved[: steps + 1]
    gamma, _mean, std, e_mean, e_inv = saved[steps + 1 :]
    tau, cA, ce, k, w1, b1, w2, b2 = params
    x_hat = us[0]
    gy = gy.contiguous()
    gu, S = tail_backward_kernel(
        gy, us[-1], x_hat, gamma, std, e_mean, e_inv, g_energy, list(spacing), energy
    )
    G = None
    for i in range(steps - 1, -1, -1):
        gu, G = step_backward_kernel(us[i], gu, tau, cA, ce, k, w1, b1, w2, b2, G)
    dx, ggp = standardise_backward_kernel(x_hat, std, gu, S, gamma, gy)
    assert G is not None
    C = x_hat.shape[1]
    hidden = None if w1 is None else w1.shape[0]
    parts = {
        name: G[off : off + size]
        for name, off, size in triton_reaction.gradient_layout(x_hat.ndim - 2, C, hidden)
    }
    m = cA.shape[0]
    grads = [
        parts["cA"].view(m, C),
        None if ce is None else parts["ce"].view(m, C),
        None if k is None else parts["k"].view(m, C),
    ]
    if w1 is None:
        react = [None] * 5
    else:
        react = [
            parts["tau"],
            parts["w1"].view(w1.shape),
            parts["b1"],
            parts["w2"].view(w2.shape),
            parts["b2"],
        ]
    return dx, ggp.sum(dim=0), react[0], *grads, *react[1:]
