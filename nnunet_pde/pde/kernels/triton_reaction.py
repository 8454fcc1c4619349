"""Triton kernels of the reaction and of the per-block parameters (the ``triton`` backend).

* :func:`response_b`: ``b = u + tau N(u)``, ``N(u) = W2 tanh(W1 u + b1) + b2`` (the 1x1
  convolutions), one launch. Each program takes ``BLOCK`` voxels of one sample and all
  channels: the hidden activation ``(hidden, BLOCK)`` stays in registers.
* :func:`response_backward`: ``dL/du`` (added to the AOS backward's) and the per-program
  partial sums of ``dL/dW1, dL/db1, dL/dW2, dL/db2, dL/dtau`` (the hidden activation is
  recomputed from ``u``), one launch.
* :func:`reduce_partials`: sums the AOS backward's per-program partial sums
  (:func:`~nnunet_pde.pde.kernels.triton_aos.diffusion_backward_partials`) and the
  reaction's into one flat gradient vector, optionally added to a previous one (the
  gradients of the steps accumulate without extra launches); fixed order, no atomics.
* :func:`coefficients` / :func:`coefficients_backward`: the per-block parameter transforms
  of the fused step (``tau = tau_max sigmoid(logit)``, ``alpha = softplus``, ``kappa =
  softplus + 1e-3``, the bounded step ``tau / (1 + tau R alpha)`` and the per-axis
  coefficients ``cA, ce, k`` of :class:`~nnunet_pde.pde.fused.AOSStep`), one program each,
  computed in float64.

Layouts: ``u`` ``(B, C, *S)`` contiguous (``V`` voxels per channel); ``w1`` ``(hidden, C)``,
``b1`` ``(hidden,)``, ``w2`` ``(C, hidden)``, ``b2``, ``tau`` ``(C,)``. The flat gradient
vector is ``[gcA (m, C) | gce (m, C) | gk (m, C) | gw1 (hidden, C) | gb1 | gw2 (C, hidden) |
gb2 | gtau]`` (:func:`gradient_layout`). Computation in float32 (float64 for float64 maps).
"""

from __future__ import annotations

import functools
import math

import torch

from . import launches

#: Voxels per program of the reaction kernels.
BLOCK = 64
#: Voxels per program on CPU tensors (Triton's interpreter): its cost is per program, so
#: larger tiles are much faster there; the code is the same.
INTERPRET_BLOCK = 512
#: Programs per sample of the reaction's backward at most (each then takes several tiles
#: of ``BLOCK`` voxels): bounds the rows :func:`reduce_partials` sums.
MAX_PROGRAMS = 1024
#: Output entries per program of :func:`reduce_partials`.
REDUCE_BLOCK = 128


@functools.cache
def kernels() -> dict:
    """The Triton kernels by name, defined at first use (see :mod:`.triton_aos`)."""
    import triton
    import triton.language as tl

    @triton.jit
    def tanh(x):
        """``tanh`` from ``expm1(-2 |x|)`` (Kahan's ``expm1``: accurate near 0, where ``1 -
        exp`` cancels; libdevice is not available to the interpreter)."""
        y = -2.0 * tl.abs(x)
        e = tl.exp(y)
        safe = tl.where((e == 1.0) | (e == 0.0), 0.5, e)
        em1 = tl.where(e == 1.0, y, tl.where(e == 0.0, -1.0, (e - 1.0) * y / tl.log(safe)))
        t = -em1 / (2.0 + em1)
        return tl.where(x < 0, -t, t)

    @triton.jit
    def hidden(
        u_ptr, base, v, mv, w1_ptr, b1_ptr, C, V, HID, hid, mh,
        cdt: tl.constexpr, BLOCK: tl.constexpr, HP: tl.constexpr,
    ):  # fmt: skip
        """``tanh(W1 u + b1)`` ``(HP, BLOCK)`` of the voxels ``v`` (rows past ``HID``: 0)."""
        pre = tl.zeros((HP, BLOCK), cdt)
        for c in range(C):
            uc = tl.load(u_ptr + base + c * V + v, mask=mv, other=0.0).to(cdt)
            wc = tl.load(w1_ptr + hid * C + c, mask=mh, other=0.0).to(cdt)
            pre += wc[:, None] * uc[None, :]
        return tanh(pre + tl.load(b1_ptr + hid, mask=mh, other=0.0).to(cdt)[:, None])

    @triton.jit
    def softplus(x):
        """``softplus`` as torch computes it (``x`` above 20), ``log1p`` by Kahan's trick."""
        e = tl.exp(tl.minimum(x, 20.0))
        e1 = 1.0 + e
        lp = tl.where(e1 == 1.0, e, tl.log(e1) * e / tl.where(e1 == 1.0, 1.0, e1 - 1.0))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def wide(x):
        """A float argument as a float64 value: the interpreter rounds a bare float argument
        to float32 where it is the left operand or reassigned (compiled, it is float32)."""
        return tl.full([], 0.0, tl.float64) + x

    @triton.jit
    def axis_value(d: tl.constexpr, v0, v1, v2):
        """``v_d`` of the three per-axis values (``d`` a compile-time axis)."""
        v = v0
        if d == 1:
            v = v1
        if d == 2:
            v = v2
        return v

    globals().update(tanh=tanh, hidden=hidden, softplus=softplus, sigmoid=sigmoid, wide=wide)
    globals().update(axis_value=axis_value)

    @triton.jit
    def response_fwd(
        u_ptr, b_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, tau_ptr, C, V, HID,
        HP: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = tau_ptr.dtype.element_ty
        v = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mv = v < V
        base = tl.program_id(1).to(tl.int64) * C * V
        hid = tl.arange(0, HP)
        mh = hid < HID
        h = hidden(u_ptr, base, v, mv, w1_ptr, b1_ptr, C, V, HID, hid, mh, cdt, BLOCK, HP)
        for c in range(C):
            w2c = tl.load(w2_ptr + c * HID + hid, mask=mh, other=0.0).to(cdt)
            n = tl.sum(w2c[:, None] * h, axis=0) + tl.load(b2_ptr + c).to(cdt)
            uc = tl.load(u_ptr + base + c * V + v, mask=mv, other=0.0).to(cdt)
            res = uc + tl.load(tau_ptr + c) * n
            tl.store(b_ptr + base + c * V + v, res.to(b_ptr.dtype.element_ty), mask=mv)

    @triton.jit
    def response_bwd(
        u_ptr, gb_ptr, gu_ptr, part_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, tau_ptr, C, V, HID,
        TILES, HP: tl.constexpr, CP: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        # each program takes TILES tiles of BLOCK voxels, its partial sums in registers
        cdt = tau_ptr.dtype.element_ty
        base = tl.program_id(1).to(tl.int64) * C * V
        hid = tl.arange(0, HP)
        mh = hid < HID
        ch = tl.arange(0, CP)
        s_w1 = tl.zeros((HP, CP), cdt)  # [j, c]
        s_w2 = tl.zeros((CP, HP), cdt)  # [c, j]
        s_b1 = tl.zeros((HP,), cdt)
        s_b2 = tl.zeros((CP,), cdt)
        s_tau = tl.zeros((CP,), cdt)
        for t in range(TILES):
            v = (tl.program_id(0) * TILES + t) * BLOCK + tl.arange(0, BLOCK)
            mv = v < V
            h = hidden(u_ptr, base, v, mv, w1_ptr, b1_ptr, C, V, HID, hid, mh, cdt, BLOCK, HP)
            gh = tl.zeros((HP, BLOCK), cdt)
            for c in range(C):
                gbc = tl.load(gb_ptr + base + c * V + v, mask=mv, other=0.0).to(cdt)
                w2c = tl.load(w2_ptr + c * HID + hid, mask=mh, other=0.0).to(cdt)
                n = tl.sum(w2c[:, None] * h, axis=0) + tl.load(b2_ptr + c).to(cdt)
                gn = tl.load(tau_ptr + c) * gbc  # 0 past the last voxel: masks every sum
                s_tau += tl.where(ch == c, tl.sum(gbc * n, axis=0), 0.0)
                s_b2 += tl.where(ch == c, tl.sum(gn, axis=0), 0.0)
                s_w2 += tl.where(ch[:, None] == c, tl.sum(h * gn[None, :], axis=1)[None, :], 0.0)
                gh += w2c[:, None] * gn[None, :]
            gpre = gh * (1.0 - h * h)
            s_b1 += tl.sum(gpre, axis=1)
            for c in range(C):
                w1c = tl.load(w1_ptr + hid * C + c, mask=mh, other=0.0).to(cdt)
                uc = tl.load(u_ptr + base + c * V + v, mask=mv, other=0.0).to(cdt)
                gu = tl.load(gu_ptr + base + c * V + v, mask=mv, other=0.0).to(cdt)
                gu += tl.sum(w1c[:, None] * gpre, axis=0)
                tl.store(gu_ptr + base + c * V + v, gu.to(gu_ptr.dtype.element_ty), mask=mv)
                s_w1 += tl.where(ch[None, :] == c, tl.sum(gpre * uc[None, :], axis=1)[:, None], 0.0)
        nr = 2 * HID * C + HID + 2 * C
        row = (
            part_ptr + (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)).to(tl.int64) * nr
        )
        o_b1 = HID * C
        o_w2 = o_b1 + HID
        o_b2 = o_w2 + C * HID
        o_tau = o_b2 + C
        mc = ch < C
        tl.store(row + hid[:, None] * C + ch[None, :], s_w1, mask=mh[:, None] & mc[None, :])
        tl.store(row + o_b1 + hid, s_b1, mask=mh)
        tl.store(
            row + o_w2 + ch[:, None] * HID + hid[None, :], s_w2, mask=mc[:, None] & mh[None, :]
        )
        tl.store(row + o_b2 + ch, s_b2, mask=mc)
        tl.store(row + o_tau + ch, s_tau, mask=mc)

    @triton.jit
    def reduce(
        aos_ptr, resp_ptr, acc_ptr, out_ptr, B, C, m, P0, P1, P2, O1, O2, PMAX, R, NR,
        HAS_ACC: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        cdt = out_ptr.dtype.element_ty
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        na = 3 * m * C
        in_aos = j < na
        which = j // (m * C)
        d = (j // C) % m
        c = j % C
        P = tl.where(d == 0, P0, tl.where(d == 1, P1, P2))
        off = tl.where(d == 0, 0, tl.where(d == 1, O1, O2))
        acc = tl.zeros((BLOCK,), cdt)
        for b in range(B):
            for p in range(PMAX):
                slot = off + ((b * C + c) * P + p) * 3 + which
                acc += tl.load(aos_ptr + slot, mask=in_aos & (p < P), other=0.0).to(cdt)
        r = j - na
        in_resp = (r >= 0) & (r < NR)
        for row in range(R):
            acc += tl.load(resp_ptr + row * NR + r, mask=in_resp, other=0.0).to(cdt)
        if HAS_ACC:
            acc += tl.load(acc_ptr + j, mask=j < na + NR, other=0.0).to(cdt)
        tl.store(out_ptr + j, acc, mask=j < na + NR)

    @triton.jit
    def coef_fwd(
        logit_ptr, ar_ptr, kr_ptr, ts_ptr, cA_ptr, ce_ptr, k_ptr,
        C, m, tau_max, R, theta, ih0, ih1, ih2,
        HAS_CE: tl.constexpr, HAS_K: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        tau_max, R, theta = wide(tau_max), wide(R), wide(theta)
        ih0, ih1, ih2 = wide(ih0), wide(ih1), wide(ih2)
        odt = ts_ptr.dtype.element_ty
        c = tl.arange(0, BLOCK)
        mc = c < C
        tau = tau_max * sigmoid(tl.load(logit_ptr).to(tl.float64))
        alpha = softplus(tl.load(ar_ptr + c, mask=mc, other=0.0).to(tl.float64))
        ts = tau / (1.0 + tau * R * alpha)
        tl.store(ts_ptr + c, ts.to(odt), mask=mc)
        kappa = alpha
        if HAS_K:
            kappa = softplus(tl.load(kr_ptr + c, mask=mc, other=0.0).to(tl.float64)) + 1e-3
        for d in tl.static_range(3):
            ih = axis_value(d, ih0, ih1, ih2)
            md = mc & (d < m)
            base = ts * alpha * (ih * ih)
            tl.store(cA_ptr + d * C + c, (m * theta * base).to(odt), mask=md)
            if HAS_CE:
                tl.store(ce_ptr + d * C + c, (m * (1.0 - theta) * base).to(odt), mask=md)
            if HAS_K:
                tl.store(k_ptr + d * C + c, (ih / kappa).to(odt), mask=md)

    @triton.jit
    def coef_bwd(
        logit_ptr, ar_ptr, kr_ptr, gts_ptr, gcA_ptr, gce_ptr, gk_ptr,
        glogit_ptr, gar_ptr, gkr_ptr,
        C, m, tau_max, R, theta, ih0, ih1, ih2,
        HAS_CE: tl.constexpr, HAS_K: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        c = tl.arange(0, BLOCK)
        mc = c < C
        odt = gar_ptr.dtype.element_ty
        sig = sigmoid(tl.load(logit_ptr).to(tl.float64))
        tau_max, R, theta = wide(tau_max), wide(R), wide(theta)
        ih0, ih1, ih2 = wide(ih0), wide(ih1), wide(ih2)
        tau = tau_max * sig
        ar = tl.load(ar_ptr + c, mask=mc, other=0.0).to(tl.float64)
        alpha = softplus(ar)
        den = 1.0 + tau * R * alpha
        ts = tau / den
        gts = tl.load(gts_ptr + c, mask=mc, other=0.0).to(tl.float64)
        galpha = alpha * 0.0
        gkappa = alpha * 0.0
        kappa = alpha
        kr = ar
        if HAS_K:
            kr = tl.load(kr_ptr + c, mask=mc, other=0.0).to(tl.float64)
            kappa = softplus(kr) + 1e-3
        for d in tl.static_range(3):
            ih = axis_value(d, ih0, ih1, ih2)
            md = mc & (d < m)
            gbase = m * theta * tl.load(gcA_ptr + d * C + c, mask=md, other=0.0).to(tl.float64)
            if HAS_CE:
                gce = tl.load(gce_ptr + d * C + c, mask=md, other=0.0).to(tl.float64)
                gbase += m * (1.0 - theta) * gce
            gts += gbase * alpha * (ih * ih)
            galpha += gbase * ts * (ih * ih)
            if HAS_K:
                gk = tl.load(gk_ptr + d * C + c, mask=md, other=0.0).to(tl.float64)
                gkappa += -gk * ih / (kappa * kappa)
        # ts = tau / (1 + tau R alpha)
        gtau = tl.sum(tl.where(mc, gts / (den * den), 0.0), axis=0)
        galpha += gts * (-tau * tau * R / (den * den))
        tl.store(glogit_ptr, (gtau * tau_max * sig * (1.0 - sig)).to(odt))
        tl.store(gar_ptr + c, (galpha * tl.where(ar > 20.0, 1.0, sigmoid(ar))).to(odt), mask=mc)
        gkr = gkappa * tl.where(kr > 20.0, 1.0, sigmoid(kr))  # 0 without HAS_K
        tl.store(gkr_ptr + c, gkr.to(odt), mask=mc)

    return {
        "response_fwd": response_fwd,
        "response_bwd": response_bwd,
        "reduce": reduce,
        "coef_fwd": coef_fwd,
        "coef_bwd": coef_bwd,
    }


def _pow2(n: int) -> int:
    return max(2, 1 << max(0, (n - 1).bit_length()))


def _block(u: torch.Tensor) -> int:
    """Voxels per tile of the reaction kernels for ``u``'s device."""
    return BLOCK if u.device.type == "cuda" else INTERPRET_BLOCK


def _flat(u: torch.Tensor) -> tuple[int, int, int]:
    """``(B, C, V)`` of a ``(B, C, *S)`` map."""
    return u.shape[0], u.shape[1], math.prod(u.shape[2:])


def response_b(u, w1, b1, w2, b2, tau) -> torch.Tensor:
    """``b = u + tau N(u)`` (``w1`` ``(hidden, C, 1, ...)``, ``w2`` ``(C, hidden, 1, ...)``;
    see the module docstring), in ``u``'s dtype; one launch."""
    u = u.contiguous()
    out = torch.empty_like(u)
    B, C, V = _flat(u)
    hid = w1.shape[0]
    if u.numel():
        with launches.triton_launch("response_fwd"):
            block = _block(u)
            kernels()["response_fwd"][(-(-V // block), B)](
                u, out, w1, b1, w2, b2, tau, C, V, hid, HP=_pow2(hid), BLOCK=block
            )
    return out


def response_partials_width(C: int, hidden: int) -> int:
    """Entries of one program's partial sums: ``2 hidden C + hidden + 2 C``."""
    return 2 * hidden * C + hidden + 2 * C


def response_backward(u, gb, gu, w1, b1, w2, b2, tau) -> torch.Tensor:
    """Adds ``W1^T ((W2^T (tau gb)) (1 - h^2))`` to ``gu`` (in place: a temporary of the
    caller) and returns the per-program partial sums ``(rows, width)`` of the weight
    gradients (:func:`response_partials_width`, layout of :func:`gradient_layout` past the
    AOS part); one launch."""
    u, gb = u.contiguous(), gb.contiguous()
    assert gu.is_contiguous()
    B, C, V = _flat(u)
    hid = w1.shape[0]
    block = _block(u)
    blocks = -(-V // block)  # tiles of `block` voxels per sample
    tiles = -(-blocks // MAX_PROGRAMS)  # per program
    programs = -(-blocks // tiles) if blocks else 0
    part = torch.empty(
        (B * programs, response_partials_width(C, hid)), dtype=tau.dtype, device=u.device
    )
    if u.numel():
        with launches.triton_launch("response_bwd"):
            kernels()["response_bwd"][(programs, B)](
                u, gb, gu, part, w1, b1, w2, b2, tau, C, V, hid, tiles,
                HP=_pow2(hid), CP=_pow2(C), BLOCK=block,
            )  # fmt: skip
    else:
        part = part.new_zeros((1, part.shape[1]))
    return part


def gradient_layout(m: int, C: int, hidden: int | None) -> list[tuple[str, int, int]]:
    """``(name, offset, size)`` of each gradient in the flat vector of :func:`reduce_partials`
    (without a reaction, ``hidden`` ``None``, only the AOS coefficients)."""
    sizes = [("cA", m * C), ("ce", m * C), ("k", m * C)]
    if hidden is not None:
        sizes += [("w1", hidden * C), ("b1", hidden), ("w2", C * hidden), ("b2", C), ("tau", C)]
    out, off = [], 0
    for name, size in sizes:
        out.append((name, off, size))
        off += size
    return out


def reduce_partials(aos, programs, B, C, resp, acc) -> torch.Tensor:
    """The flat gradient vector (:func:`gradient_layout`): the sums of the AOS partials
    ``aos`` (flat; axis ``d`` holds ``(B, C, programs[d], 3)`` after the others) and of the
    reaction's ``resp`` ``(rows, width)`` (or ``None``), plus ``acc`` (or ``None``); one
    launch."""
    m = len(programs)
    P = [*programs, 1, 1][:3]
    offsets = [0]
    for p in programs[:-1]:
        offsets.append(offsets[-1] + B * C * p * 3)
    offsets = [*offsets, 0, 0][:3]
    nr = 0 if resp is None else resp.shape[1]
    rows = 0 if resp is None else resp.shape[0]
    total = 3 * m * C + nr
    out = torch.empty(total, dtype=aos.dtype, device=aos.device)
    with launches.triton_launch("reduce"):
        kernels()["reduce"][(-(-total // REDUCE_BLOCK),)](
            aos, aos if resp is None else resp, out if acc is None else acc, out,
            B, C, m, *P, offsets[1], offsets[2], max(programs), rows, nr,
            HAS_ACC=acc is not None, BLOCK=REDUCE_BLOCK,
        )  # fmt: skip
    return out


def coefficients(logit, alpha_raw, kappa_raw, spacing, tau_max, rate, theta):
    """``(tau, cA, ce, k)``: the bounded step ``tau_max sigmoid(logit) / (1 + tau R alpha)``
    ``(C,)`` (``R = rate``, 0 where the solver needs no bound) and the per-axis coefficients
    ``(m, C)`` of the fused step: ``cA = m theta tau alpha / h_d^2``, ``ce = m (1 - theta)
    tau alpha / h_d^2`` (empty where ``theta = 1``), ``k = 1 / (h_d kappa)`` (empty without
    ``kappa_raw``); ``alpha = softplus(alpha_raw)``, ``kappa = softplus(kappa_raw) + 1e-3``.
    In ``alpha_raw``'s dtype; one launch."""
    C, m = alpha_raw.shape[0], len(spacing)
    has_ce, has_k = theta < 1.0, kappa_raw is not None
    ts = torch.empty_like(alpha_raw)
    cA = alpha_raw.new_empty((m, C))
    ce = alpha_raw.new_empty((m, C) if has_ce else (0,))
    k = alpha_raw.new_empty((m, C) if has_k else (0,))
    ih = [1.0 / h for h in spacing] + [1.0] * (3 - m)
    with launches.triton_launch("coef_fwd"):
        kernels()["coef_fwd"][(1,)](
            logit, alpha_raw, alpha_raw if kappa_raw is None else kappa_raw,
            ts, cA, ce if has_ce else cA, k if has_k else cA,
            C, m, tau_max, rate, theta, *ih,
            HAS_CE=has_ce, HAS_K=has_k, BLOCK=_pow2(C),
        )  # fmt: skip
    return ts, cA, ce, k


def coefficients_backward(logit, alpha_raw, kappa_raw, gts, gcA, gce, gk, spacing, tau_max,
                          rate, theta):  # fmt: skip
    """``(g_logit, g_alpha_raw, g_kappa_raw)`` of :func:`coefficients` for the gradients of
    its outputs (``gce``/``gk`` ``None`` where absent; ``g_kappa_raw`` zeros without
    ``kappa_raw``); one launch."""
    C, m = alpha_raw.shape[0], len(spacing)
    has_ce, has_k = gce is not None, kappa_raw is not None
    glogit = torch.empty_like(logit)
    gar = torch.empty_like(alpha_raw)
    gkr = torch.empty_like(alpha_raw)
    ih = [1.0 / h for h in spacing] + [1.0] * (3 - m)
    with launches.triton_launch("coef_bwd"):
        kernels()["coef_bwd"][(1,)](
            logit, alpha_raw, alpha_raw if kappa_raw is None else kappa_raw,
            gts, gcA, gce if has_ce else gcA, gk if has_k and gk is not None else gcA,
            glogit, gar, gkr, C, m, tau_max, rate, theta, *ih,
            HAS_CE=has_ce, HAS_K=has_k and gk is not None, BLOCK=_pow2(C),
        )  # fmt: skip
    return glogit, gar, gkr
