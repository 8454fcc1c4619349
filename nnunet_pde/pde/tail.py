"""The standardisation, the regulariser and the gate of the PDE block: autograd functions
with hand-written backward, on the compiled C kernels where the backend is ``c`` and in
vectorised torch otherwise (which ``torch.compile`` fuses).

* :class:`Standardise`: ``x -> ((x - mean) / std, mean, std)`` per sample and channel;
  saves its output and ``std``.
* :class:`EdgeEnergy`: the regulariser :func:`~nnunet_pde.pde.block.edge_energy`; saves its
  input.
* :class:`GatedResidual`: the block's output and (in training) the regulariser of ``u_K``
  in one function; saves ``u_K`` and ``x_hat``.

:func:`standardise_values`, :func:`standardise_grad`, :func:`tail_forward` and
:func:`tail_backward` are the same computations for :class:`~nnunet_pde.pde.fused.FusedBlock`,
which owns a whole block's backward.

Shapes: ``x`` is ``(B, C, *S)``; statistics ``(B, C, 1, ..., 1)``; ``gamma`` ``(C,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from . import native
from .kernels import backend, spec
from .kernels.ops import Kernel
from .stencils import pad_faces

# --------------------------------------------------------------------------- normalisation


def _spread(centred: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(mean(centred^2) + eps)`` per sample and channel without overflow: the squares
    are taken of ``centred / s`` with ``s = max(1, max |centred|)`` (float32 squares overflow
    above about 1.8e19, where the C kernels, which accumulate in float64, stay exact)."""
    dims = tuple(range(2, centred.ndim))
    s = centred.abs().amax(dim=dims, keepdim=True).clamp_min(1.0)
    q = (centred / s).square().mean(dim=dims, keepdim=True)
    return s * torch.sqrt(q + eps / (s * s))


def _standardise(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    dims = tuple(range(2, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    std = _spread(centred, eps)
    return centred / std, mean, std


_standardise_kernel = Kernel(spec.STANDARDISE, native.standardise_forward)
_standardise_backward_kernel = Kernel(spec.STANDARDISE_BACKWARD, native.standardise_backward)
_energy_sums_kernel = Kernel(spec.EDGE_ENERGY_SUMS, native.energy_sums)


def standardise_values(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """``(x_hat, mean, std)`` of :class:`Standardise`, compiled kernel where possible."""
    if backend.uses_c(x):
        return _standardise_kernel(x, eps)
    return _standardise(x, eps)


def standardise_grad(x_hat, std, g_hat, g_mean, g_std, gy=None, a=None) -> torch.Tensor:
    """``dL/dx`` of :class:`Standardise` (``g_hat`` may be ``None``), plus ``a gy`` where
    ``gy`` is given (``a`` ``(B, C)``), compiled kernel where possible."""
    if backend.uses_c(x_hat):
        if g_hat is None:
            g_hat = torch.zeros_like(x_hat)
        return _standardise_backward_kernel(x_hat, std, g_hat, g_mean, g_std, gy, a)
    dx = standardise_backward(x_hat, std, g_hat, g_mean, g_std)
    return dx if gy is None else dx + _bc(a, gy.ndim) * gy


class Standardise(torch.autograd.Function):
    """``x -> (x_hat, mean, std)``, ``std = sqrt(var + eps)``, per sample and channel.

    Backward (``N`` voxels per channel, means over them): ``dx = (g_hat - mean(g_hat) -
    x_hat mean(g_hat x_hat)) / std + g_mean / N + g_std x_hat / N``. Saves ``x_hat``, ``std``.
    """

    @staticmethod
    def forward(ctx, x, eps: float):  # noqa: D102
        x_hat, mean, std = standardise_values(x, eps)
        ctx.save_for_backward(x_hat, std)
        return x_hat, mean, std

    @staticmethod
    @once_differentiable
    def backward(ctx, g_hat, g_mean, g_std):  # noqa: D102
        x_hat, std = ctx.saved_tensors
        return standardise_grad(x_hat, std, g_hat, g_mean, g_std), None


def standardise_backward(x_hat, std, g_hat, g_mean=None, g_std=None) -> torch.Tensor:
    """``dL/dx`` of :class:`Standardise` (any of the upstream gradients may be ``None``)."""
    dims = tuple(range(2, x_hat.ndim))
    n = x_hat[0, 0].numel()
    if g_hat is None:
        dx = torch.zeros_like(x_hat)
    else:
        dx = (
            g_hat
            - g_hat.mean(dim=dims, keepdim=True)
            - x_hat * (g_hat * x_hat).mean(dim=dims, keepdim=True)
        ) / std
    if g_mean is not None:
        dx = dx + g_mean / n
    if g_std is not None:
        dx = dx + g_std * x_hat / n
    return dx


def _moments(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel ``(mean, 1 / sqrt(var + eps))``."""
    dims = tuple(range(2, z.ndim))
    mean = z.mean(dim=dims, keepdim=True)
    return mean, 1.0 / _spread(z - mean, eps)


def _energy_backward_torch(z, g, spacing, mean, std) -> torch.Tensor:
    z_hat = (z - mean) / std
    m = len(spacing)
    g_hat = torch.zeros_like(z)
    for d, h in enumerate(spacing):
        s = torch.diff(z_hat, dim=2 + d) / h
        q = (g / (m * s.numel() * h)) * (2.0 * s / (1.0 + s * s))
        g_hat = g_hat - pad_faces(q, d).diff(dim=2 + d)
    return standardise_backward(z_hat, std, g_hat)


_energy_backward_kernel = Kernel(
    spec.EDGE_ENERGY_BACKWARD, lambda *args: native.energy_backward(*args)[0]
)


def _energy_value(z: torch.Tensor, spacing: Sequence[float], eps: float):
    """``(E, mean, inv_std)``: the edge energy of ``z`` (a scalar in ``z``'s dtype) and the
    per-volume statistics its backward reuses (see :class:`EdgeEnergy`)."""
    if backend.uses_c(z):
        sums, mean, inv_std = _energy_sums_kernel(z, list(spacing), eps)
        faces = [z.numel() // z.shape[2 + d] * (z.shape[2 + d] - 1) for d in range(len(spacing))]
        # an axis of one cell has no faces and contributes 0
        total = sum(sums[d] / f for d, f in enumerate(faces) if f > 0)
        total = torch.as_tensor(total, dtype=torch.float64).to(z.dtype)
    else:
        mean, inv_std = _moments(z, eps)
        total = z.new_zeros(())
        for d, h in enumerate(spacing):
            if z.shape[2 + d] < 2:
                continue  # no faces: contributes 0
            s = torch.diff(z, dim=2 + d) * (inv_std / h)
            # log(1 + s^2) rather than log1p: vectorised on the CPU (log1p is ~6x
            # slower there); s^2 >= 0, so the error is a rounding of 1 + s^2.
            total = total + torch.log(torch.addcmul(torch.ones_like(s), s, s)).mean()
    return total / len(spacing), mean, inv_std


class EdgeEnergy(torch.autograd.Function):
    """Scalar ``(1/m) sum_d mean log(1 + (diff_d z_hat / h_d)^2)``, ``z_hat`` = standardised
    ``z``; saves ``z`` and its per-volume ``(mean, 1 / std)`` (compiled kernel on the CPU).

    ``diff_d z_hat = diff_d z / std``: the mean cancels, so forward needs no ``z_hat``.
    """

    @staticmethod
    def forward(ctx, z, spacing: tuple[float, ...], eps: float):  # noqa: D102
        total, mean, inv_std = _energy_value(z, spacing, eps)
        ctx.save_for_backward(z, mean, inv_std)
        ctx.spacing = spacing
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: D102
        z, mean, inv_std = ctx.saved_tensors
        if backend.uses_c(z):
            gz = _energy_backward_kernel(z, g, list(ctx.spacing), mean, inv_std)
        else:
            gz = _energy_backward_torch(z, g, ctx.spacing, mean, 1.0 / inv_std)
        return gz, None, None


# --------------------------------------------------------------------------- the gate


_gate_kernel = Kernel(spec.GATE, native.gate_forward)
_gate_backward_kernel = Kernel(spec.GATE_BACKWARD, native.gate_backward)
_gate_backward_dx_kernel = Kernel(
    spec.GATE_BACKWARD_DX,
    lambda gy, x_hat, a, g: native.gate_backward(gy, x_hat, None, a, g)[::2],  # (dx, S)
)
_gate_energy_backward_kernel = Kernel(spec.GATE_ENERGY_BACKWARD, native.energy_backward)


def tail_forward(x, u_hat, gamma, mean, std, spacing, eps: float, energy: bool):
    """``(y, E, e_mean, e_inv_std)`` of :class:`GatedResidual` (``E`` 0 and the statistics
    ``None`` without ``energy``)."""
    a, g, c = gate_coefficients(gamma, mean, std)
    if backend.uses_c(x):
        y = _gate_kernel(x, u_hat, a, g, c)
    else:
        nd = x.ndim
        y = _bc(a, nd) * x + (_bc(c, nd) + _bc(g, nd) * u_hat)
    if energy:
        return (y, *_energy_value(u_hat, spacing, eps))
    return y, x.new_zeros(()), None, None


def tail_backward(
    gy,
    u_hat,
    x_hat,
    gamma,
    mean,
    std,
    e_mean,
    e_inv_std,
    g_energy,
    spacing,
    energy: bool,
    with_dx: bool = True,
    slot: str | None = None,
):
    """``(dx, gu, ggamma, gmean, gstd)`` of :class:`GatedResidual` for ``dL/dy = gy`` and
    ``dL/dE = g_energy``; ``dx`` (``a gy``) is ``None`` without ``with_dx``. With the
    compiled kernels in eager mode and ``slot``, ``gu`` is the scratch buffer of that name."""
    a, g, _ = gate_coefficients(gamma, mean, std)
    gy = gy.contiguous()
    nd = gy.ndim
    dx = None
    if backend.uses_c(gy):
        eager_slot = None if torch.compiler.is_compiling() else slot
        # the gate's sums, dL/dx and (without the regulariser) dL/du_hat; with it, the
        # energy kernel adds the gate's part of dL/du_hat and sum gy u_hat instead
        if eager_slot is not None:
            dx, gu, S = native.gate_backward(
                gy, x_hat, None if energy else u_hat, a, g, gu_slot=eager_slot, with_dx=with_dx
            )
        elif energy:
            dx, S = _gate_backward_dx_kernel(gy, x_hat, a, g)
        else:
            dx, gu, S = _gate_backward_kernel(gy, x_hat, u_hat, a, g)
        S = S.to(gy.dtype)
        sg, su, sx = S[..., 0], S[..., 1], S[..., 2]
        if energy:
            if eager_slot is not None:
                gu, su = native.energy_backward(
                    u_hat, g_energy, tuple(spacing), e_mean, e_inv_std, gy, g, out_slot=eager_slot
                )
            else:
                gu, su = _gate_energy_backward_kernel(
                    u_hat, g_energy, list(spacing), e_mean, e_inv_std, gy, g
                )
            su = su.to(gy.dtype)
        if not with_dx:
            dx = None
    else:
        dims = tuple(range(2, nd))
        dx = _bc(a, nd) * gy if with_dx else None
        gu = _bc(g, nd) * gy
        sg, su, sx = gy.sum(dim=dims), (gy * u_hat).sum(dim=dims), (gy * x_hat).sum(dim=dims)
        if energy:
            gu = gu + _energy_backward_torch(u_hat, g_energy, spacing, e_mean, 1.0 / e_inv_std)
    gam = gamma.reshape(1, -1)
    std2 = std.reshape(std.shape[0], -1)
    ggamma = (std2 * (su - sx)).sum(dim=0)
    gmean = (gam * sg).reshape(mean.shape)
    gstd = (gam * su).reshape(std.shape)
    return dx, gu, ggamma, gmean, gstd


class GatedResidual(torch.autograd.Function):
    """The block's output ``y = (1 - gamma_c) x + gamma_c (mean + std u_hat)`` and, with
    ``energy``, the regulariser ``E(u_hat)`` of :class:`EdgeEnergy` (else a constant 0).

    ``y = x + gamma std (u_hat - x_hat)`` for ``x_hat = (x - mean) / std``, written so that
    ``y`` is exactly ``x`` while ``gamma = 0`` and needs no ``x_hat``: its gradient goes to
    ``x``, ``u_hat``, ``mean`` and ``std`` (one feature map each for ``x`` and ``u_hat``, two
    numbers per sample and channel for the statistics), and ``u_hat`` receives the gate's
    and the regulariser's gradients from one kernel.

    ``x``, ``u_hat``, ``x_hat``: ``(B, C, *S)``; ``gamma`` ``(C,)``; ``mean``, ``std`` ``(B,
    C, 1, ...)``. ``x_hat`` must be ``(x - mean) / std`` (the block's standardised input):
    it is read only for ``dL/dgamma = sum std gy (u_hat - x_hat)``, which avoids the
    cancellation of ``mean + std u_hat - x``. Saves ``u_hat`` and ``x_hat`` (kept by the
    steps anyway) and the statistics.
    """

    @staticmethod
    def forward(ctx, x, u_hat, x_hat, gamma, mean, std, spacing, eps: float, energy: bool):  # noqa: D102
        y, total, e_mean, e_inv_std = tail_forward(x, u_hat, gamma, mean, std, spacing, eps, energy)
        ctx.save_for_backward(u_hat, x_hat, gamma, mean, std, e_mean, e_inv_std)
        ctx.spacing, ctx.energy = spacing, energy
        return y, total

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_energy):  # noqa: D102
        dx, gu, ggamma, gmean, gstd = tail_backward(
            gy, *ctx.saved_tensors, g_energy, ctx.spacing, ctx.energy
        )
        return dx, gu, None, ggamma, gmean, gstd, None, None, None


def gate_coefficients(gamma, mean, std) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, g, c)`` ``(B, C)`` of ``y = a x + (c + g u_hat)``: ``1 - gamma``, ``gamma std``,
    ``gamma mean``."""
    B = std.shape[0]
    gam = gamma.reshape(1, -1)
    return (1.0 - gam).expand(B, -1), gam * std.reshape(B, -1), gam * mean.reshape(B, -1)


def _bc(g: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(B, C)`` -> ``(B, C, 1, ..., 1)``."""
    return g.reshape(*g.shape, *([1] * (ndim - 2)))
