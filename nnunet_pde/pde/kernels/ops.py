"""The kernels as ``torch.library`` custom ops: one schema per kernel, one fake (shape)
implementation, and the backend chosen inside (:mod:`.backend`).

``torch.compile`` sees each kernel as one opaque node, whatever the grid size, so nothing
that grows with the grid is traced or unrolled. In eager mode :class:`Kernel` calls the
implementation directly (going through the operator would import ``torch._dynamo`` on
first use: over a second in every ``nnUNetv2_predict`` process).

The AOS diffusion step (the kernel every backend implements) is registered for all devices
with autograd: ``nnunet_pde::aos_diffusion`` is differentiable through
``nnunet_pde::aos_diffusion_backward``. The CPU-only kernels of the rest of the block are
registered by :mod:`~nnunet_pde.pde.fused` and :mod:`~nnunet_pde.pde.tail`, the Triton
kernels of the rest of the block (every device) by :mod:`.triton_ops`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import native
from . import backend, triton_aos


class Kernel:
    """A kernel ``torch.ops.nnunet_pde.<name>``: called directly in eager mode, through the
    custom operator while ``torch.compile`` traces.

    ``impl`` is the implementation (plain tensors in, tensors out; no output aliases an
    input); ``fake`` returns empty outputs of the right shapes; ``devices`` the device types
    it is registered for (``None``: all); ``eager``, if given, replaces ``impl`` in eager
    mode (same results, but free to use per-thread scratch buffers, which an operator's
    outputs may not be).
    """

    #: Every kernel registered, by op name (tests opcheck each).
    registry: dict[str, Kernel] = {}

    def __init__(
        self,
        name: str,
        impl: Callable,
        fake: Callable,
        eager: Callable | None = None,
        devices: str | None = "cpu",
    ) -> None:
        self.impl = impl if eager is None else eager
        self.op = torch.library.custom_op(
            f"nnunet_pde::{name}", mutates_args=(), device_types=devices
        )(impl)
        self.op.register_fake(fake)
        Kernel.registry[name] = self

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.op(*args)
        return self.impl(*args)


# --------------------------------------------------------------------------- AOS diffusion


def _aos_diffusion_impl(
    u: torch.Tensor,
    b: torch.Tensor,
    cA: torch.Tensor,
    ce: torch.Tensor | None,
    k: torch.Tensor | None,
) -> torch.Tensor:
    """``(1/m) sum_d T_d^{-1} (b + ce_d A_d u)`` on the backend chosen for ``u``.

    ``u``, ``b``: ``(B, C, *S)``; ``cA``, ``ce``, ``k``: ``(m, C)`` (see
    :class:`~nnunet_pde.pde.fused.AOSStep`)."""
    which = backend.name(u)
    if which == "c":
        return native.diffusion_forward(u, b, cA, ce, k)
    if which == "triton":
        return triton_aos.diffusion_forward(u, b, cA, ce, k)
    from .torch_aos import diffusion_forward_torch

    return diffusion_forward_torch(u, b, cA, ce, k).contiguous()


def _aos_diffusion_fake(u, b, cA, ce, k):
    return torch.empty_like(u)


def _aos_diffusion_backward_impl(
    u: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    cA: torch.Tensor,
    ce: torch.Tensor | None,
    k: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/db, dL/du, dL/dcA, dL/dce, dL/dk)`` of the AOS diffusion for upstream ``g``;
    ``dL/du`` includes ``dL/db`` (all of it where ``b = u``), the last three ``(m, C)``
    (zeros where ``ce``/``k`` is ``None``)."""
    which = backend.name(u)
    if which == "c":
        return native.diffusion_backward(u, b, g, cA, ce, k)
    if which == "triton":
        return triton_aos.diffusion_backward(u, b, g, cA, ce, k)
    from .torch_aos import diffusion_backward_torch

    gb, gu, gcA, gce, gk = diffusion_backward_torch(u, b, g, cA, ce, k)
    # separate tensors: outputs of a custom operator must not alias each other
    return gb.contiguous(), gu.contiguous(), gcA.clone(), gce.clone(), gk.clone()


def _aos_diffusion_backward_fake(u, b, g, cA, ce, k):
    grads = [cA.new_empty(cA.shape) for _ in range(3)]
    return (torch.empty_like(u), torch.empty_like(u), *grads)


def _aos_diffusion_backward_eager(u, b, g, cA, ce, k):
    if backend.name(u) == "c":  # dL/db in a scratch buffer: the caller consumes it at once
        return native.diffusion_backward(u, b, g, cA, ce, k, scratch=True)
    return _aos_diffusion_backward_impl(u, b, g, cA, ce, k)


aos_diffusion = Kernel("aos_diffusion", _aos_diffusion_impl, _aos_diffusion_fake, devices=None)
aos_diffusion_backward = Kernel(
    "aos_diffusion_backward",
    _aos_diffusion_backward_impl,
    _aos_diffusion_backward_fake,
    eager=_aos_diffusion_backward_eager,
    devices=None,
)


def _setup_aos(ctx, inputs, output) -> None:
    u, b, cA, ce, k = inputs
    ctx.save_for_backward(u, b, cA, ce, k)


def _backward_aos(ctx, g):
    u, b, cA, ce, k = ctx.saved_tensors
    gb, gu, gcA, gce, gk = aos_diffusion_backward.op(u, b, g.contiguous(), cA, ce, k)
    return gu - gb, gb, gcA, None if ce is None else gce, None if k is None else gk


aos_diffusion.op.register_autograd(_backward_aos, setup_context=_setup_aos)
