"""Triton kernels of the AOS diffusion step (the ``triton`` backend: CUDA tensors, or CPU
tensors under ``TRITON_INTERPRET=1``).

One launch per spatial axis and direction of the step:

* forward, axis ``d``: every program takes ``BLOCK`` grid lines of one ``(b, c)`` volume
  along ``d`` and runs the Thomas algorithm down them, one cell per loop iteration, the
  recurrence state of each line in registers. The face weights ``a = cA_d phi(delta)``
  and the right-hand side ``b + ce_d (F_f - F_{f-1})`` (``F = phi delta``, the explicit
  half of Crank-Nicolson) are formed in the same pass from ``u`` and ``b``; the
  elimination's multipliers and partial solutions go to two scratch maps, and the back
  substitution adds ``v / m`` into the output (the AOS average over the ``m`` axes, the
  first axis writes instead of adding).
* backward, axis ``d``: the same elimination for two right-hand sides at once, ``rhs``
  (recomputing ``v``) and ``g / m`` (the adjoint ``lambda``: ``T_d`` is symmetric), then
  one back substitution that forms, face by face, ``mu = lambda_f - lambda_{f+1}``, ``nu
  = v_f - v_{f+1}``, the gradients of the face weights and of ``delta``, and adds
  ``dL/db = lambda`` and ``dL/du`` into the outputs. The per-channel parameter gradients
  are summed per program into a small partial-sum array (deterministic; no atomics).

A line's cells are ``base + j * inner`` (``inner`` the stride of the axis): along the first
axes of an NCDHW tensor neighbouring lines are neighbouring addresses (coalesced); along the
last axis they are ``n`` apart and each line's cache line is reused over 16-32 steps (not
measured on a GPU here; see ``docs/performance.md``).

Every loop runs on device; nothing synchronises with the host. Computation is in float32
(float64 for float64 inputs, for gradcheck); fp16/bf16 inputs are converted on load.

The module imports Triton lazily (:func:`kernels`): whether a kernel is compiled or
interpreted is fixed when it is first defined, from ``TRITON_INTERPRET`` at that time.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from . import launches

#: Grid lines per program.
BLOCK = 64


@functools.cache
def kernels():
    """``(forward, backward)`` Triton kernels, defined at first use."""
    import triton
    import triton.language as tl

    @triton.jit
    def line_base(bc, n, inner, lines, vol, BLOCK: tl.constexpr):
        """First cell of each of this program's ``BLOCK`` lines of volume ``bc``, and which
        of them exist."""
        line = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        outer = line // inner
        base = bc.to(tl.int64) * vol + (outer * n * inner + (line - outer * inner)).to(tl.int64)
        return base, line < lines

    @triton.jit
    def edge_phi(delta, k_ptr, c, HAS_K: tl.constexpr):
        """``phi = 1 / (1 + (k delta)^2)`` of the faces (1 without edge stopping)."""
        if HAS_K:
            s = delta * tl.load(k_ptr + c).to(delta.dtype)
            phi = 1.0 / (1.0 + s * s)
        else:
            phi = delta * 0.0 + 1.0
        return phi

    @triton.jit
    def line_start(u_ptr, cA_ptr, C, n, inner, lines, vol, cdt: tl.constexpr, BLOCK: tl.constexpr):
        """``(c, base, mask, cA, u_0, zero)`` of this program's lines: the channel, the
        lines' first cells (:func:`line_base`), their first values and a zero vector."""
        bc = tl.program_id(1)
        c = bc % C
        base, mask = line_base(bc, n, inner, lines, vol, BLOCK)
        cA = tl.load(cA_ptr + c).to(cdt)
        u_cur = tl.load(u_ptr + base, mask=mask, other=0.0).to(cdt)
        return c, base, mask, cA, u_cur, tl.zeros((BLOCK,), cdt)

    @triton.jit
    def row(
        u_ptr, b_ptr, base, j, n, inner, mask, u_cur, f_prev, cA, ce_ptr, k_ptr, c,
        HAS_CE: tl.constexpr, HAS_K: tl.constexpr,
    ):  # fmt: skip
        """Row ``j`` of the elimination from ``u_j`` and the flux ``F_{j-1}``: ``(off_j,
        u_{j+1}, a_j, rhs_j, F_j)`` with ``a_j = cA phi_j`` (0 past the last cell) and
        ``rhs_j = b_j + ce (F_j - F_{j-1})``."""
        off = base + j * inner
        has_face = j + 1 < n
        u_next = tl.load(u_ptr + off + inner, mask=mask & has_face, other=0.0).to(u_cur.dtype)
        delta = tl.where(has_face, u_next - u_cur, 0.0)
        phi = edge_phi(delta, k_ptr, c, HAS_K)
        a = tl.where(has_face, cA * phi, 0.0)
        rhs = tl.load(b_ptr + off, mask=mask, other=0.0).to(u_cur.dtype)
        flux = f_prev
        if HAS_CE:
            flux = phi * delta
            rhs += tl.load(ce_ptr + c).to(u_cur.dtype) * (flux - f_prev)
        return off, u_next, a, rhs, flux

    @triton.jit
    def put_grads(gu_ptr, gb_ptr, off, mask, gu, gb, ACCUM: tl.constexpr):
        """Store (or, with ``ACCUM``, add to what earlier axes stored) a cell's ``dL/du`` and
        ``dL/db``."""
        if ACCUM:
            gu += tl.load(gu_ptr + off, mask=mask, other=0.0).to(gu.dtype)
            gb += tl.load(gb_ptr + off, mask=mask, other=0.0).to(gb.dtype)
        tl.store(gu_ptr + off, gu.to(gu_ptr.dtype.element_ty), mask=mask)
        tl.store(gb_ptr + off, gb.to(gb_ptr.dtype.element_ty), mask=mask)

    # Triton resolves the functions a kernel calls among its module's globals, not closures
    globals().update(line_base=line_base, edge_phi=edge_phi, line_start=line_start, row=row)
    globals().update(put_grads=put_grads)

    @triton.jit
    def aos_axis_forward(
        u_ptr, b_ptr, out_ptr, cs_ptr, ys_ptr, cA_ptr, ce_ptr, k_ptr,
        C, n, inner, lines, vol, inv_m,
        HAS_CE: tl.constexpr, HAS_K: tl.constexpr, ACCUM: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = cs_ptr.dtype.element_ty
        c, base, mask, cA, u_cur, zero = line_start(
            u_ptr, cA_ptr, C, n, inner, lines, vol, cdt, BLOCK
        )
        a_prev, f_prev, c_prev, y_prev = zero, zero, zero, zero
        # elimination: row j is 1 + a_{j-1} + a_j on the diagonal, -a_{j-1}, -a_j beside
        for j in range(0, n):
            off, u_next, a, rhs, f_prev = row(
                u_ptr, b_ptr, base, j, n, inner, mask, u_cur, f_prev, cA, ce_ptr, k_ptr, c,
                HAS_CE, HAS_K,
            )  # fmt: skip
            piv = 1.0 + a_prev * (1.0 - c_prev) + a
            y_prev = (rhs + a_prev * y_prev) / piv
            c_prev = a / piv
            tl.store(cs_ptr + off, c_prev, mask=mask)
            tl.store(ys_ptr + off, y_prev, mask=mask)
            a_prev = a
            u_cur = u_next
        # back substitution: v_j = y_j + c_j v_{j+1}, from v_{n-1} = y_{n-1}
        v = y_prev
        off = base + (n - 1) * inner
        res = v * inv_m
        if ACCUM:
            res += tl.load(out_ptr + off, mask=mask, other=0.0).to(cdt)
        tl.store(out_ptr + off, res.to(out_ptr.dtype.element_ty), mask=mask)
        for jj in range(1, n):
            off = base + (n - 1 - jj) * inner
            v = (
                tl.load(ys_ptr + off, mask=mask, other=0.0)
                + tl.load(cs_ptr + off, mask=mask, other=0.0) * v
            )
            res = v * inv_m
            if ACCUM:
                res += tl.load(out_ptr + off, mask=mask, other=0.0).to(cdt)
            tl.store(out_ptr + off, res.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def aos_axis_backward(
        u_ptr, b_ptr, g_ptr, gb_ptr, gu_ptr, cs_ptr, yv_ptr, yl_ptr, part_ptr,
        cA_ptr, ce_ptr, k_ptr, C, n, inner, lines, vol, inv_m,
        HAS_CE: tl.constexpr, HAS_K: tl.constexpr, ACCUM: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = cs_ptr.dtype.element_ty
        c, base, mask, cA, u_cur, zero = line_start(
            u_ptr, cA_ptr, C, n, inner, lines, vol, cdt, BLOCK
        )
        a_prev, f_prev, c_prev, yv, yl = zero, zero, zero, zero, zero
        # elimination of T v = rhs and T lambda = g / m together (same pivots)
        for j in range(0, n):
            off, u_next, a, rhs, f_prev = row(
                u_ptr, b_ptr, base, j, n, inner, mask, u_cur, f_prev, cA, ce_ptr, k_ptr, c,
                HAS_CE, HAS_K,
            )  # fmt: skip
            gm = tl.load(g_ptr + off, mask=mask, other=0.0).to(cdt) * inv_m
            piv = 1.0 + a_prev * (1.0 - c_prev) + a
            yv = (rhs + a_prev * yv) / piv
            yl = (gm + a_prev * yl) / piv
            c_prev = a / piv
            tl.store(cs_ptr + off, c_prev, mask=mask)
            tl.store(yv_ptr + off, yv, mask=mask)
            tl.store(yl_ptr + off, yl, mask=mask)
            a_prev = a
            u_cur = u_next
        # back substitution with the face gradients; u_cur is u_{n-1} (or 0) here, reloaded
        u_next = tl.load(u_ptr + base + (n - 1) * inner, mask=mask, other=0.0).to(cdt)
        v_next = yv
        l_next = yl
        carry = tl.zeros((BLOCK,), cdt)  # -dL/ddelta of the face right of the cell
        s_cA = tl.zeros((BLOCK,), cdt)
        s_ce = tl.zeros((BLOCK,), cdt)
        s_k = tl.zeros((BLOCK,), cdt)
        for jj in range(1, n):
            j = n - 1 - jj
            off = base + j * inner
            cj = tl.load(cs_ptr + off, mask=mask, other=0.0)
            v = tl.load(yv_ptr + off, mask=mask, other=0.0) + cj * v_next
            lam = tl.load(yl_ptr + off, mask=mask, other=0.0) + cj * l_next
            u_j = tl.load(u_ptr + off, mask=mask, other=0.0).to(cdt)
            delta = u_next - u_j
            mu = lam - l_next
            nu = v - v_next
            gdelta = tl.zeros((BLOCK,), cdt)
            phi = edge_phi(delta, k_ptr, c, HAS_K)
            gphi = -cA * mu * nu
            s_cA += -phi * mu * nu
            if HAS_CE:
                ce = tl.load(ce_ptr + c).to(cdt)
                gphi += ce * mu * delta
                s_ce += phi * delta * mu
                gdelta += ce * mu * phi
            if HAS_K:
                s = delta * tl.load(k_ptr + c).to(cdt)
                gs = gphi * (-2.0 * s * phi * phi)
                s_k += delta * gs
                gdelta += tl.load(k_ptr + c).to(cdt) * gs
            # cell j + 1 is complete: its left face is this one, its right one is in carry
            put_grads(gu_ptr, gb_ptr, off + inner, mask, l_next + gdelta + carry, l_next, ACCUM)
            carry = -gdelta
            v_next = v
            l_next = lam
            u_next = u_j
        put_grads(gu_ptr, gb_ptr, base, mask, l_next + carry, l_next, ACCUM)
        slot = (
            part_ptr + (tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * 3
        )
        tl.store(slot, tl.sum(s_cA, axis=0))
        tl.store(slot + 1, tl.sum(s_ce, axis=0))
        tl.store(slot + 2, tl.sum(s_k, axis=0))

    return aos_axis_forward, aos_axis_backward


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _geometry(shape: torch.Size, d: int) -> tuple[int, int, int, int]:
    """``(n, inner, lines, vol)`` of spatial axis ``d`` of a ``(B, C, *S)`` tensor."""
    spatial = tuple(shape[2:])
    vol = math.prod(spatial)
    n = spatial[d]
    inner = math.prod(spatial[d + 1 :])
    return n, inner, vol // n, vol


def _grid(lines: int, volumes: int) -> tuple[int, int]:
    if volumes > 65535:
        raise ValueError(
            f"triton AOS kernels: {volumes} (sample, channel) volumes exceed the grid limit "
            "65535; split the batch"
        )
    return (-(-lines // BLOCK), volumes)


def _flags(ce, k) -> dict:
    return {"HAS_CE": ce is not None, "HAS_K": k is not None, "BLOCK": BLOCK}


def _coef(t: torch.Tensor | None, like: torch.Tensor, d: int) -> torch.Tensor:
    # a dummy pointer where the coefficient is absent (the constexpr flag skips its loads)
    return like if t is None else t[d].contiguous()


def diffusion_forward(u, b, cA, ce, k) -> torch.Tensor:
    """``(1/m) sum_d T_d^{-1} (b + ce_d A_d u)``: ``m`` launches; see the module docstring.

    ``u``, ``b``: ``(B, C, *S)``; ``cA``, ``ce``, ``k``: ``(m, C)``. Output in ``u``'s dtype.
    """
    fwd, _ = kernels()
    u, b = u.contiguous(), b.contiguous()
    m = u.ndim - 2
    out = torch.empty_like(u)
    if u.numel() == 0:
        return out
    cdt = _compute_dtype(u.dtype)
    cs = torch.empty(u.shape, dtype=cdt, device=u.device)
    ys = torch.empty_like(cs)
    volumes = u.shape[0] * u.shape[1]
    for d in range(m):
        n, inner, lines, vol = _geometry(u.shape, d)
        coefs = (cA[d].contiguous(), _coef(ce, cA, d), _coef(k, cA, d))
        with launches.triton_launch("aos_axis_forward"):
            fwd[_grid(lines, volumes)](
                u, b, out, cs, ys, *coefs, u.shape[1], n, inner, lines, vol, 1.0 / m,
                ACCUM=d > 0, **_flags(ce, k),
            )  # fmt: skip
    return out


def diffusion_backward_partials(
    u, b, g, cA, ce, k
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """``(gb, gu, parts, programs)``: the maps of :func:`diffusion_backward` and the
    per-program partial sums of the coefficient gradients, one flat buffer in the compute
    dtype where axis ``d`` holds ``(B, C, programs[d], 3)`` (``dL/dcA, dL/dce, dL/dk``) after
    the axes before it; ``m`` launches."""
    _, bwd = kernels()
    u, b, g = u.contiguous(), b.contiguous(), g.contiguous()
    m = u.ndim - 2
    B, C = u.shape[:2]
    cdt = _compute_dtype(u.dtype)
    gb = torch.empty_like(u)
    gu = torch.empty_like(u)
    cs = torch.empty(u.shape, dtype=cdt, device=u.device)
    yv = torch.empty_like(cs)
    yl = torch.empty_like(cs)
    programs = [_grid(_geometry(u.shape, d)[2], B * C)[0] for d in range(m)]
    parts = torch.empty(B * C * 3 * sum(programs), dtype=cdt, device=u.device)
    start = 0
    for d in range(m):
        n, inner, lines, vol = _geometry(u.shape, d)
        size = B * C * programs[d] * 3
        coefs = (cA[d].contiguous(), _coef(ce, cA, d), _coef(k, cA, d))
        with launches.triton_launch("aos_axis_backward"):
            bwd[(programs[d], B * C)](
                u, b, g, gb, gu, cs, yv, yl, parts[start : start + size], *coefs,
                C, n, inner, lines, vol, 1.0 / m,
                ACCUM=d > 0, **_flags(ce, k),
            )  # fmt: skip
        start += size
    return gb, gu, parts, programs


def diffusion_backward(u, b, g, cA, ce, k) -> tuple[torch.Tensor, ...]:
    """Backward of :func:`diffusion_forward` for upstream ``g``: ``(gb, gu, gcA, gce, gk)``
    as the other backends return it (``gu`` includes ``gb``; ``gce``/``gk`` zeros where
    ``ce``/``k`` is ``None``); ``m`` launches plus the sums of the partial sums."""
    B, C = u.shape[:2]
    if u.numel() == 0:
        zeros = [torch.zeros_like(cA) for _ in range(3)]
        return torch.empty_like(u), torch.empty_like(u), *zeros
    gb, gu, parts, programs = diffusion_backward_partials(u, b, g, cA, ce, k)
    sums = []
    start = 0
    for p in programs:
        size = B * C * p * 3
        sums.append(parts[start : start + size].view(B, C, p, 3).sum(dim=2))
        start += size
    total = torch.stack(sums, dim=2).sum(dim=0).to(u.dtype)  # (C, m, 3)
    gcA = total[..., 0].t().contiguous()
    gce = total[..., 1].t().contiguous()
    gk = total[..., 2].t().contiguous()
    return gb, gu, gcA, gce, gk


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (``None`` when they can)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:  # pragma: no cover - triton ships with CUDA torch
        return f"triton is not importable ({exc})"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "triton runs on CPU tensors only under TRITON_INTERPRET=1"
    return f"no triton kernels for device {device.type!r}"


def version() -> str:
    import triton

    return triton.__version__
