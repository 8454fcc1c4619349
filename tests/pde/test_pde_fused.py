"""The fused, memory-light steps (pde/fused.py, pde/native.py, pde/csrc/aos.c).

Each fused piece is checked against an independent reference: the compiled kernels against
the vectorised torch implementation and both against the reference implementation of the
block differentiated by autograd (``block.fused = False``), the hand-written backwards by
``gradcheck`` in float64, and what backward keeps by counting saved storages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from nnunet_pde.pde import PDEBlock, PDEConfig, fused, native
from nnunet_pde.pde.kernels import backend as kernel_backend
from nnunet_pde.pde.kernels import torch_aos

HAS_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


@pytest.fixture
def torch_backend(monkeypatch):
    """Run the fused step on its torch implementation (as on CUDA or without a compiler)."""
    monkeypatch.setenv("NNUNET_PDE_BACKEND", "torch")


def _coefficients(m: int, c: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cA = 3.0 * torch.rand(m, c, generator=g, dtype=dtype)
    ce = torch.rand(m, c, generator=g, dtype=dtype)
    k = 0.3 + 2.0 * torch.rand(m, c, generator=g, dtype=dtype)
    return cA, ce, k


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_kernels_build_where_a_compiler_exists() -> None:
    assert native.library() is not None, native.unavailable_reason()
    assert kernel_backend.describe("cpu").name == "c"


# Shapes: inner sizes below, at and above the 16 lanes (full and partial panels), a
# singleton axis, a 2-D map.
SHAPES = [(2, 3, 5, 6, 7), (1, 2, 40, 17, 33), (2, 2, 1, 6, 20), (1, 2, 3, 16, 32), (2, 3, 9, 21)]


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("theta", [1.0, 0.5])
@pytest.mark.parametrize("edge_stopping", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_kernels_equal_the_torch_implementation(shape, theta, edge_stopping, dtype):
    torch.manual_seed(1)
    u = torch.randn(*shape, dtype=dtype)
    b = torch.randn_like(u)
    g = torch.randn_like(u)
    cA, ce, k = _coefficients(len(shape) - 2, shape[1], dtype)
    ce = ce if theta < 1 else None
    k = k if edge_stopping else None
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    assert native.library() is not None
    torch.testing.assert_close(
        native.diffusion_forward(u, b, cA, ce, k),
        torch_aos.diffusion_forward_torch(u, b, cA, ce, k),
        **tol,
    )
    got = native.diffusion_backward(u, b, g, cA, ce, k)
    want = torch_aos.diffusion_backward_torch(u, b, g, cA, ce, k)
    names = ("dL/db", "dL/du", "dL/dcA", "dL/dce", "dL/dk")
    for name, x, y in zip(names, got, want, strict=True):
        if name == "dL/dce" and ce is None or name == "dL/dk" and k is None:
            continue
        torch.testing.assert_close(x, y, **tol, msg=lambda m, n=name: f"{n}: {m}")


# (shape, hidden units): voxels per sample below one sub-tile, across several chunks of the
# reaction kernels with a partial last sub-tile, and 4 x 4 weight-gradient blocks with
# remainders (C, H not multiples of 4) as well as without (32 x 32).
REACTION_CASES = [
    ((2, 5, 7, 9, 11), 3),
    ((1, 32, 20, 21, 23), 32),
    ((2, 8, 3, 40, 50), 12),
    ((2, 3, 9, 21), 5),
]


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize("shape,hidden", REACTION_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reaction_kernels_equal_the_torch_implementation(shape, hidden, dtype) -> None:
    """The reaction's forward and its one-kernel backward (h read from the forward, N never
    formed, weight, bias and tau gradients summed inside) against the torch formulas."""
    torch.manual_seed(3)
    c, one = shape[1], [1] * (len(shape) - 2)
    u, gb, gu_in = (torch.randn(*shape, dtype=dtype) for _ in range(3))
    w1 = 0.4 * torch.randn(hidden, c, *one, dtype=dtype)
    w2 = 0.4 * torch.randn(c, hidden, *one, dtype=dtype)
    b1, b2 = 0.3 * torch.randn(hidden, dtype=dtype), 0.3 * torch.randn(c, dtype=dtype)
    tau = torch.rand(c, dtype=dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    h, n = fused._response_torch(u, w1, b1, w2, b2)
    got_b, got_h, got_n = native.response_forward(
        u, w1, b1, w2, b2, tau, hidden=True, reaction=True
    )
    torch.testing.assert_close(got_h, h, **tol)
    torch.testing.assert_close(got_n, n, **tol)
    torch.testing.assert_close(got_b, u + tau.view(-1, *one) * n, **tol)
    gu_before = gu_in.clone()
    got = native.response_backward(u, gb, gu_in, got_h, w1, w2, b2, tau)
    assert torch.equal(gu_in, gu_before)  # not in place unless asked
    # (gu, gw1, gb1, gw2, gb2, gtau) from torch in float64 (sums over thousands of voxels:
    # float32 references round too), in the kernel's order
    d = [t.double() for t in (u, gb, gu_in, w1, b1, w2, b2, tau)]
    hd, nd = fused._response_torch(d[0], d[3], d[4], d[5], d[6])
    want = fused.response_backward_torch(d[0], hd, nd, d[1], d[2], d[7], d[3], d[5])
    names = ("gu", "gw1", "gb1", "gw2", "gb2", "gtau")
    # h given wrongly (zero) must change the result: the kernel really reads it
    wrong = native.response_backward(u, gb, gu_in, torch.zeros_like(got_h), w1, w2, b2, tau)
    assert not torch.allclose(wrong[0], got[0])
    for name, x, y in zip(names, got, want, strict=True):
        assert x.dtype == dtype
        err = (x.double() - y).abs().max().item()
        scale = y.abs().max().item()
        limit = 1e-12 if dtype == torch.float64 else 1e-5
        assert err <= limit * max(scale, 1.0), f"{name}: error {err:.3g}, scale {scale:.3g}"
    inplace = native.response_backward(u, gb, gu_in, got_h, w1, w2, b2, tau, inplace=True)
    assert inplace[0].data_ptr() == gu_in.data_ptr()
    torch.testing.assert_close(inplace[0].double(), want[0], **tol)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_scratch_buffers_are_reused_only_when_asked() -> None:
    """Eager fused steps take their temporaries from per-thread scratch; plain calls of the
    kernels must still return fresh tensors, and a step's output must not be a scratch."""
    torch.manual_seed(4)
    u = torch.randn(1, 3, 6, 7, 8)
    w1, w2 = torch.randn(4, 3, 1, 1, 1), torch.randn(3, 4, 1, 1, 1)
    b1, b2, tau = torch.zeros(4), torch.zeros(3), torch.ones(3)
    first = native.response_forward(u, w1, b1, w2, b2, tau)[0]
    second = native.response_forward(u + 1, w1, b1, w2, b2, tau)[0]
    assert first.data_ptr() != second.data_ptr()
    s1 = native.response_forward(u, w1, b1, w2, b2, tau, scratch=True)[0]
    s2 = native.response_forward(u + 1, w1, b1, w2, b2, tau, scratch=True)[0]
    assert s1.data_ptr() == s2.data_ptr()
    torch.testing.assert_close(s2, second)
    inputs = _step_inputs((1, 2, 5, 6, 7), 1.0, True, True)
    args = [t.detach().float().requires_grad_() if t is not None else None for t in inputs]
    out1 = fused.AOSStep.apply(*args)
    ref = out1.detach().clone()
    out2 = fused.AOSStep.apply(args[0] * 0.5, *args[1:])
    torch.testing.assert_close(out1.detach(), ref)  # the second step left the first alone
    (out1.sum() + out2.sum()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in args if t is not None)


def _use_backend(backend: str, monkeypatch) -> None:
    """Run the fused functions on the compiled kernels ("native", loaded here: a test run
    alone has nothing else that loads them) or on their torch implementation ("torch")."""
    if backend == "torch":
        monkeypatch.setenv("NNUNET_PDE_BACKEND", "torch")
    elif not HAS_COMPILER:
        pytest.skip("no C compiler on this machine")
    else:
        assert native.library() is not None, native.unavailable_reason()


def _step_inputs(shape, theta: float, edge_stopping: bool, response: bool):
    torch.manual_seed(2)
    m, c = len(shape) - 2, shape[1]
    u = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    tau = (0.2 + torch.rand(c, dtype=torch.float64)).requires_grad_()
    cA, ce, k = (t.requires_grad_() for t in _coefficients(m, c))
    w = [None] * 4
    if response:
        hidden = 4
        w = [
            (0.5 * torch.randn(hidden, c, *([1] * m), dtype=torch.float64)).requires_grad_(),
            (0.5 * torch.randn(hidden, dtype=torch.float64)).requires_grad_(),
            (0.5 * torch.randn(c, hidden, *([1] * m), dtype=torch.float64)).requires_grad_(),
            (0.5 * torch.randn(c, dtype=torch.float64)).requires_grad_(),
        ]
    return (u, tau, cA, ce if theta < 1 else None, k if edge_stopping else None, *w)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize(
    "theta,edge_stopping,response",
    [(1.0, True, True), (0.5, True, True), (1.0, False, False), (0.5, False, True)],
)
@pytest.mark.parametrize("shape", [(2, 2, 4, 5, 3), (1, 2, 5, 18)])
def test_fused_step_gradcheck(backend, theta, edge_stopping, response, shape, monkeypatch):
    """The hand-written backward of the whole step (diffusion kernels + reaction)."""
    _use_backend(backend, monkeypatch)
    inputs = _step_inputs(shape, theta, edge_stopping, response)
    assert torch.autograd.gradcheck(fused.AOSStep.apply, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("steps,energy,theta", [(2, True, 1.0), (3, False, 0.5), (1, True, 0.5)])
def test_fused_block_function_gradcheck(backend, steps, energy, theta, monkeypatch) -> None:
    """The whole-block function (standardisation, K steps, gate and regulariser, with its
    gradient buffers alternating between two scratch slots) against numerical derivatives
    in float64, for every input at once."""
    _use_backend(backend, monkeypatch)
    u, *params = _step_inputs((2, 2, 4, 5, 3), theta, True, True)
    x = (1.5 * u.detach() + 0.7).requires_grad_()
    gamma = torch.tensor([0.6, -0.4], dtype=torch.float64, requires_grad=True)
    spacing = (1.0, 1.4, 2.0)

    def f(x, gamma, *p):
        y, e = fused.FusedBlock.apply(x, gamma, *p, steps, spacing, 1e-5, energy)
        return y, 2.0 * e

    assert torch.autograd.gradcheck(f, (x, gamma, *params), eps=1e-6, atol=1e-6)


def test_standardise_and_edge_energy_gradcheck() -> None:
    torch.manual_seed(3)
    x = (3.0 * torch.randn(2, 3, 4, 5, 6, dtype=torch.float64) + 1.0).requires_grad_()

    def standardise(x):
        x_hat, mean, std = fused.Standardise.apply(x, 1e-5)
        # every output used, with weights, so every upstream gradient is non-trivial
        return (x_hat * torch.linspace(0, 1, x.numel(), dtype=x.dtype).view_as(x)).sum() + (
            mean.square().sum() + std.pow(3).sum()
        )

    assert torch.autograd.gradcheck(standardise, (x,))
    for spacing in [(1.0, 1.0, 1.0), (2.5, 1.0, 0.7)]:
        assert torch.autograd.gradcheck(
            lambda z, s=spacing: fused.EdgeEnergy.apply(z, s, 1e-5), (x,)
        )


def _edge_energy_by_autograd(z: torch.Tensor, spacing, eps: float = 1e-5) -> torch.Tensor:
    dims = tuple(range(2, z.ndim))
    mean = z.mean(dim=dims, keepdim=True)
    std = torch.sqrt((z - mean).square().mean(dim=dims, keepdim=True) + eps)
    zh = (z - mean) / std
    terms = [
        torch.log1p((torch.diff(zh, dim=2 + d) / h) ** 2).mean() for d, h in enumerate(spacing)
    ]
    return sum(terms) / len(spacing)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_edge_energy_equals_its_formula(backend, monkeypatch) -> None:
    _use_backend(backend, monkeypatch)
    torch.manual_seed(4)
    z = (2.0 * torch.randn(2, 3, 7, 20, 9, dtype=torch.float64)).requires_grad_()
    spacing = (3.0, 1.0, 1.4)
    e = fused.EdgeEnergy.apply(z, spacing, 1e-5)
    (g,) = torch.autograd.grad(0.7 * e, z)
    z2 = z.detach().clone().requires_grad_()
    e_ref = _edge_energy_by_autograd(z2, spacing)
    (g_ref,) = torch.autograd.grad(0.7 * e_ref, z2)
    torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-14)


def _run_block(block: PDEBlock, x: torch.Tensor):
    block.zero_grad()
    xx = x.clone().requires_grad_()
    y = block(xx)
    energy = block.last_residuals["energy"]
    (y.square().mean() + energy).backward()
    return [y.detach(), energy.detach(), xx.grad] + [p.grad.clone() for p in block.parameters()]


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"solver": "crank_nicolson"},
        {"operator": "laplacian"},
        {"response": False, "steps": 3},
        {"steps": 3},
        {"steps": 1, "solver": "crank_nicolson"},
        {"operator": "moment", "solver": "crank_nicolson"},
    ],
)
def test_fused_block_equals_reference_implementation(backend, cfg, monkeypatch) -> None:
    """Same values, regulariser and gradients (input and every parameter) as autograd
    through the reference implementation, on an anisotropic grid."""
    _use_backend(backend, monkeypatch)
    torch.manual_seed(5)
    block = PDEBlock(3, (2.0, 1.0, 1.3), PDEConfig(**cfg)).double().train()
    block.record_consistency = True
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert block.fused
    x = torch.randn(2, 3, 5, 17, 7, dtype=torch.float64)
    got = _run_block(block, x)
    block.fused = False
    want = _run_block(block, x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _saved_bytes(block: PDEBlock, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves in one training step (no parameters)."""
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)
        loss = y.sum()  # saves nothing itself
        if block.last_residuals is not None:
            loss = loss + block.last_residuals["energy"]
    loss.backward()
    return sum(seen.values())


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_training_step_saves_at_most_k_plus_one_feature_maps(steps: int) -> None:
    """x_hat, u_1, ..., u_K (+ per-channel vectors): the issue's bound is K + 2."""
    torch.manual_seed(6)
    block = PDEBlock(4, (1.0, 1.0, 2.0), PDEConfig(steps=steps)).train()
    block.record_consistency = True
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, 4, 12, 16, 16, requires_grad=True)
    fused_bytes = _saved_bytes(block, x)
    block.fused = False
    reference_bytes = _saved_bytes(block, x)
    per_map = x.numel() * x.element_size()
    assert fused_bytes <= (steps + 1) * per_map + 4096, fused_bytes / per_map
    assert reference_bytes > 10 * per_map  # what the fused step avoids


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


_BLOCK_CHECK = """
    import torch
    from nnunet_pde.pde import PDEBlock, PDEConfig
    from nnunet_pde.pde.kernels import backend
    block = PDEBlock(2, (1.0, 2.0, 1.0), PDEConfig()).train()
    x = torch.randn(1, 2, 4, 5, 6, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    print("backend:", backend.choose(x).reason)
"""
#: what _BLOCK_CHECK prints when the block fell back to the torch backend
_FELL_BACK = "backend: cpu: torch ("


def test_disabled_kernels_fall_back_to_torch() -> None:
    proc = _python(_BLOCK_CHECK, NNUNET_PDE_NATIVE="0")
    assert proc.returncode == 0, proc.stderr
    assert _FELL_BACK in proc.stdout
    assert "disabled by NNUNET_PDE_NATIVE=0" in proc.stdout


def test_failing_compiler_falls_back_with_its_reason(tmp_path) -> None:
    proc = _python(_BLOCK_CHECK, CC="false", NNUNET_PDE_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert _FELL_BACK in proc.stdout
    assert "no compiled C kernels (false " in proc.stdout and "failed" in proc.stdout
    assert not any(tmp_path.iterdir())  # no partial library left behind


def _cached_library(cache) -> tuple:
    libs = sorted(cache.glob("aos-*.so"))
    assert len(libs) == 1, libs
    return libs[0], libs[0].with_name(libs[0].name + ".sha256")


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_a_damaged_cached_library_is_rebuilt_not_loaded(tmp_path) -> None:
    """A library cut short (a crash after the rename, a half-copied shared cache) would
    kill every process with SIGBUS; another library under the expected name would not have
    the kernels. Both fail their checksum and are rebuilt."""
    env = {"NNUNET_PDE_CACHE": str(tmp_path)}
    first = _python(_BLOCK_CHECK, **env)
    assert first.returncode == 0 and "compiled C kernels" in first.stdout, first.stderr
    lib, checksum = _cached_library(tmp_path)
    good = lib.read_bytes()
    lib.write_bytes(good[: len(good) * 6 // 10])
    again = _python(_BLOCK_CHECK, **env)
    assert again.returncode == 0, (again.returncode, again.stderr)
    assert "compiled C kernels" in again.stdout
    assert lib.read_bytes() != good[: len(good) * 6 // 10]  # rebuilt
    # another (valid) shared library under the expected name: an extension module
    import math

    if not getattr(math, "__file__", "").endswith(".so"):
        pytest.skip("math is built into this Python: no shared library to plant")
    planted = open(math.__file__, "rb").read()
    lib.write_bytes(planted)
    third = _python(_BLOCK_CHECK, **env)
    assert third.returncode == 0, third.stderr
    assert "compiled C kernels" in third.stdout
    assert checksum.read_text().strip() != ""  # a valid pair again


def test_a_hanging_compiler_times_out_and_falls_back(tmp_path) -> None:
    hang = tmp_path / "cc-hangs"
    hang.write_text("#!/bin/sh\nsleep 120\n")
    hang.chmod(0o755)
    proc = _python(
        _BLOCK_CHECK,
        CC=str(hang),
        NNUNET_PDE_CC_TIMEOUT="2",
        NNUNET_PDE_CACHE=str(tmp_path / "cache"),
    )
    assert proc.returncode == 0, proc.stderr
    assert _FELL_BACK in proc.stdout
    assert "did not finish within 2 s" in proc.stdout


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_kernels_restore_the_callers_denormal_handling() -> None:
    """The kernels flush denormals inside (speed) but must not leave the mode set."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert (tiny * 1.0).item() != 0.0  # denormals are kept here before the call
    u = torch.randn(1, 2, 4, 5, 6)
    native.diffusion_forward(u, u, torch.ones(3, 2), None, torch.ones(3, 2))
    native.response_forward(
        u,
        torch.randn(2, 2, 1, 1, 1),
        torch.zeros(2),
        torch.randn(2, 2, 1, 1, 1),
        torch.zeros(2),
        torch.ones(2),
    )
    assert (tiny * 1.0).item() != 0.0


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_vector_tanh_is_accurate() -> None:
    x = torch.cat([torch.linspace(-12, 12, 200001), torch.logspace(-8, 1.2, 20001)])
    x = torch.cat([x, -x, torch.tensor([0.0, 0.3, -0.3])])
    ref = torch.tanh(x.double())
    rel = (native.tanh_f32(x).double() - ref).abs() / ref.abs().clamp_min(1e-30)
    assert rel.max() < 1e-6


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_vector_log1p_is_accurate() -> None:
    x = torch.cat([torch.zeros(1), torch.logspace(-12, 8, 200001), torch.linspace(0, 50, 10001)])
    ref = torch.log1p(x.double())
    rel = (native.log1p_f32(x).double() - ref).abs() / ref.clamp_min(1e-38)
    assert rel[x > 0].max() < 1e-6 and native.log1p_f32(x)[0] == 0


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize("shape", [(2, 3, 7, 20, 9), (1, 2, 1, 5, 17), (2, 2, 9, 21)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_statistics_kernels_equal_the_torch_implementation(shape, dtype, monkeypatch) -> None:
    """Standardise forward/backward and the edge energy, compiled kernels vs torch."""
    assert native.library() is not None  # loaded here: run alone, nothing else loads it
    torch.manual_seed(7)
    x = (3.0 * torch.randn(*shape, dtype=dtype) + 2.0).requires_grad_()
    spacing = tuple(1.0 + 0.5 * d for d in range(len(shape) - 2))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}

    def run():
        x_hat, mean, std = fused.Standardise.apply(x, 1e-5)
        e = fused.EdgeEnergy.apply(x_hat * 2.0 + 1.0, spacing, 1e-5)
        loss = (x_hat * x_hat.detach().sin()).sum() + mean.sum() + std.sum() + 10.0 * e
        (g,) = torch.autograd.grad(loss, x)
        return x_hat.detach(), mean.detach(), std.detach(), e.detach(), g

    got = run()
    monkeypatch.setenv("NNUNET_PDE_BACKEND", "torch")
    want = run()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert torch.isfinite(got[3])  # an axis of one cell contributes 0, not NaN


@pytest.mark.parametrize("energy", [False, True])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_gate_gradcheck_and_formula(backend, energy, monkeypatch) -> None:
    """The gated residual (and the regulariser of u_hat fused into it) passes gradcheck,
    equals ``x + gamma std (u_hat - x_hat)`` and, separately, :class:`EdgeEnergy`."""
    _use_backend(backend, monkeypatch)
    torch.manual_seed(8)
    shape = (2, 3, 4, 5, 17)
    spacing = (1.0, 1.5, 2.5)
    x, u = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for _ in range(2))
    gamma = torch.randn(3, dtype=torch.float64, requires_grad=True)
    stat = (2, 3, 1, 1, 1)
    mean = torch.randn(stat, dtype=torch.float64).requires_grad_()
    std = (torch.rand(stat, dtype=torch.float64) + 0.5).requires_grad_()
    # x_hat consistent with (x, mean, std), as in the block (read only for dL/dgamma)
    xh = ((x - mean) / std).detach()

    def f(x, u, gamma, mean, std):
        y, e = fused.GatedResidual.apply(x, u, xh, gamma, mean, std, spacing, 1e-5, energy)
        return y, 3.0 * e

    assert torch.autograd.gradcheck(f, (x, u, gamma, mean, std))
    y, e = f(x, u, gamma, mean, std)
    assert kernel_backend.name(y) == ("c" if backend == "native" else "torch")
    want = x + gamma.view(1, -1, 1, 1, 1) * std * (u - xh)
    torch.testing.assert_close(y, want)
    if energy:
        torch.testing.assert_close(e, 3.0 * fused.EdgeEnergy.apply(u, spacing, 1e-5))
    else:
        assert float(e.detach()) == 0.0
    # a closed gate returns x bit for bit, whatever u_hat holds
    y0, _ = fused.GatedResidual.apply(
        x, 1e6 * u, xh, torch.zeros_like(gamma), mean, std, spacing, 1e-5, energy
    )
    assert torch.equal(y0, x)


def test_fused_block_keeps_only_the_current_state_without_grad(monkeypatch) -> None:
    """Under ``torch.no_grad`` (inference) a state is freed once the next one exists; with
    grad enabled every state is kept for backward. Both give the same output."""
    import weakref

    block = PDEBlock(2, (1.0, 1.0, 1.0), PDEConfig(steps=3)).eval()
    x = torch.randn(1, 2, 5, 6, 7)
    outputs: list[weakref.ref] = []
    alive_at_call: list[list[bool]] = []
    step = fused._step_forward

    def spy(u, *args):
        alive_at_call.append([r() is not None for r in outputs])
        out = step(u, *args)
        outputs.append(weakref.ref(out))
        return out

    monkeypatch.setattr(fused, "_step_forward", spy)
    with torch.no_grad():
        y_inference = block(x)
    # third step: u_1 (first output) already freed, u_2 (its input) alive
    assert alive_at_call[2] == [False, True]
    outputs.clear()
    alive_at_call.clear()
    y_train = block(x.requires_grad_())
    assert alive_at_call[2] == [True, True]
    torch.testing.assert_close(y_inference, y_train.detach(), rtol=0, atol=0)
