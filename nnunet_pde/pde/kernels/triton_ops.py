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

import torch

from . import spec, triton_aos, triton_reaction, triton_tail
from .ops import Kernel

# --------------------------------------------------------------------------- parameters


coefficients_kernel = Kernel(spec.TRITON_COEFFICIENTS, triton_reaction.coefficients)
coefficients_backward_kernel = Kernel(
    spec.TRITON_COEFFICIENTS_BACKWARD, triton_reaction.coefficients_backward
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


standardise_kernel = Kernel(spec.TRITON_STANDARDISE, triton_tail.standardise_forward)
response_b_kernel = Kernel(spec.TRITON_RESPONSE_B, triton_reaction.response_b)
tail_forward_kernel = Kernel(spec.TRITON_TAIL_FORWARD, triton_tail.tail_forward)
tail_backward_kernel = Kernel(spec.TRITON_TAIL_BACKWARD, triton_tail.tail_backward)
standardise_backward_kernel = Kernel(
    spec.TRITON_STANDARDISE_BACKWARD, triton_tail.standardise_backward
)


def _step_backward_impl(u, g, tau, cA, ce, k, w1, b1, w2, b2, acc) -> tuple[torch.Tensor, ...]:
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


step_backward_kernel = Kernel(spec.TRITON_STEP_BACKWARD, _step_backward_impl)


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
