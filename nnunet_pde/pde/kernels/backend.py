"""The one place that decides which backend runs the PDE block's kernels for a tensor.

Backends:

* ``c``: the compiled C kernels of :mod:`~nnunet_pde.pde.native` (CPU, float32/float64);
* ``triton``: the Triton kernels of :mod:`~nnunet_pde.pde.kernels.triton_aos`,
  :mod:`~nnunet_pde.pde.kernels.triton_tail` and :mod:`~nnunet_pde.pde.kernels.triton_reaction`
  (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``, for tests);
* ``torch``: vectorised torch, any device (the fallback, and the reference the others are
  tested against).

``NNUNET_PDE_BACKEND`` (``auto``, the default, or ``c``, ``triton``, ``torch``) forces one.
A forced backend that cannot run on a tensor raises :class:`BackendError` saying why; it
never falls back silently. ``auto`` takes ``c`` on the CPU and ``triton`` on CUDA where
they can run, else ``torch``, and :func:`choose` says why.

The decision depends only on the tensor (device, dtype, size) and the environment, never
on which objects were built earlier in the process (the C kernels are built on first use,
by whichever caller comes first).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

#: The environment variable that forces a backend.
ENV = "NNUNET_PDE_BACKEND"
#: Accepted values of :data:`ENV`.
CHOICES = ("auto", "c", "triton", "torch")


class BackendError(RuntimeError):
    """A backend was forced (``NNUNET_PDE_BACKEND``) where it cannot run, or the variable
    has a value that is not one of :data:`CHOICES`."""


@dataclass(frozen=True)
class Choice:
    """The backend for a tensor: ``name`` (``c``, ``triton`` or ``torch``) and ``reason``,
    one line for people (``"cpu: compiled C kernels"``)."""

    name: str
    reason: str


def requested() -> str:
    """The value of :data:`ENV` (``auto`` when unset); :class:`BackendError` if invalid."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise BackendError(
            f"{ENV}={os.environ.get(ENV)!r} is not one of {', '.join(CHOICES)}; unset it or "
            "pick one of those"
        )
    return value


def _c_blocker(device: torch.device, dtype: torch.dtype, volume: int) -> str | None:
    """Why the C kernels cannot take such a tensor (``None`` when they can)."""
    if device.type != "cpu":
        return f"the C kernels run on the CPU, not on {device.type}"
    if dtype not in (torch.float32, torch.float64):
        return f"the C kernels take float32/float64, not {dtype}"
    if volume >= 2**31:
        return "the C kernels index a channel's volume with 32 bits (>= 2^31 voxels)"
    from .. import native  # the C build: lazy, cached after the first call

    if native.library() is None:
        return f"no compiled C kernels ({native.unavailable_reason()})"
    return None


@functools.cache
def _triton_blocker_cached(device_type: str, interpret: str | None) -> str | None:
    from . import triton_aos

    return triton_aos.unavailable_reason(torch.device(device_type))


def _triton_blocker(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return f"the Triton kernels take floating-point tensors, not {dtype}"
    return _triton_blocker_cached(device.type, os.environ.get("TRITON_INTERPRET"))


def _describe(name: str, device: torch.device) -> str:
    if name == "c":
        return "cpu: compiled C kernels"
    if name == "triton":
        from . import triton_aos

        mode = " (interpreted, TRITON_INTERPRET=1)" if device.type == "cpu" else ""
        return f"{device.type}: triton {triton_aos.version()}{mode}"
    return f"{device.type}: torch"


@torch.compiler.assume_constant_result
def _choose_name(device_type: str, dtype: torch.dtype, volume: int) -> tuple[str, str]:
    device = torch.device(device_type)
    want = requested()
    if want == "c":
        why = _c_blocker(device, dtype, volume)
        if why is not None:
            raise BackendError(f"{ENV}=c cannot run here: {why}")
        return "c", _describe("c", device) + f" (forced by {ENV})"
    if want == "triton":
        why = _triton_blocker(device, dtype)
        if why is not None:
            raise BackendError(f"{ENV}=triton cannot run here: {why}")
        return "triton", _describe("triton", device) + f" (forced by {ENV})"
    if want == "torch":
        return "torch", _describe("torch", device) + f" (forced by {ENV})"
    if device.type == "cuda":
        why = _triton_blocker(device, dtype)
        if why is None:
            return "triton", _describe("triton", device)
        return "torch", f"cuda: torch ({why})"
    if device.type == "cpu":
        why = _c_blocker(device, dtype, volume)
        if why is None:
            return "c", _describe("c", device)
        return "torch", f"cpu: torch ({why})"
    return "torch", f"{device.type}: torch (no kernels for this device)"


def choose(t: torch.Tensor) -> Choice:
    """The backend for the feature map ``t`` ``(B, C, *S)`` and why."""
    volume = 1
    for s in t.shape[2:]:
        volume *= int(s)
    name, reason = _choose_name(t.device.type, t.dtype, volume)
    return Choice(name, reason)


def name(t: torch.Tensor) -> str:
    """``choose(t).name``."""
    return choose(t).name


def uses_c(t: torch.Tensor) -> bool:
    """Whether the kernels on ``t`` run the compiled C kernels (backend ``c``)."""
    return name(t) == "c"


def describe(device: str | torch.device = "cpu") -> Choice:
    """The backend a float32 feature map on ``device`` would get (for ``nnunet-pde doctor``).

    Never raises: a forced backend that cannot run is reported as ``Choice("error", why)``.
    """
    try:
        return Choice(*_choose_name(torch.device(device).type, torch.float32, 8))
    except BackendError as exc:
        return Choice("error", str(exc))
