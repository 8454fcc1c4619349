"""The Triton kernels of the block's other passes (pde/kernels/triton_tail.py,
triton_reaction.py, registered in triton_ops.py) on CPU tensors under TRITON_INTERPRET=1,
against plain torch written here (differentiated by autograd): standardisation, gate and
energy, reaction, parameter transforms, the partial sums; odd sizes, fp16/bf16 inputs,
huge magnitudes; opcheck of every Triton op as a block calls it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_pde.pde import PDEBlock, PDEConfig, native
from nnunet_pde.pde.kernels import backend, ops, triton_ops, triton_reaction, triton_tail

pytest.importorskip("triton")

EPS = 1e-5
# odd sizes, a singleton axis, a 2-D map, a volume larger than one chunk (1024 values)
SHAPES = [(2, 3, 5, 4, 7), (1, 2, 1, 6, 3), (2, 2, 9, 5), (1, 1, 11, 10, 13)]


@pytest.fixture
def on_triton(monkeypatch):
    """The Triton backend, interpreted on the CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(backend.ENV, "triton")
    assert backend.describe("cpu").name == "triton", backend.describe("cpu")


def _bc(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape(*t.shape, *([1] * (ndim - t.ndim)))


def ref_standardise(x: torch.Tensor, eps: float = EPS):
    """``(x_hat, mean, std)`` per volume, statistics in float64 (differentiable)."""
    dims = tuple(range(2, x.ndim))
    x64 = x.double()
    mean = x64.mean(dim=dims, keepdim=True)
    std = torch.sqrt((x64 - mean).square().mean(dim=dims, keepdim=True) + eps)
    return ((x64 - mean) / std).to(x.dtype), mean.to(x.dtype), std.to(x.dtype)


def ref_energy(z: torch.Tensor, spacing, eps: float = EPS) -> torch.Tensor:
    """``(1/m) sum_d mean log(1 + (diff_d z / (std h_d))^2)`` (an axis of one cell: 0)."""
    _, _, std = ref_standardise(z, eps)
    total = z.new_zeros(())
    for d, h in enumerate(spacing):
        if z.shape[2 + d] > 1:
            s = torch.diff(z, dim=2 + d) / (std * h)
            total = total + torch.log1p(s * s).mean()
    return total / len(spacing)


def ref_response_b(u, w1, b1, w2, b2, tau):
    conv = F.conv3d if u.ndim == 5 else F.conv2d
    h = torch.tanh(conv(u, w1, b1))
    return u + _bc(tau, u.ndim - 1) * conv(h, w2, b2)


def _weights(C: int, hidden: int, ndim: int, dtype, scale: float = 1.0):
    g = torch.Generator().manual_seed(5)
    ones = (1,) * ndim
    return (
        scale * torch.randn(hidden, C, *ones, generator=g, dtype=dtype),
        torch.randn(hidden, generator=g, dtype=dtype),
        torch.randn(C, hidden, *ones, generator=g, dtype=dtype),
        torch.randn(C, generator=g, dtype=dtype),
        torch.rand(C, generator=g, dtype=dtype) + 0.1,
    )


# --------------------------------------------------------------------------- standardisation


@pytest.fixture(params=[16384, 32], ids=["chunk", "chunks"])
def chunk(request, monkeypatch) -> int:
    """Values per program of the per-volume passes: the default (one chunk per volume here)
    and 32 (several chunks, the last one partial)."""
    monkeypatch.setattr(triton_tail, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
def test_standardise_forward_and_backward(on_triton, chunk, shape) -> None:
    """x_hat, mean, std, and dL/dx (through x_hat, the gate's mean/std terms and (1 - gamma)
    gy) equal autograd of the plain reference, in float64."""
    torch.manual_seed(0)
    B, C = shape[:2]
    x = (3.0 * torch.randn(shape, dtype=torch.float64) + 2.0).requires_grad_()
    gamma = torch.randn(C, dtype=torch.float64)
    x_hat, mean, std = triton_tail.standardise_forward(x.detach(), EPS)
    r_hat, r_mean, r_std = ref_standardise(x)
    torch.testing.assert_close(x_hat, r_hat, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, r_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(std, r_std, rtol=1e-12, atol=1e-12)
    g_hat, gy = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    nchunk = triton_tail.chunks(x[0, 0].numel())
    parts = torch.randn(B, C, nchunk, 5, dtype=torch.float64)  # per-chunk sums of the gate
    S = parts.sum(dim=2)
    dx, ggp = triton_tail.standardise_backward(x_hat, std, g_hat, parts, gamma, gy)
    gam = gamma.reshape(1, -1)
    # the gate's statistics gradients gamma sum gy -> mean, gamma sum gy u -> std
    loss = (
        (g_hat * r_hat).sum()
        + (_bc(gam * S[..., 0], x.ndim) * r_mean).sum()
        + (_bc(gam * S[..., 1], x.ndim) * r_std).sum()
        + (_bc(1.0 - gam.expand(B, -1), x.ndim) * gy * x).sum()
    )
    (want,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(dx, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ggp, std.reshape(B, C) * (S[..., 1] - S[..., 2]))


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_standardise_huge_and_tiny_magnitudes_equal_the_c_kernels(on_triton, chunk, scale):
    """Features of 1e30 (float32 squares overflow) and 1e-30: the same statistics as the C
    kernels, which sum in float64."""
    if native.library() is None:
        pytest.skip("no compiled C kernels")
    torch.manual_seed(1)
    x = scale * (torch.randn(2, 3, 5, 4, 7) + 0.5)
    got = triton_tail.standardise_forward(x, EPS)
    want = native.standardise_forward(x, EPS)
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_standardise_and_tail_take_low_precision_inputs(on_triton, dtype) -> None:
    """fp16/bf16 maps are converted on load and reduced in float32 (statistics float32):
    equal to the float32 kernels on the same rounded inputs to the dtype's rounding."""
    torch.manual_seed(2)
    x = (100.0 * torch.randn(2, 3, 5, 4, 7) + 300.0).to(dtype)
    u = torch.randn(2, 3, 5, 4, 7).to(dtype)
    x_hat, mean, std = triton_tail.standardise_forward(x, EPS)
    assert x_hat.dtype == dtype and mean.dtype == std.dtype == torch.float32
    r_hat, r_mean, r_std = triton_tail.standardise_forward(x.float(), EPS)
    torch.testing.assert_close(x_hat.float(), r_hat, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(mean, r_mean)
    torch.testing.assert_close(std, r_std)
    gamma = torch.rand(3)
    y, esum, *_ = triton_tail.tail_forward(x, u, gamma, mean, std, (1.0, 2.0, 1.0), EPS, True)
    ry, resum, *_ = triton_tail.tail_forward(
        x.float(), u.float(), gamma, mean, std, (1.0, 2.0, 1.0), EPS, True
    )
    assert y.dtype == dtype and esum.dtype == torch.float32
    torch.testing.assert_close(y.float(), ry, rtol=1e-2, atol=1e-1)
    torch.testing.assert_close(esum, resum)


# --------------------------------------------------------------------------- gate and energy


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("energy", [True, False], ids=["energy", "gate"])
def test_tail_forward_and_backward(on_triton, chunk, shape, energy) -> None:
    """The gate y, the energy (sum of the per-volume terms), u's statistics, dL/du and the
    gate's sums equal autograd of the plain reference, in float64."""
    torch.manual_seed(3)
    m = len(shape) - 2
    spacing = (1.0, 2.5, 1.5)[:m]
    B, C = shape[:2]
    x = torch.randn(shape, dtype=torch.float64)
    x_hat, mean, std = ref_standardise(x)
    u = (2.0 * torch.randn(shape, dtype=torch.float64)).requires_grad_()
    gamma = torch.randn(C, dtype=torch.float64)
    y, esum, e_mean, e_inv = triton_tail.tail_forward(
        x, u.detach(), gamma, mean, std, spacing, EPS, energy
    )
    gam = _bc(gamma.reshape(1, -1), len(shape))
    want_y = (1.0 - gam) * x + gam * (mean + std * u)
    torch.testing.assert_close(y, want_y.detach(), rtol=1e-12, atol=1e-12)
    gy = torch.randn(shape, dtype=torch.float64)
    ge = torch.tensor(1.7, dtype=torch.float64)
    loss = (gy * want_y).sum()
    if energy:
        want_e = ref_energy(u, spacing)
        torch.testing.assert_close(esum.sum(), want_e.detach(), rtol=1e-12, atol=1e-12)
        _, r_mean, r_std = ref_standardise(u.detach())
        torch.testing.assert_close(e_mean, r_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(e_inv, 1.0 / r_std, rtol=1e-12, atol=1e-12)
        loss = loss + ge * want_e
    else:
        assert esum.numel() == 0
    (want_gu,) = torch.autograd.grad(loss, u)
    gu, S = triton_tail.tail_backward(
        gy, u.detach(), x_hat, gamma, std, e_mean, e_inv, ge, spacing, energy
    )
    torch.testing.assert_close(gu, want_gu, rtol=1e-10, atol=1e-10)
    dims = tuple(range(2, len(shape)))
    want_S = torch.stack([gy.sum(dims), (gy * u).sum(dims), (gy * x_hat).sum(dims)], dim=-1)
    assert S.shape == (B, C, triton_tail.chunks(x[0, 0].numel()), 5)
    torch.testing.assert_close(S.sum(dim=2)[..., :3], want_S.detach(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- reaction


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 7), (1, 5, 9, 13), (2, 1, 3, 1, 70)])
@pytest.mark.parametrize("hidden", [3, 6])
@pytest.mark.parametrize("max_programs", [1024, 2], ids=["tile", "tiles"])
def test_response_forward_and_backward(on_triton, monkeypatch, shape, hidden, max_programs):
    # tiles of 16 voxels (the GPU takes 64, the interpreter 512): several programs per sample
    """b = u + tau N(u) and, through the partial sums and their reduction, dL/du of tau N(u)
    (added to the given gu) and every weight gradient equal autograd of the 1x1 convolutions, in
    float64; pre-activations from 1e-6 to 40 (tanh near 0 and saturated); one tile of
    voxels per program of the backward, or several (its partial sums kept across tiles)."""
    monkeypatch.setattr(triton_reaction, "MAX_PROGRAMS", max_programs)
    monkeypatch.setattr(triton_reaction, "INTERPRET_BLOCK", 16)
    torch.manual_seed(4)
    B, C = shape[:2]
    u = torch.randn(shape, dtype=torch.float64)
    u[0, 0].flatten()[:3] = torch.tensor([1e-6, 40.0, -40.0], dtype=torch.float64)
    params = [t.requires_grad_() for t in _weights(C, hidden, len(shape) - 2, torch.float64)]
    ui = u.clone().requires_grad_()
    want = ref_response_b(ui, *params)
    b = triton_reaction.response_b(u, *params[:4], params[4].detach())
    torch.testing.assert_close(b, want.detach(), rtol=1e-12, atol=1e-12)
    gb, gu0 = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    want_grads = torch.autograd.grad(want, [ui, *params], gb)
    gu = gu0.clone()
    w1, b1, w2, b2, tau = (t.detach() for t in params)
    part = triton_reaction.response_backward(u, gb, gu, w1, b1, w2, b2, tau)
    # the identity's gb is in the AOS backward's gu already: only the reaction's part is added
    torch.testing.assert_close(gu, gu0 + want_grads[0] - gb, rtol=1e-10, atol=1e-10)
    aos = torch.zeros(B * C * 3, dtype=torch.float64)  # one axis, one program, all zero
    acc = torch.randn(3 * C + part.shape[1], dtype=torch.float64)
    G = triton_reaction.reduce_partials(aos, [1], B, C, part, acc)
    layout = {n: (o, s) for n, o, s in triton_reaction.gradient_layout(1, C, hidden)}
    for name, w in zip(("w1", "b1", "w2", "b2", "tau"), want_grads[1:], strict=True):
        o, s = layout[name]
        torch.testing.assert_close(G[o : o + s] - acc[o : o + s], w.flatten(), msg=name)
    torch.testing.assert_close(G[: 3 * C], acc[: 3 * C])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_response_takes_low_precision_inputs(on_triton, dtype) -> None:
    torch.manual_seed(5)
    u = torch.randn(2, 3, 5, 4, 7).to(dtype)
    w1, b1, w2, b2, tau = _weights(3, 4, 3, torch.float32)
    b = triton_reaction.response_b(u, w1, b1, w2, b2, tau)
    assert b.dtype == dtype
    want = ref_response_b(u.double(), *(t.double() for t in (w1, b1, w2, b2, tau)))
    torch.testing.assert_close(b.double(), want.to(dtype).double(), rtol=1e-2, atol=2e-2)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("theta", [1.0, 0.5], ids=["implicit", "crank-nicolson"])
@pytest.mark.parametrize("edge", [True, False], ids=["kappa", "laplacian"])
def test_coefficients_forward_and_backward(on_triton, theta, edge) -> None:
    """tau, cA, ce, k and the gradients of the raw parameters equal autograd of the
    block's formulas (sigmoid, softplus, the bounded step), raw values past softplus's
    threshold (20) and far below 0 included, in float64."""
    torch.manual_seed(6)
    spacing = (1.0, 2.5, 1.5)
    m = len(spacing)
    logit = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    ar = torch.tensor([0.5, -3.0, 25.0, -30.0, 1.0], dtype=torch.float64, requires_grad=True)
    kr = torch.tensor([1.0, 22.0, -2.0, 0.1, -25.0], dtype=torch.float64, requires_grad=True)
    rate = m * max(1.0 / h**2 for h in spacing) if theta < 1.0 else 0.0
    ts, cA, ce, k = triton_ops.coefficients(
        logit, ar, kr if edge else None, spacing, 5.0, rate, theta
    )
    tau = 5.0 * torch.sigmoid(logit)
    alpha = F.softplus(ar)
    w_ts = tau / (1.0 + tau * rate * alpha)
    base = torch.stack([w_ts * alpha / h**2 for h in spacing])
    want = [w_ts, m * theta * base]
    got = [ts, cA]
    if theta < 1.0:
        want.append(m * (1.0 - theta) * base)
        got.append(ce)
    else:
        assert ce is None
    if edge:
        kappa = F.softplus(kr) + 1e-3
        want.append(torch.stack([1.0 / (h * kappa) for h in spacing]))
        got.append(k)
    else:
        assert k is None
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    ups = [torch.randn_like(t) for t in want]
    inputs = [logit, ar, kr] if edge else [logit, ar]
    got_g = torch.autograd.grad(got, inputs, ups)
    want_g = torch.autograd.grad(want, inputs, ups)
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- the ops


def test_step_backward_accumulates_the_gradients_of_the_steps(on_triton) -> None:
    """The step backward op adds its flat parameter gradient to the previous one (``acc``)."""
    torch.manual_seed(7)
    u = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64)
    g = torch.randn_like(u)
    w1, b1, w2, b2, tau = _weights(2, 2, 3, torch.float64)
    cA = torch.rand(3, 2, dtype=torch.float64)
    k = torch.rand(3, 2, dtype=torch.float64) + 0.5
    args = (u, g, tau, cA, None, k, w1, b1, w2, b2)
    gu, G = triton_ops.step_backward_kernel(*args, None)
    acc = torch.randn_like(G)
    gu2, G2 = triton_ops.step_backward_kernel(*args, acc)
    torch.testing.assert_close(gu2, gu)
    torch.testing.assert_close(G2, G + acc)


def test_opcheck_every_triton_op(on_triton, monkeypatch) -> None:
    """Every Triton op passes opcheck with the arguments a block passes (training steps of
    both exact solvers, with and without the regulariser, eager and as while compiling)."""
    calls: dict[str, tuple] = {}
    original = ops.Kernel.__call__
    names = {k: name for name, k in ops.Kernel.registry.items()}

    def record(self, *args):
        copy = tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)
        calls.setdefault(names[self], copy)
        return original(self, *args)

    monkeypatch.setattr(ops.Kernel, "__call__", record)
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
        for config in (PDEConfig(), PDEConfig(solver="crank_nicolson", response=False)):
            torch.manual_seed(8)
            block = PDEBlock(2, (1.0, 2.0, 1.0), config).train()
            with torch.no_grad():
                block.gamma.fill_(0.5)
            x = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
            for record_energy in (True, False):
                block.record_consistency = record_energy
                y = block(x)
                loss = y.square().sum()
                if record_energy:
                    loss = loss + block.last_residuals["energy"]
                loss.backward()
    monkeypatch.undo()
    triton_names = {n for n in ops.Kernel.registry if n.startswith("triton_")}
    missing = triton_names - set(calls)
    assert not missing, f"Triton ops a block never called here: {sorted(missing)}"
    for name in sorted(triton_names):
        torch.library.opcheck(getattr(torch.ops.nnunet_pde, name).default, calls[name])
