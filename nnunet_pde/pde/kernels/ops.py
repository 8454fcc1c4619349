"""The kernels as ``torch.library`` custom ops: each registered from its declaration in
:mod:`.spec` (schema, fake implementation, argument check), the backend chosen inside
(:mod:`.backend`).

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

import os
from collections.abc import Callable

import torch

from .. import native
from . import backend, spec, triton_aos

#: Environment variable that switches :attr:`Kernel.check` on (``1``), e.g. in tests.
CHECK_ENV = "NNUNET_PDE_CHECK_ARGS"


class Kernel:
    """The kernel ``torch.ops.nnunet_pde.<spec.name>``: called directly in eager mode,
    through the custom operator while ``torch.compile`` traces.

    ``spec`` declares it (:class:`~.spec.KernelSpec`: the op's schema, fake implementation
    and device types come from there); ``impl`` is the implementation (the arguments in the
    spec's order, tensors out; no output aliases an input); ``eager``, if given, replaces
    ``impl`` in eager mode (same results, but free to use per-thread scratch buffers, which
    an operator's outputs may not be).
    """

    #: Every kernel registered, by op name (tests opcheck each).
    registry: dict[str, Kernel] = {}
    #: Whether eager calls check their arguments against the spec (off by default: a few
    #: tens of microseconds per call; the fake implementations always check).
    check: bool = os.environ.get(CHECK_ENV, "0") == "1"

    def __init__(
        self, kernel: spec.KernelSpec, impl: Callable, eager: Callable | None = None
    ) -> None:
        self.spec = kernel
        self.impl = impl if eager is None else eager
        self.op = torch.library.custom_op(
            f"nnunet_pde::{kernel.name}",
            mutates_args=(),
            device_types=kernel.devices,
            schema=kernel.schema(),
        )(impl)
        self.op.register_fake(kernel.fake)
        Kernel.registry[kernel.name] = self

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.op(*args)
        if Kernel.check:
            self.spec.check(args)
        return self.impl(*args)


# --------------------------------------------------------------------------- AOS diffusion


def _aos_diffusion_impl(u, b, cA, ce, k) -> torch.Tensor:
    """:data:`~.spec.AOS_DIFFUSION` on the backend chosen for ``u``."""
    which = backend.name(u)
    if which == "c":
        return native.diffusion_forward(u, b, cA, ce, k)
    if which == "triton":
        return triton_aos.diffusion_forward(u, b, cA, ce, k)
    from .torch_aos import diffusion_forward_torch

    return diffusion_forward_torch(u, b, cA, ce, k).contiguous()


def _aos_diffusion_backward_impl(u, b, g, cA, ce, k) -> tuple[torch.Tensor, ...]:
    """:data:`~.spec.AOS_DIFFUSION_BACKWARD` on the backend chosen for ``u`` (``gce``,
    ``gk`` zeros where ``ce``/``k`` is ``None``)."""
    which = backend.name(u)
    if which == "c":
        return native.diffusion_backward(u, b, g, cA, ce, k)
    if which == "triton":
        return triton_aos.diffusion_backward(u, b, g, cA, ce, k)
    from .torch_aos import diffusion_backward_torch

    gb, gu, gcA, gce, gk = diffusion_backward_torch(u, b, g, cA, ce, k)
    # separate tensors: outputs of a custom operator must not alias each other
    return gb.contiguous(), gu.contiguous(), gcA.clone(), gce.clone(), gk.clone()


def _aos_diffusion_backward_eager(u, b, g, cA, ce, k):
    if backend.name(u) == "c":  # dL/db in a scratch buffer: the caller consumes it at once
        return native.diffusion_backward(u, b, g, cA, ce, k, scratch=True)
    return _aos_diffusion_backward_impl(u, b, g, cA, ce, k)


aos_diffusion = Kernel(spec.AOS_DIFFUSION, _aos_diffusion_impl)
aos_diffusion_backward = Kernel(
    spec.AOS_DIFFUSION_BACKWARD, _aos_diffusion_backward_impl, eager=_aos_diffusion_backward_eager
)


def _setup_aos(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward_aos(ctx, g):
    u, b, cA, ce, k = ctx.saved_tensors
    gb, gu, gcA, gce, gk = aos_diffusion_backward.op(u, b, g.contiguous(), cA, ce, k)
    return gu - gb, gb, gcA, None if ce is None else gce, None if k is None else gk


aos_diffusion.op.register_autograd(_backward_aos, setup_context=_setup_aos)
