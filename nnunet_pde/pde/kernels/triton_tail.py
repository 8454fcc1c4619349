"""Triton kernels of the block's per-volume passes (the ``triton`` backend): the
standardisation, the gate with the regulariser's energy, and their backwards.

A volume is one ``(sample, channel)`` of a contiguous ``(B, C, *S)`` map: ``V`` contiguous
values, axis order ``(D, H, W)`` (a 2-D map ``(H, W)`` is taken as ``(1, H, W)``). Every
pass takes two launches over a grid of ``(chunks, volumes)`` programs, one per
:data:`CHUNK` values of a volume (looping over them in steps of ``BLOCK``): the first writes
each chunk's partial statistics, the second combines a volume's partials (every program of
the volume does, in the same order: deterministic, no atomics) and writes the chunk's
output. The float64 partial statistics are ``(mean, sum of centred squares)`` per chunk,
combined by Chan's formula, or plain sums.

* :func:`standardise_forward`: ``x_hat = (x - mean) / std``, ``std = sqrt(var + eps)``;
  float64 sums, as in the C kernels: features of 1e30 give their statistics.
* :func:`tail_forward`: ``y = (1 - gamma) x + gamma (mean + std u_hat)`` and, with the
  regulariser, the per-volume statistics of ``u_hat`` and its weighted edge-energy sums
  ``sum_d w_d sum_faces log(1 + s^2)``, ``s = diff_d(u_hat) / (std_u h_d)``, per chunk;
  summing them gives the energy (``w_d = 1 / (m F_d)``, ``F_d`` the faces of the batch).
* :func:`tail_backward`: ``dL/du_hat`` of the gate and the energy, and the gate's per-chunk
  sums ``(sum gy, sum gy u_hat, sum gy x_hat)`` (float64).
* :func:`standardise_backward`: ``dL/dx`` through the standardisation plus the gate's
  ``(1 - gamma) gy``, from those sums; and ``std (sum gy u_hat - sum gy x_hat)`` per volume,
  whose sum over samples is ``dL/dgamma``.

Computation in float32 (float64 for float64 maps); fp16/bf16 maps are converted on load,
their statistics are float32. Nothing synchronises with the host.
"""

from __future__ import annotations

import functools
import math

import torch

from . import launches

#: Values per loop iteration of a program.
BLOCK = 1024
#: Values of a volume per program (a multiple of :data:`BLOCK`).
CHUNK = 16384


@functools.cache
def kernels() -> dict:
    """The Triton kernels by name, defined at first use (see :mod:`.triton_aos`)."""
    import triton
    import triton.language as tl

    @triton.jit
    def span(V, CHUNK):
        """``(v, base, lo, hi)`` of this program: its volume, the volume's first value and its
        chunk ``[lo, hi)`` of the volume's values."""
        v = tl.program_id(1)
        lo = tl.program_id(0) * CHUNK
        return v, v.to(tl.int64) * V, lo, tl.minimum(lo + CHUNK, V)

    @triton.jit
    def chunk_moments(p_ptr, base, lo, hi, BLOCK: tl.constexpr):
        """``(mean, sum (p - mean)^2)`` in float64 of the values ``[lo, hi)`` at ``base``."""
        idx = tl.arange(0, BLOCK)
        s = tl.zeros((BLOCK,), tl.float64)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            s += tl.load(p_ptr + base + i, mask=i < hi, other=0.0).to(tl.float64)
        mu = tl.sum(s, axis=0) / (hi - lo)
        q = tl.zeros((BLOCK,), tl.float64)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            d = tl.load(p_ptr + base + i, mask=i < hi, other=0.0).to(tl.float64) - mu
            q += tl.where(i < hi, d * d, 0.0)
        return mu, tl.sum(q, axis=0)

    @triton.jit
    def combine(part_ptr, v, nchunk, CHUNK, V, eps, BLOCK: tl.constexpr):
        """``(mean, 1 / sqrt(var + eps))`` in float64 of volume ``v`` from its chunks'
        ``(mean, sum of centred squares)`` (Chan's combination: no cancellation)."""
        k = tl.arange(0, BLOCK)
        s = tl.zeros((BLOCK,), tl.float64)
        for k0 in range(0, nchunk, BLOCK):
            kk = k0 + k
            n = tl.minimum(CHUNK, V - kk * CHUNK).to(tl.float64)
            mk = tl.load(part_ptr + (v * nchunk + kk) * 2, mask=kk < nchunk, other=0.0)
            s += tl.where(kk < nchunk, n * mk, 0.0)
        mu = tl.sum(s, axis=0) / V
        q = tl.zeros((BLOCK,), tl.float64)
        for k0 in range(0, nchunk, BLOCK):
            kk = k0 + k
            n = tl.minimum(CHUNK, V - kk * CHUNK).to(tl.float64)
            slot = part_ptr + (v * nchunk + kk) * 2
            d = tl.load(slot, mask=kk < nchunk, other=0.0) - mu
            m2 = tl.load(slot + 1, mask=kk < nchunk, other=0.0)
            q += tl.where(kk < nchunk, m2 + n * d * d, 0.0)
        return mu, 1.0 / tl.sqrt(tl.sum(q, axis=0) / V + eps)

    @triton.jit
    def chunk_total(part_ptr, v, nchunk, width, col, BLOCK: tl.constexpr):
        """``sum_k part[v, k, col]`` (float64) of a ``(volumes, nchunk, width)`` array."""
        k = tl.arange(0, BLOCK)
        s = tl.zeros((BLOCK,), tl.float64)
        for k0 in range(0, nchunk, BLOCK):
            kk = k0 + k
            slot = part_ptr + (v * nchunk + kk) * width + col
            s += tl.load(slot, mask=kk < nchunk, other=0.0).to(tl.float64)
        return tl.sum(s, axis=0)

    @triton.jit
    def face_grad(z_ptr, base, i, mask, z, inv, stride, coord, n, sc, qc):
        """``q_left - q_right`` of the cells ``i`` along one axis: ``q = qc 2 s / (1 + s^2)``
        of the faces, ``s = (z_next - z) inv sc`` (0 past the boundary)."""
        right = mask & (coord + 1 < n)
        left = mask & (coord > 0)
        zr = tl.load(z_ptr + base + i + stride, mask=right, other=0.0).to(z.dtype)
        zl = tl.load(z_ptr + base + i - stride, mask=left, other=0.0).to(z.dtype)
        sr = (zr - z) * inv * sc
        sl = (z - zl) * inv * sc
        qr = tl.where(right, qc * 2.0 * sr / (1.0 + sr * sr), 0.0)
        ql = tl.where(left, qc * 2.0 * sl / (1.0 + sl * sl), 0.0)
        return ql - qr

    @triton.jit
    def energy_grad(z_ptr, base, i, mask, z, inv, V, N1, N2, s0, s1, s2, q0, q1, q2):
        """``dE/dz_hat`` of cells ``i`` (the three axes' :func:`face_grad`)."""
        plane = N1 * N2
        gh = face_grad(z_ptr, base, i, mask, z, inv, plane, i // plane, V // plane, s0, q0)
        gh += face_grad(z_ptr, base, i, mask, z, inv, N2, (i // N2) % N1, N1, s1, q1)
        gh += face_grad(z_ptr, base, i, mask, z, inv, 1, i % N2, N2, s2, q2)
        return gh

    @triton.jit
    def face_energy(z_ptr, base, i, mask, z, stride, coord, n, sc):
        """``log(1 + s^2)`` of the faces right of cells ``i`` (0 past the boundary)."""
        right = mask & (coord + 1 < n)
        zr = tl.load(z_ptr + base + i + stride, mask=right, other=0.0).to(z.dtype)
        s = (zr - z) * sc
        return tl.where(right, tl.log(1.0 + s * s), 0.0)

    # Triton resolves the functions a kernel calls among its module's globals, not closures
    globals().update(
        span=span,
        chunk_moments=chunk_moments,
        combine=combine,
        chunk_total=chunk_total,
        face_grad=face_grad,
        energy_grad=energy_grad,
        face_energy=face_energy,
    )

    @triton.jit
    def chunk_stats(x_ptr, part_ptr, V, CHUNK, BLOCK: tl.constexpr):
        v, base, lo, hi = span(V, CHUNK)
        mu, m2 = chunk_moments(x_ptr, base, lo, hi, BLOCK)
        slot = part_ptr + (v * tl.num_programs(0) + tl.program_id(0)) * 2
        tl.store(slot, mu)
        tl.store(slot + 1, m2)

    @triton.jit
    def standardise_apply(
        x_ptr, out_ptr, part_ptr, mean_ptr, std_ptr, V, CHUNK, eps, BLOCK: tl.constexpr
    ):
        cdt = mean_ptr.dtype.element_ty
        v, base, lo, hi = span(V, CHUNK)
        mu, inv = combine(part_ptr, v, tl.num_programs(0), CHUNK, V, eps, BLOCK)
        mu_c = mu.to(cdt)
        inv_c = inv.to(cdt)
        idx = tl.arange(0, BLOCK)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            x = tl.load(x_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            tl.store(out_ptr + base + i, ((x - mu_c) * inv_c).to(out_ptr.dtype.element_ty), i < hi)
        if tl.program_id(0) == 0:
            tl.store(mean_ptr + v, mu_c)
            tl.store(std_ptr + v, (1.0 / inv).to(cdt))

    @triton.jit
    def gate_fwd(
        x_ptr, u_ptr, y_ptr, part_ptr, gamma_ptr, mean_ptr, std_ptr, C, V, CHUNK,
        ENERGY: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = mean_ptr.dtype.element_ty
        v, base, lo, hi = span(V, CHUNK)
        gam = tl.load(gamma_ptr + v % C).to(cdt)
        a = 1.0 - gam
        g = gam * tl.load(std_ptr + v)
        c = gam * tl.load(mean_ptr + v)
        idx = tl.arange(0, BLOCK)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            x = tl.load(x_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            u = tl.load(u_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            tl.store(y_ptr + base + i, (a * x + (c + g * u)).to(y_ptr.dtype.element_ty), i < hi)
        if ENERGY:
            mu, m2 = chunk_moments(u_ptr, base, lo, hi, BLOCK)
            slot = part_ptr + (v * tl.num_programs(0) + tl.program_id(0)) * 2
            tl.store(slot, mu)
            tl.store(slot + 1, m2)

    @triton.jit
    def energy_fwd(
        u_ptr, part_ptr, esum_ptr, emean_ptr, einv_ptr,
        V, N1, N2, CHUNK, s0, s1, s2, w0, w1, w2, eps, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = emean_ptr.dtype.element_ty
        v, base, lo, hi = span(V, CHUNK)
        mu, inv = combine(part_ptr, v, tl.num_programs(0), CHUNK, V, eps, BLOCK)
        inv_c = inv.to(cdt)
        plane = N1 * N2
        idx = tl.arange(0, BLOCK)
        e = tl.zeros((BLOCK,), tl.float64)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            mask = i < hi
            z = tl.load(u_ptr + base + i, mask=mask, other=0.0).to(cdt)
            e0 = face_energy(u_ptr, base, i, mask, z, plane, i // plane, V // plane, inv_c * s0)
            e1 = face_energy(u_ptr, base, i, mask, z, N2, (i // N2) % N1, N1, inv_c * s1)
            e2 = face_energy(u_ptr, base, i, mask, z, 1, i % N2, N2, inv_c * s2)
            e += e0.to(tl.float64) * w0 + e1.to(tl.float64) * w1 + e2.to(tl.float64) * w2
        total = tl.sum(e, axis=0)
        tl.store(esum_ptr + v * tl.num_programs(0) + tl.program_id(0), total.to(cdt))
        if tl.program_id(0) == 0:
            tl.store(emean_ptr + v, mu.to(cdt))
            tl.store(einv_ptr + v, inv_c)

    @triton.jit
    def tail_sums(
        gy_ptr, u_ptr, xh_ptr, gu_ptr, S_ptr, gamma_ptr, std_ptr, emean_ptr, einv_ptr, ge_ptr,
        C, V, N1, N2, CHUNK, s0, s1, s2, q0, q1, q2,
        ENERGY: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = std_ptr.dtype.element_ty
        v, base, lo, hi = span(V, CHUNK)
        g = tl.load(gamma_ptr + v % C).to(cdt) * tl.load(std_ptr + v)
        idx = tl.arange(0, BLOCK)
        sg = tl.zeros((BLOCK,), tl.float64)
        su = tl.zeros((BLOCK,), tl.float64)
        sx = tl.zeros((BLOCK,), tl.float64)
        h1 = tl.zeros((BLOCK,), tl.float64)
        h2 = tl.zeros((BLOCK,), tl.float64)
        mu = g * 0.0
        inv = g * 0.0
        ge = g * 0.0
        if ENERGY:
            mu = tl.load(emean_ptr + v)
            inv = tl.load(einv_ptr + v)
            ge = tl.load(ge_ptr).to(cdt)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            mask = i < hi
            gy = tl.load(gy_ptr + base + i, mask=mask, other=0.0).to(cdt)
            u = tl.load(u_ptr + base + i, mask=mask, other=0.0).to(cdt)
            xh = tl.load(xh_ptr + base + i, mask=mask, other=0.0).to(cdt)
            sg += gy.to(tl.float64)
            su += (gy * u).to(tl.float64)
            sx += (gy * xh).to(tl.float64)
            if ENERGY:
                gh = energy_grad(
                    u_ptr, base, i, mask, u, inv, V, N1, N2, s0, s1, s2, ge * q0, ge * q1, ge * q2
                )
                h1 += gh.to(tl.float64)
                h2 += (gh * ((u - mu) * inv)).to(tl.float64)
            else:
                tl.store(gu_ptr + base + i, (g * gy).to(gu_ptr.dtype.element_ty), mask)
        slot = S_ptr + (v * tl.num_programs(0) + tl.program_id(0)) * 5
        tl.store(slot, tl.sum(sg, axis=0))
        tl.store(slot + 1, tl.sum(su, axis=0))
        tl.store(slot + 2, tl.sum(sx, axis=0))
        tl.store(slot + 3, tl.sum(h1, axis=0))
        tl.store(slot + 4, tl.sum(h2, axis=0))

    @triton.jit
    def energy_bwd(
        gy_ptr, u_ptr, gu_ptr, S_ptr, gamma_ptr, std_ptr, emean_ptr, einv_ptr, ge_ptr,
        C, V, N1, N2, CHUNK, s0, s1, s2, q0, q1, q2, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = std_ptr.dtype.element_ty
        v, base, lo, hi = span(V, CHUNK)
        nchunk = tl.num_programs(0)
        g = tl.load(gamma_ptr + v % C).to(cdt) * tl.load(std_ptr + v)
        mu = tl.load(emean_ptr + v)
        inv = tl.load(einv_ptr + v)
        ge = tl.load(ge_ptr).to(cdt)
        m1 = (chunk_total(S_ptr, v, nchunk, 5, 3, BLOCK) / V).to(cdt)
        m2 = (chunk_total(S_ptr, v, nchunk, 5, 4, BLOCK) / V).to(cdt)
        idx = tl.arange(0, BLOCK)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            mask = i < hi
            gy = tl.load(gy_ptr + base + i, mask=mask, other=0.0).to(cdt)
            u = tl.load(u_ptr + base + i, mask=mask, other=0.0).to(cdt)
            gh = energy_grad(
                u_ptr, base, i, mask, u, inv, V, N1, N2, s0, s1, s2, ge * q0, ge * q1, ge * q2
            )
            gu = g * gy + (gh - m1 - (u - mu) * inv * m2) * inv
            tl.store(gu_ptr + base + i, gu.to(gu_ptr.dtype.element_ty), mask)

    @triton.jit
    def grad_sums(g_ptr, xh_ptr, std_ptr, part_ptr, V, CHUNK, BLOCK: tl.constexpr):
        cdt = std_ptr.dtype.element_ty
        v, base, lo, hi = span(V, CHUNK)
        idx = tl.arange(0, BLOCK)
        s1 = tl.zeros((BLOCK,), tl.float64)
        s2 = tl.zeros((BLOCK,), tl.float64)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            g = tl.load(g_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            xh = tl.load(xh_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            s1 += g.to(tl.float64)
            s2 += (g * xh).to(tl.float64)
        slot = part_ptr + (v * tl.num_programs(0) + tl.program_id(0)) * 2
        tl.store(slot, tl.sum(s1, axis=0))
        tl.store(slot + 1, tl.sum(s2, axis=0))

    @triton.jit
    def standardise_bwd(
        xh_ptr, std_ptr, g_ptr, part_ptr, S_ptr, gamma_ptr, gy_ptr, dx_ptr, ggp_ptr,
        C, V, CHUNK, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = std_ptr.dtype.element_ty
        v, base, lo, hi = span(V, CHUNK)
        nchunk = tl.num_programs(0)
        m1 = (chunk_total(part_ptr, v, nchunk, 2, 0, BLOCK) / V).to(cdt)
        m2 = (chunk_total(part_ptr, v, nchunk, 2, 1, BLOCK) / V).to(cdt)
        sg = chunk_total(S_ptr, v, nchunk, 5, 0, BLOCK).to(cdt)
        su = chunk_total(S_ptr, v, nchunk, 5, 1, BLOCK).to(cdt)
        sx = chunk_total(S_ptr, v, nchunk, 5, 2, BLOCK).to(cdt)
        std = tl.load(std_ptr + v)
        inv = 1.0 / std
        gam = tl.load(gamma_ptr + v % C).to(cdt)
        c0 = gam * sg / V
        c1 = gam * su / V
        a = 1.0 - gam
        idx = tl.arange(0, BLOCK)
        for start in range(lo, hi, BLOCK):
            i = start + idx
            g = tl.load(g_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            xh = tl.load(xh_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            gy = tl.load(gy_ptr + base + i, mask=i < hi, other=0.0).to(cdt)
            dx = (g - m1 - xh * m2) * inv + c0 + c1 * xh + a * gy
            tl.store(dx_ptr + base + i, dx.to(dx_ptr.dtype.element_ty), i < hi)
        if tl.program_id(0) == 0:
            tl.store(ggp_ptr + v, std * (su - sx))

    return {
        "chunk_stats": chunk_stats,
        "standardise_apply": standardise_apply,
        "gate_fwd": gate_fwd,
        "energy_fwd": energy_fwd,
        "tail_sums": tail_sums,
        "energy_bwd": energy_bwd,
        "grad_sums": grad_sums,
        "standardise_bwd": standardise_bwd,
    }


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 maps, float32 otherwise (fp16/bf16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunks(V: int) -> int:
    """Programs per volume of ``V`` values: one per :data:`CHUNK` values (at least 1)."""
    return max(1, -(-V // CHUNK))


def _block(V: int) -> int:
    return min(BLOCK, max(16, 1 << max(0, (min(V, CHUNK) - 1).bit_length())))


def _stat(x: torch.Tensor) -> torch.Tensor:
    shape = (x.shape[0], x.shape[1], *([1] * (x.ndim - 2)))
    return torch.empty(shape, dtype=compute_dtype(x.dtype), device=x.device)


def _grid3(shape: torch.Size) -> tuple[int, int, int]:
    """``(V, N1, N2)``: a volume's size and its last two axes (a 2-D map is ``(1, H, W)``)."""
    spatial = tuple(shape[2:])
    return math.prod(spatial), int(spatial[-2]), int(spatial[-1])


def _axis_constants(shape: torch.Size, spacing, per_face) -> tuple[list[float], list[float]]:
    """``(1 / h_d, per_face(faces_d, h_d))`` for the three axes ``(D, H, W)``, padded in front
    for a 2-D map (an axis of one cell has no faces: 0)."""
    spatial = tuple(shape[2:])
    m = len(spatial)
    total = shape[0] * shape[1] * math.prod(spatial)
    inv_h, weight = [1.0] * (3 - m), [0.0] * (3 - m)
    for n, h in zip(spatial, spacing, strict=True):
        faces = total // n * (n - 1)
        inv_h.append(1.0 / h)
        weight.append(per_face(faces, h, m) if faces > 0 else 0.0)
    return inv_h, weight


def standardise_forward(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """``(x_hat, mean, std)`` per volume of ``x`` ``(B, C, *S)``: ``x_hat`` in ``x``'s dtype,
    the statistics ``(B, C, 1, ...)`` in the compute dtype; two launches (the chunks'
    statistics, then their combination and ``x_hat``)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    mean, std = _stat(x), _stat(x)
    V = _grid3(x.shape)[0]
    if x.numel():
        grid = (chunks(V), x.shape[0] * x.shape[1])
        part = torch.empty((*grid[::-1], 2), dtype=torch.float64, device=x.device)
        k = kernels()
        with launches.triton_launch("chunk_stats"):
            k["chunk_stats"][grid](x, part, V, CHUNK, BLOCK=_block(V))
        with launches.triton_launch("standardise_apply"):
            k["standardise_apply"][grid](x, out, part, mean, std, V, CHUNK, eps, BLOCK=_block(V))
    return out, mean, std


def tail_forward(x, u, gamma, mean, std, spacing, eps: float, energy: bool):
    """``(y, esum, e_mean, e_inv_std)``: the gate ``y = (1 - gamma) x + gamma (mean + std
    u)`` (``x``, ``u`` ``(B, C, *S)``, ``gamma`` ``(C,)``, ``mean``, ``std`` ``(B, C, 1,
    ...)``) and, with ``energy``, the weighted energy sums ``esum`` ``(B, C, chunks)`` (their
    sum is the regulariser) and ``u``'s statistics; two launches (one without ``energy``,
    when the last three are empty)."""
    x, u = x.contiguous(), u.contiguous()
    y = torch.empty_like(x)
    B, C = x.shape[:2]
    cdt = compute_dtype(x.dtype)
    V, N1, N2 = _grid3(x.shape)
    grid = (chunks(V), B * C)
    esum = torch.empty((B, C, grid[0]) if energy else (0,), dtype=cdt, device=x.device)
    e_mean = _stat(x) if energy else esum.new_empty((0,))
    e_inv = _stat(x) if energy else esum.new_empty((0,))
    inv_h, w = _axis_constants(x.shape, spacing, lambda f, h, m: 1.0 / (m * f))
    if x.numel():
        part = torch.empty((B * C, grid[0], 2), dtype=torch.float64, device=x.device)
        k = kernels()
        with launches.triton_launch("gate_fwd"):
            k["gate_fwd"][grid](
                x, u, y, part, gamma, mean, std, C, V, CHUNK, ENERGY=energy, BLOCK=_block(V)
            )
        if energy:
            with launches.triton_launch("energy_fwd"):
                k["energy_fwd"][grid](
                    u, part, esum, e_mean, e_inv, V, N1, N2, CHUNK, *inv_h, *w, eps,
                    BLOCK=_block(V),
                )  # fmt: skip
    elif energy:
        esum.zero_()
    return y, esum, e_mean, e_inv


def tail_backward(gy, u, x_hat, gamma, std, e_mean, e_inv, g_energy, spacing, energy: bool):
    """``(gu, S)``: ``dL/du`` of :func:`tail_forward` for ``dL/dy = gy`` and ``dL/dE =
    g_energy`` (0-d; only read with ``energy``), and the per-chunk float64 sums ``S`` ``(B,
    C, chunks, 5)``: ``sum gy``, ``sum gy u``, ``sum gy x_hat`` (the gate's) and the
    energy's ``sum g_hat``, ``sum g_hat u_hat``; two launches (one without ``energy``)."""
    gy, u, x_hat = gy.contiguous(), u.contiguous(), x_hat.contiguous()
    B, C = gy.shape[:2]
    gu = torch.empty_like(gy)
    V, N1, N2 = _grid3(gy.shape)
    grid = (chunks(V), B * C)
    S = torch.empty((B, C, grid[0], 5), dtype=torch.float64, device=gy.device)
    inv_h, q = _axis_constants(gy.shape, spacing, lambda f, h, m: 1.0 / (m * f * h))
    if gy.numel():
        stats = (e_mean, e_inv, g_energy) if energy else (std, std, std)
        k = kernels()
        with launches.triton_launch("tail_sums"):
            k["tail_sums"][grid](
                gy, u, x_hat, gu, S, gamma, std, *stats, C, V, N1, N2, CHUNK, *inv_h, *q,
                ENERGY=energy, BLOCK=_block(V),
            )  # fmt: skip
        if energy:
            with launches.triton_launch("energy_bwd"):
                k["energy_bwd"][grid](
                    gy, u, gu, S, gamma, std, *stats, C, V, N1, N2, CHUNK, *inv_h, *q,
                    BLOCK=_block(V),
                )  # fmt: skip
    else:
        S.zero_()
    return gu, S


def standardise_backward(x_hat, std, g_hat, S, gamma, gy) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, ggp)``: ``dL/dx`` through the standardisation for ``dL/dx_hat = g_hat`` and the
    gate's statistics gradients (``gamma sum gy``, ``gamma sum gy u``, from ``S`` of
    :func:`tail_backward`), plus ``(1 - gamma) gy``; and ``ggp = std (sum gy u - sum gy
    x_hat)`` ``(B, C)``, whose sum over samples is ``dL/dgamma``; two launches."""
    x_hat, g_hat, gy = x_hat.contiguous(), g_hat.contiguous(), gy.contiguous()
    B, C = x_hat.shape[:2]
    dx = torch.empty_like(x_hat)
    ggp = torch.empty((B, C), dtype=std.dtype, device=x_hat.device)
    V = _grid3(x_hat.shape)[0]
    if x_hat.numel():
        grid = (chunks(V), B * C)
        part = torch.empty((B * C, grid[0], 2), dtype=torch.float64, device=x_hat.device)
        k = kernels()
        with launches.triton_launch("grad_sums"):
            k["grad_sums"][grid](g_hat, x_hat, std, part, V, CHUNK, BLOCK=_block(V))
        with launches.triton_launch("standardise_bwd"):
            k["standardise_bwd"][grid](
                x_hat, std, g_hat, part, S, gamma, gy, dx, ggp, C, V, CHUNK, BLOCK=_block(V)
            )
    else:
        ggp.zero_()
    return dx, ggp
