"""The Triton backend (pde/kernels/triton_aos.py) on CPU tensors under TRITON_INTERPRET=1,
against the plain-torch AOS step differentiated by autograd, and the kernel interface:
backend choice, custom ops (opcheck), compile graph size, launch count.

The interpreter is slow (numpy per program and loop step), so the grids are tiny.
"""

from __future__ import annotations

import pytest
import torch
from pde_reference import compiled_graph_nodes

from nnunet_pde.pde import PDEBlock, PDEConfig, fused
from nnunet_pde.pde.kernels import backend, launches, ops, triton_aos
from nnunet_pde.pde.kernels.torch_aos import diffusion_forward_torch

pytest.importorskip("triton")


@pytest.fixture
def on_triton(monkeypatch):
    """The Triton backend, interpreted on the CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(backend.ENV, "triton")
    assert backend.describe("cpu").name == "triton", backend.describe("cpu")


def _coefs(m: int, c: int, ce: bool, k: bool, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cA = 3.0 * torch.rand(m, c, generator=g, dtype=dtype)
    cE = torch.rand(m, c, generator=g, dtype=dtype) if ce else None
    kk = 0.3 + 2.0 * torch.rand(m, c, generator=g, dtype=dtype) if k else None
    return cA, cE, kk


# odd sizes, a singleton axis, a 2-D map, more lines than one program's block (64)
SHAPES = [(2, 3, 5, 4, 7), (1, 2, 1, 6, 3), (2, 2, 9, 5), (1, 1, 3, 9, 11)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ce", [False, True], ids=["implicit", "crank-nicolson"])
@pytest.mark.parametrize("k", [False, True], ids=["laplacian", "edge-stopping"])
def test_triton_step_equals_autograd_of_the_torch_reference(on_triton, shape, ce, k) -> None:
    """Values and every gradient (u, b, cA, ce, k) of the Triton kernels equal autograd
    through the plain-torch Thomas solve, in float64."""
    torch.manual_seed(1)
    m, c = len(shape) - 2, shape[1]
    u = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    coefs = [None if t is None else t.requires_grad_() for t in _coefs(m, c, ce, k)]
    g = torch.randn(shape, dtype=torch.float64)
    want = diffusion_forward_torch(u, b, *coefs)
    inputs = [t for t in (u, b, *coefs) if t is not None]
    want_grads = [
        torch.zeros_like(t) if w is None else w  # u is unused by the linear implicit step
        for t, w in zip(
            inputs, torch.autograd.grad(want, inputs, g, allow_unused=True), strict=True
        )
    ]
    plain = [None if t is None else t.detach() for t in coefs]
    got = triton_aos.diffusion_forward(u.detach(), b.detach(), *plain)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    gb, gu, gcA, gce, gk = triton_aos.diffusion_backward(u.detach(), b.detach(), g, *plain)
    got_grads = [gu - gb, gb, gcA] + ([gce] if ce else []) + ([gk] if k else [])
    for name, x, y in zip(("u", "b", "cA", "ce", "k"), got_grads, want_grads, strict=False):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10, msg=f"d/d{name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_step_takes_low_precision_inputs(on_triton, dtype) -> None:
    """fp16/bf16 inputs are converted on load and integrated in float32: the result equals
    the float64 reference on the same (rounded) inputs to the output dtype's rounding."""
    torch.manual_seed(2)
    shape = (1, 2, 4, 5, 6)
    u = torch.randn(shape).to(dtype)
    b = torch.randn(shape).to(dtype)
    cA, ce, k = _coefs(3, 2, True, True, dtype=torch.float32)
    got = triton_aos.diffusion_forward(u, b, cA, ce, k)
    assert got.dtype == dtype
    want = diffusion_forward_torch(u.double(), b.double(), cA.double(), ce.double(), k.double())
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


CONFIGS = [
    PDEConfig(),
    PDEConfig(solver="crank_nicolson"),
    PDEConfig(operator="laplacian"),
    PDEConfig(operator="moment", solver="crank_nicolson"),
    PDEConfig(response=False),
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"{c.operator}-{c.solver}-r{int(c.response)}"
)
def test_block_on_triton_equals_block_on_torch(on_triton, monkeypatch, config) -> None:
    """A whole block (anisotropic spacing, odd sizes, open gate, regulariser recorded):
    output, regulariser and every gradient on the Triton backend equal the torch backend."""
    torch.manual_seed(3)
    block = PDEBlock(3, (1.0, 2.5, 1.0), config).double().train()
    block.record_consistency = True
    with torch.no_grad():
        block.gamma.copy_(torch.tensor([0.4, -0.3, 0.8]))
        if block.response is not None:
            block.response.out.weight.normal_(0, 0.3)
    x = torch.randn(2, 3, 5, 4, 6, dtype=torch.float64)

    def run():
        xi = x.clone().requires_grad_()
        block.zero_grad()
        y = block(xi)
        loss = (y * y.detach().cos()).sum() + 5.0 * block.last_residuals["energy"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
        return y.detach(), xi.grad, grads

    assert backend.choose(x).name == "triton"
    y_t, gx_t, gp_t = run()
    monkeypatch.setenv(backend.ENV, "torch")
    y_r, gx_r, gp_r = run()
    torch.testing.assert_close(y_t, y_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx_t, gx_r, rtol=1e-9, atol=1e-9)
    assert gp_t.keys() == gp_r.keys() and "tau_logit" in gp_t
    for name in gp_t:
        torch.testing.assert_close(gp_t[name], gp_r[name], rtol=1e-9, atol=1e-9, msg=name)


def test_fused_step_gradcheck_on_triton(on_triton) -> None:
    torch.manual_seed(4)
    shape = (1, 2, 3, 4, 5)
    u = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    tau = (0.2 + torch.rand(2, dtype=torch.float64)).requires_grad_()
    cA, ce, k = (t.requires_grad_() for t in _coefs(3, 2, True, True))
    w1 = torch.randn(3, 2, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 3, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    args = (u, tau, cA, ce, k, w1, b1, w2, b2)
    # fast mode (random directions): the interpreter makes each evaluation slow
    assert torch.autograd.gradcheck(fused.AOSStep.apply, args, fast_mode=True)


@pytest.mark.parametrize("which", ["triton", "c", "torch"])
def test_opcheck_aos_ops(monkeypatch, which) -> None:
    """Schema, fake tensor and autograd registration of the AOS ops on each backend."""
    if which == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(backend.ENV, which)
    if backend.describe("cpu").name != which:
        pytest.skip(backend.describe("cpu").reason)
    torch.manual_seed(5)
    shape = (1, 2, 3, 4, 5)
    u = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    cA, ce, k = (t.requires_grad_() for t in _coefs(3, 2, True, True))
    torch.library.opcheck(ops.aos_diffusion.op, (u, b, cA, ce, k))
    torch.library.opcheck(ops.aos_diffusion.op, (u, b, cA, None, None))
    g = torch.randn(shape, dtype=torch.float64)
    plain = (u.detach(), b.detach(), g, cA.detach(), ce.detach(), None)
    torch.library.opcheck(ops.aos_diffusion_backward.op, plain)
    # the registered autograd gives the reference gradients
    out = ops.aos_diffusion.op(u, b, cA, ce, k)
    got = torch.autograd.grad(out, (u, b, cA, ce, k), g)
    want = torch.autograd.grad(diffusion_forward_torch(u, b, cA, ce, k), (u, b, cA, ce, k), g)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("which", ["triton", "c"])
def test_compile_graph_does_not_grow_with_the_grid(monkeypatch, which) -> None:
    """Every kernel is one opaque node: the traced graph of a block has the same size at
    n = 8 and n = 32 (the torch backend's Thomas loop would be unrolled: it grows)."""
    if which == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(backend.ENV, which)
    if backend.describe("cpu").name != which:
        pytest.skip(backend.describe("cpu").reason)
    small, large = compiled_graph_nodes(8), compiled_graph_nodes(32)
    assert small == large, (small, large)


def test_compile_graph_of_the_torch_backend_grows(monkeypatch) -> None:
    """The check above can fail: the torch backend's loop is unrolled by dynamo."""
    monkeypatch.setenv(backend.ENV, "torch")
    assert compiled_graph_nodes(3) < compiled_graph_nodes(5)


def test_launches_of_a_triton_block_do_not_depend_on_the_grid(on_triton) -> None:
    """Launches per block training step (estimate: ATen ops + Triton launches) are the same
    at n = 4 and n = 8 and at most 40 (issue 21's target), with no host synchronisation.
    Triton: parameters 2 (forward, backward), standardisation, gate and energy 4 each (two
    launches per pass: chunk statistics, then their combination); per step the reaction 2
    + AOS 2 per axis + reaction backward + partial sums."""
    seen = []
    for n in (4, 8):
        block = PDEBlock(4, (1.0, 1.0, 2.0), PDEConfig()).train()
        block.record_consistency = True
        x = torch.randn(1, 4, n, n, n, requires_grad=True)
        block(x)  # first call: kernel definitions
        with launches.count() as c:
            y = block(x)
            (y.sum() + block.last_residuals["energy"]).backward()
        assert c.triton == 10 + block.config.steps * (2 * 3 + 4), c.by_op
        assert c.aten <= 8, c.by_op  # the loss, the energy's and dL/dgamma's sums, gy
        assert c.total <= 40, c.by_op
        assert c.syncs == 0, c.by_op
        seen.append(c.total)
    assert seen[0] == seen[1], seen


def test_forced_backend_that_cannot_run_is_an_error(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(backend.ENV, "triton")
    with pytest.raises(backend.BackendError, match="TRITON_INTERPRET=1"):
        backend.choose(torch.zeros(1, 1, 2, 2, 2))
    monkeypatch.setenv(backend.ENV, "cuda")
    with pytest.raises(backend.BackendError, match="auto, c, triton, torch"):
        backend.choose(torch.zeros(1, 1, 2, 2, 2))
    monkeypatch.setenv(backend.ENV, "c")
    with pytest.raises(backend.BackendError, match="float32/float64"):
        backend.choose(torch.zeros(1, 1, 2, 2, 2, dtype=torch.float16))


def test_auto_backend_and_its_reason(monkeypatch) -> None:
    monkeypatch.delenv(backend.ENV, raising=False)
    choice = backend.describe("cuda")
    assert choice.name == "triton" and choice.reason.startswith("cuda: triton")
    monkeypatch.setenv("NNUNET_PDE_NATIVE", "0")
    from nnunet_pde.pde import native

    if native.library() is None:  # this process has not built them yet
        choice = backend.choose(torch.zeros(1, 1, 2, 2, 2))
        assert choice.name == "torch" and "no compiled C kernels" in choice.reason
    choice = backend.choose(torch.zeros(1, 1, 2, 2, 2, dtype=torch.float16))
    assert choice.name == "torch" and "float32/float64" in choice.reason


def test_opcheck_every_kernel_op(monkeypatch) -> None:
    """Every registered custom op passes opcheck with the arguments a block really passes
    (recorded from training steps on the C backend, eager and as while torch.compile
    traces, for both exact solvers), so each is one correct opaque node when compiled."""
    if backend.describe("cpu").name != "c":
        pytest.skip(backend.describe("cpu").reason)
    calls: dict[str, tuple] = {}
    original = ops.Kernel.__call__
    names = {k: name for name, k in ops.Kernel.registry.items()}

    def record(self, *args):
        copy = tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)
        calls.setdefault(names[self], copy)
        return original(self, *args)

    monkeypatch.setattr(ops.Kernel, "__call__", record)
    for compiling in (False, True):
        # as while tracing: every kernel through its op (no eager scratch-buffer paths)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
        for config in (PDEConfig(), PDEConfig(solver="crank_nicolson")):
            torch.manual_seed(7)
            block = PDEBlock(3, (1.0, 2.0, 1.0), config).train()
            block.record_consistency = True
            with torch.no_grad():
                block.gamma.fill_(0.5)
            x = torch.randn(2, 3, 5, 6, 7, requires_grad=True)
            y = block(x)
            (y.square().sum() + block.last_residuals["energy"]).backward()
            block.record_consistency = False  # the gate without the regulariser
            block(x).square().sum().backward()
            block.record_consistency = True  # evolve: the regulariser on its own
            block.evolve(x).sum().add(block.last_residuals["energy"]).backward()
    monkeypatch.undo()
    # the Triton backend's own ops: test_kernels_triton_tail.py::test_opcheck_every_triton_op
    expected = {n for n in ops.Kernel.registry if not n.startswith("triton_")}
    missing = expected - set(calls)
    assert not missing, f"ops a block never called here: {sorted(missing)}"
    for name, args in calls.items():
        torch.library.opcheck(getattr(torch.ops.nnunet_pde, name).default, args)
