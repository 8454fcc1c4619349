"""The compiled CPU kernels of the fused AOS step (``csrc/aos.c``), built at first use.

The C source has no dependency but the C standard library: it is compiled once per
machine with the system C compiler into a cache folder and loaded with :mod:`ctypes`
(:mod:`~nnunet_pde.pde.kernels.cpu_build`: cache key, integrity check, timeout). ctypes releases
the GIL during a call, so an axis is split over ``torch.get_num_threads()`` Python threads.

Where no compiler works, or with ``NNUNET_PDE_NATIVE=0``, :func:`library` returns ``None``
(the reason is in :func:`unavailable_reason`) and the fused step runs its vectorised torch
implementation instead; results agree to rounding (tested).

:mod:`~nnunet_pde.pde.fused` and :mod:`~nnunet_pde.pde.tail` register the kernels as custom
operators ``torch.ops.nnunet_pde.*`` (CPU, float32/float64; declared in
:mod:`~nnunet_pde.pde.kernels.spec`, whose argument order the functions here follow), so
``torch.compile(fullgraph=True)`` treats them as opaque calls instead of breaking the graph.

Temporaries that die inside one fused step (the reaction's ``b`` and ``h``, the diffusion's
``dL/db``) can come from a per-thread scratch buffer (``scratch=True``, eager mode only):
a fresh feature-map-sized allocation faults in all its pages again whenever glibc has
returned the freed block to the system, which costs 5-15 % of a block's step.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from .kernels import cpu_build

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_reason: str | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; ``None`` where that is impossible."""
    global _lib, _tried, _reason
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("NNUNET_PDE_NATIVE", "1") == "0":
                _reason = "disabled by NNUNET_PDE_NATIVE=0"
            else:
                try:
                    _lib = cpu_build.load()  # argument types read from the C prototypes
                except cpu_build.BuildError as exc:
                    _reason = str(exc)
            _tried = True
    return _lib


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (``None`` while it is available or untried)."""
    return _reason


def _threads() -> ThreadPoolExecutor | None:
    global _pool, _pool_size
    n = torch.get_num_threads()
    if n <= 1:
        return None
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="nnunet_pde_aos")
            _pool_size = n
    return _pool


def _run_split(fn, args: tuple, volumes: int) -> None:
    """``fn(*args, v0, v1)`` over the volumes ``[0, volumes)``, split over the threads."""
    _run_parts(fn, args, volumes)


def _run_parts(fn, args: tuple, units: int, width: int = 0) -> torch.Tensor | None:
    """``fn(*args, [acc_t,] u0, u1)`` over the units ``[0, units)``, split over the threads;
    with ``width > 0`` each part gets its own zeroed float64 accumulator ``acc_t`` of
    ``width`` values, and their sum is returned."""
    pool = _threads()
    parts = 1 if pool is None or units < 2 else min(_pool_size, units)
    acc = torch.zeros(parts, width, dtype=torch.float64) if width else None
    bounds = [units * t // parts for t in range(parts + 1)]

    def call(t: int) -> int:
        extra = () if acc is None else (acc[t].data_ptr(),)
        return fn(*args, *extra, bounds[t], bounds[t + 1])

    if parts == 1:
        codes = [call(0)]
    else:
        assert pool is not None
        codes = [f.result() for f in [pool.submit(call, t) for t in range(parts)]]
    if any(c != 0 for c in codes):
        raise MemoryError("nnunet_pde kernel: out of memory for its scratch")
    return None if acc is None else acc.sum(dim=0)


_scratch_buffers = threading.local()


def _scratch(slot: str, like: torch.Tensor, shape: torch.Size | None = None) -> torch.Tensor:
    """This thread's reusable buffer ``slot`` shaped like ``like`` (or ``shape``, in
    ``like``'s dtype; contiguous); its previous contents are overwritten by the next caller
    of the same slot. One buffer per slot is kept (the last shape asked for)."""
    shape = like.shape if shape is None else shape
    buf = getattr(_scratch_buffers, slot, None)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype:
        buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        setattr(_scratch_buffers, slot, buf)
    return buf


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _suffix(dtype: torch.dtype) -> str:
    return "_f64" if dtype == torch.float64 else "_f32"


def _kernel(name: str, dtype: torch.dtype):
    """The C function ``name`` for ``dtype`` (float64 or float32) of the loaded library."""
    lib = library()
    assert lib is not None, "compiled kernels called while unavailable"
    return getattr(lib, name + _suffix(dtype))


def _dims(shape: torch.Size) -> ctypes.Array:
    return (ctypes.c_long * (len(shape) - 2))(*shape[2:])


def diffusion_forward(u, b, cA, ce, k) -> torch.Tensor:
    """``(1/m) sum_d T_d^{-1} (b + ce_d A_d u)`` over the ``m`` spatial axes; C kernel.

    ``u``, ``b``: ``(B, C, *S)`` float32/float64 on the CPU; ``cA``, ``ce``, ``k``: ``(m, C)``
    per axis and channel (see ``csrc/aos.c``; ``ce`` is ``None`` for ``theta = 1``, ``k``
    ``None`` for the linear Laplacian). Each ``(b, c)`` volume is done whole (all axes)
    before the next, so it stays in cache between the axes.
    """
    u, b = u.contiguous(), b.contiguous()
    cA, ce, k = (None if t is None else t.contiguous() for t in (cA, ce, k))
    out = torch.empty_like(u)
    B, C = u.shape[:2]
    fn = _kernel("aos_forward", u.dtype)
    dims = _dims(u.shape)
    args = (
        _ptr(u),
        _ptr(b),
        _ptr(out),
        dims,
        u.ndim - 2,
        C,
        _ptr(cA),
        _ptr(ce),
        _ptr(k),
    )
    _run_split(fn, args, B * C)
    return out


def diffusion_backward(
    u, b, g, cA, ce, k, scratch: bool = False, out_slot: str | None = None
) -> tuple[torch.Tensor, ...]:
    """Backward of :func:`diffusion_forward` for upstream gradient ``g``; C kernel.

    Returns ``(dL/db, dL/du through the face weights and the explicit half plus dL/db,
    dL/dcA, dL/dce, dL/dk)``, the last three ``(m, C)`` (zeros where ``ce``/``k`` is
    ``None``). With ``scratch``, ``dL/db`` is this thread's scratch buffer ``"gb"`` (valid
    until the next such call); with ``out_slot``, ``dL/du`` is the scratch buffer of that
    name (which must not be ``g``'s).
    """
    u, b, g = u.contiguous(), b.contiguous(), g.contiguous()
    cA, ce, k = (None if t is None else t.contiguous() for t in (cA, ce, k))
    m = u.ndim - 2
    B, C = u.shape[:2]
    gb = _scratch("gb", u) if scratch else torch.empty_like(u)
    gu = _scratch(out_slot, u) if out_slot else torch.empty_like(u)
    sums = torch.empty((B, C, 3, m), dtype=torch.float64)
    fn = _kernel("aos_backward", u.dtype)
    dims = _dims(u.shape)
    args = (_ptr(u), _ptr(b), _ptr(g), _ptr(gb), _ptr(gu), _ptr(sums), dims, m, C)
    _run_split(fn, (*args, _ptr(cA), _ptr(ce), _ptr(k)), B * C)
    per_channel = sums.sum(dim=0).to(u.dtype)  # (C, 3, m)
    # Separate tensors: outputs of a custom operator must not alias each other.
    gcA = per_channel[:, 0].t().contiguous()
    gce = per_channel[:, 1].t().contiguous() if ce is not None else torch.zeros_like(gcA)
    gk = per_channel[:, 2].t().contiguous() if k is not None else torch.zeros_like(gcA)
    return gb, gu, gcA, gce, gk


def energy_backward(
    z,
    g,
    spacing,
    mean,
    inv_std,
    gy: torch.Tensor | None = None,
    gg: torch.Tensor | None = None,
    out_slot: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``g * dE/dz`` of the edge energy (see :class:`~nnunet_pde.pde.fused.EdgeEnergy`).

    ``mean``, ``inv_std``: ``(B, C, 1, ...)`` statistics of ``z`` (``1 / sqrt(var + eps)``,
    as :func:`energy_sums` returns them). With ``gy`` (a gate's ``dL/dy``, ``z`` its
    ``u``) and ``gg`` ``(B, C)``, ``gg gy`` is added to the result and ``sum gy z`` per
    sample and channel ``(B, C)`` (float64) is returned with it (else ``None``). With
    ``out_slot`` the result is the scratch buffer of that name.
    """
    z = z.contiguous()
    m = z.ndim - 2
    B, C = z.shape[:2]
    faces = [z.numel() // z.shape[2 + d] * (z.shape[2 + d] - 1) for d in range(m)]
    gval = float(g)
    coef = torch.tensor(
        [gval / (m * max(f, 1) * h) for f, h in zip(faces, spacing, strict=True)],
        dtype=z.dtype,
    )
    hs = torch.tensor(spacing, dtype=z.dtype)
    mean = mean.reshape(-1).to(z.dtype).contiguous()
    inv_std = inv_std.reshape(-1).to(z.dtype).contiguous()
    gz = _scratch(out_slot, z) if out_slot else torch.empty_like(z)
    su = None
    if gy is not None:
        assert gg is not None
        gy, gg = gy.contiguous(), gg.reshape(-1).to(z.dtype).contiguous()
        su = torch.empty((B, C), dtype=torch.float64)
    fn = _kernel("energy_backward", z.dtype)
    args = (_ptr(z), _ptr(gz), _dims(z.shape), m, _ptr(coef), _ptr(hs), _ptr(mean))
    _run_split(fn, (*args, _ptr(inv_std), _ptr(gy), _ptr(gg), _ptr(su)), B * C)
    return gz, su


def _chunks(shape: torch.Size, channels: int, hidden: int, dtype: torch.dtype) -> int:
    """Work units of the reaction kernels: (sample, chunk of voxels) pairs."""
    voxels = 1
    for s in shape[2:]:
        voxels *= s
    length = _kernel("mlp_chunk_len", dtype)(channels, hidden)
    return shape[0] * (-(-voxels // length))


def _weights(*ts: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    return [t.reshape(t.shape[0], -1).to(dtype).contiguous() for t in ts]


def response_forward(
    u, w1, b1, w2, b2, tau, hidden: bool = False, reaction: bool = False, scratch: bool = False
) -> tuple[torch.Tensor, ...]:
    """The reaction ``N(u) = W2 tanh(W1 u + b1) + b2`` per voxel and ``b = u + tau N``; C
    kernel.

    ``u``: ``(B, C, *S)``; ``w1``: ``(H, C, 1, ...)``, ``w2``: ``(C, H, 1, ...)`` (1x1
    convolution weights); ``tau``: ``(C,)``. Returns ``(b,)``, followed by ``h = tanh(W1 u
    + b1)`` ``(B, H, *S)`` with ``hidden`` and by ``N`` with ``reaction``. With
    ``scratch``, ``b`` and ``h`` are this thread's scratch buffers ``"b"`` and ``"h"``
    (valid until the next such call).
    """
    u = u.contiguous()
    C, H = u.shape[1], w1.shape[0]
    P = u[0, 0].numel()
    w1m, w2m = _weights(w1, w2, dtype=u.dtype)
    b1c, b2c = (t.to(u.dtype).contiguous() for t in (b1, b2))
    tauc = tau.to(u.dtype).contiguous()
    fn = _kernel("mlp_forward", u.dtype)
    b = _scratch("b", u) if scratch else torch.empty_like(u)
    h = None
    if hidden:
        h_shape = torch.Size((u.shape[0], H, *u.shape[2:]))
        h = _scratch("h", u, h_shape) if scratch else u.new_empty(h_shape)
    n = torch.empty_like(u) if reaction else None
    args = (_ptr(u), _ptr(w1m), _ptr(b1c), _ptr(w2m), _ptr(b2c), _ptr(tauc), _ptr(b))
    _run_split(fn, (*args, _ptr(h), _ptr(n), C, H, P), _chunks(u.shape, C, H, u.dtype))
    return (b, *(t for t in (h, n) if t is not None))


def response_backward(
    u, gb, gu_in, h, w1, w2, b2, tau, inplace: bool = False
) -> tuple[torch.Tensor, ...]:
    """Backward of ``b = u + tau N(u)``, ``N(u) = W2 tanh(W1 u + b1) + b2``, for ``dL/db =
    gb``, from ``u`` and the forward's ``h = tanh(W1 u + b1)`` ``(B, H, *S)``; ``N`` is not
    needed, nor is ``b1`` (``h`` carries it). C kernel.

    Returns ``(gu, gw1, gb1, gw2, gb2, gtau)``: ``gu = gu_in + W1^T gpre`` ``(B, C, *S)``
    with ``gpre = (W2^T (tau gb)) (1 - h^2)``, and the gradients of ``w1`` ``(H, C, 1,
    ...)``, ``b1`` ``(H,)``, ``w2`` ``(C, H, 1, ...)``, ``b2`` and ``tau`` ``(C,)``, summed
    over samples and voxels (in float64, returned in ``gb``'s dtype). With ``inplace``,
    ``gu`` is written over ``gu_in`` (when it is contiguous).
    """
    u, gb, gu_in, h = u.contiguous(), gb.contiguous(), gu_in.contiguous(), h.contiguous()
    C, H = gb.shape[1], w1.shape[0]
    P = gb[0, 0].numel()
    w1m, w2m = _weights(w1, w2, dtype=gb.dtype)
    b2c, tauc = (t.to(gb.dtype).contiguous() for t in (b2, tau))
    # Each chunk of gu_in is read into scratch before the same chunk of gu is written.
    gu = gu_in if inplace else torch.empty_like(gb)
    fn = _kernel("mlp_backward", gb.dtype)
    args = (_ptr(u), _ptr(gb), _ptr(gu_in), _ptr(h), _ptr(w1m), _ptr(w2m))
    acc = _run_parts(
        fn,
        (*args, _ptr(b2c), _ptr(tauc), _ptr(gu), C, H, P),
        _chunks(gb.shape, C, H, gb.dtype),
        width=2 * H * C + H + 2 * C,
    )
    assert acc is not None
    sizes = (H * C, H, C * H, C, C)
    # separate tensors (views of one would alias, which custom operators forbid)
    gw1, gb1, gw2, gb2, gtau = (t.to(gb.dtype, copy=True) for t in torch.split(acc, sizes))
    return gu, gw1.reshape(w1.shape), gb1, gw2.reshape(w2.shape), gb2, gtau


def _f32_array(name: str, x: torch.Tensor) -> torch.Tensor:
    """The C function ``name`` (``y[i] = f(x[i])``, float32) on ``x``."""
    lib = library()
    assert lib is not None
    x = x.to(torch.float32).contiguous()
    y = torch.empty_like(x)
    getattr(lib, name)(_ptr(x), _ptr(y), x.numel())
    return y


def tanh_f32(x: torch.Tensor) -> torch.Tensor:
    """The kernels' float32 vector tanh (for the tests)."""
    return _f32_array("tanh_f32_array", x)


def standardise_forward(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """``(x_hat, mean, std)`` per sample and channel (``std = sqrt(var + eps)``; statistics
    shaped ``(B, C, 1, ...)``); C kernel."""
    x = x.contiguous()
    B, C = x.shape[:2]
    x_hat = torch.empty_like(x)
    stat = (B, C, *([1] * (x.ndim - 2)))
    mean = x.new_empty(stat)
    std = x.new_empty(stat)
    fn = _kernel("standardise_forward", x.dtype)
    _run_split(fn, (_ptr(x), _ptr(x_hat), _ptr(mean), _ptr(std), x[0, 0].numel(), eps), B * C)
    return x_hat, mean, std


def standardise_backward(
    x_hat, std, g_hat, g_mean, g_std, gy: torch.Tensor | None = None, a: torch.Tensor | None = None
) -> torch.Tensor:
    """``dL/dx`` of :func:`standardise_forward`, plus ``a gy`` where ``gy`` is given (``a``
    per sample and channel ``(B, C)``: a direct use of ``x`` scaled per volume, summed in
    the same pass); C kernel."""
    x_hat, g_hat, std = x_hat.contiguous(), g_hat.contiguous(), std.contiguous()
    g_mean, g_std = (None if t is None else t.contiguous() for t in (g_mean, g_std))
    if gy is not None:
        assert a is not None
        gy, a = gy.contiguous(), a.to(x_hat.dtype).contiguous()
    dx = torch.empty_like(x_hat)
    fn = _kernel("standardise_backward", x_hat.dtype)
    args = (_ptr(x_hat), _ptr(std), _ptr(g_hat), _ptr(g_mean), _ptr(g_std), _ptr(gy), _ptr(a))
    _run_split(fn, (*args, _ptr(dx), x_hat[0, 0].numel()), x_hat.shape[0] * x_hat.shape[1])
    return dx


def energy_sums(
    z: torch.Tensor, spacing: tuple[float, ...], eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per axis ``d`` the sum over all faces of ``log(1 + s^2)``, ``s = diff_d(z) / (h_d
    std)`` with ``std`` per sample and channel (``(m,)`` float64), and the per-volume
    ``(mean, 1 / std)`` (``(B, C, 1, ...)``); C kernel."""
    z = z.contiguous()
    m = z.ndim - 2
    B, C = z.shape[:2]
    sums = torch.empty((B * C, m), dtype=torch.float64)
    stat = (B, C, *([1] * m))
    mean, inv_std = z.new_empty(stat), z.new_empty(stat)
    hs = torch.tensor(spacing, dtype=z.dtype)
    fn = _kernel("energy_forward", z.dtype)
    args = (_ptr(z), _ptr(sums), _ptr(mean), _ptr(inv_std), _dims(z.shape), m, _ptr(hs), eps)
    _run_split(fn, args, B * C)
    return sums.sum(dim=0), mean, inv_std


def log1p_f32(x: torch.Tensor) -> torch.Tensor:
    """The kernels' float32 vector ``log1p`` for ``x >= 0`` (for the tests)."""
    return _f32_array("log1p_f32_array", x)


def gate_forward(
    x: torch.Tensor, u: torch.Tensor, a: torch.Tensor, g: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """``a x + (c + g u)`` with ``a``, ``g``, ``c`` per sample and channel ``(B, C)``; C
    kernel."""
    x, u = x.contiguous(), u.contiguous()
    a, g, c = (t.to(x.dtype).contiguous() for t in (a, g, c))
    y = torch.empty_like(x)
    fn = _kernel("gate_forward", x.dtype)
    args = (_ptr(x), _ptr(u), _ptr(a), _ptr(g), _ptr(c), _ptr(y), x[0, 0].numel())
    _run_split(fn, args, x.shape[0] * x.shape[1])
    return y


def gate_backward(
    gy, x_hat, u, a, g, gu_slot: str | None = None, with_dx: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """``(a gy, g gy, S)`` with ``S[..., 0] = sum gy``, ``S[..., 1] = sum gy u``, ``S[...,
    2] = sum gy x_hat`` per sample and channel ``(B, C, 3)`` (float64); without ``u`` the
    second output is ``None`` and ``S[..., 1]`` is 0 (see :func:`energy_backward`), without
    ``with_dx`` the first; C kernel. With ``gu_slot``, ``g gy`` is the scratch buffer of
    that name."""
    gy, x_hat = gy.contiguous(), x_hat.contiguous()
    u = None if u is None else u.contiguous()
    a, g = (t.to(gy.dtype).contiguous() for t in (a, g))
    dx = torch.empty_like(gy) if with_dx else None
    gu = None
    if u is not None:
        gu = _scratch(gu_slot, gy) if gu_slot else torch.empty_like(gy)
    B, C = gy.shape[:2]
    S = torch.zeros((B, C, 3), dtype=torch.float64)
    fn = _kernel("gate_backward", gy.dtype)
    args = (_ptr(gy), _ptr(x_hat), _ptr(u), _ptr(a), _ptr(g), _ptr(dx), _ptr(gu), _ptr(S))
    _run_split(fn, (*args, gy[0, 0].numel()), B * C)
    return dx, gu, S
