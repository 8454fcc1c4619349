"""torch.compile: the integrator traces as one graph and gives the eager result."""

from __future__ import annotations

import pytest
import torch

from nnunet_pde.pde import PDEBlock, PDEConfig


def _pair(**cfg) -> tuple[PDEBlock, torch.Tensor]:
    torch.manual_seed(0)
    block = PDEBlock(2, (1.5, 0.77, 0.77), PDEConfig(**cfg))
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
        block.gamma.fill_(0.7)
    return block, torch.randn(2, 2, 6, 7, 5)


def _run(module, block: PDEBlock, x: torch.Tensor):
    block.zero_grad()
    block.record_consistency = True
    out = module(x)
    res = block.last_residuals
    (out.square().mean() + res["energy"]).backward()
    return (
        out.detach(),
        {k: v.detach() for k, v in res.items()},
        [p.grad.clone() for p in block.parameters()],
    )


def _assert_same(a, b) -> None:
    assert torch.allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    for k in a[1]:
        assert torch.allclose(a[1][k], b[1][k], rtol=1e-5, atol=1e-7), k
    for ga, gb in zip(a[2], b[2], strict=True):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [
        {"operator": "diffusion", "solver": "semi_implicit"},
        {"operator": "diffusion", "solver": "gauss_seidel", "inner_iterations": 2},
        {"operator": "moment", "solver": "crank_nicolson", "steps": 1, "checkpointing": True},
    ],
)
def test_fullgraph_capture_matches_eager(cfg: dict) -> None:
    """``fullgraph=True`` fails on any graph break (``.item()``, data-dependent branching);
    the aot_eager backend runs the captured forward and backward graphs without C++."""
    block, x = _pair(**cfg)
    block.train()
    eager = _run(block, block, x)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    _assert_same(eager, _run(compiled, block, x))
    block.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x), block(x), rtol=1e-5, atol=1e-6)
    assert block.last_residuals is None


@pytest.mark.slow
def test_inductor_matches_eager() -> None:
    """The default backend (what nnU-Net uses), forward and backward: ~1.5 min of C++
    compilation on a 2-core CPU. (The moment operator is covered by the fullgraph test; under
    Inductor it compiles for over 2 minutes.)"""
    block, x = _pair(operator="diffusion", solver="semi_implicit")
    block.train()
    eager = _run(block, block, x)
    torch._dynamo.reset()
    _assert_same(eager, _run(torch.compile(block), block, x))


@pytest.mark.parametrize(
    "cfg",
    [
        {"operator": "diffusion", "solver": "semi_implicit"},
        {"operator": "moment", "solver": "crank_nicolson", "steps": 1},
    ],
)
def test_fullgraph_capture_records_the_contribution(cfg: dict) -> None:
    """The diagnostics record (a detached ``||y - x|| / ||x||``) traces without a graph break
    and equals eager; the flag changes neither output nor gradients under compile."""
    block, x = _pair(**cfg)
    block.train()
    block.record_diagnostics = True
    eager = _run(block, block, x)
    eager_c = block.last_contribution.clone()
    block.last_contribution = None
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    got = _run(compiled, block, x)
    _assert_same(eager, got)
    assert block.last_contribution is not None and not block.last_contribution.requires_grad
    assert torch.allclose(block.last_contribution, eager_c, rtol=1e-5)
    expected = (got[0] - x).norm() / x.norm()
    assert torch.allclose(block.last_contribution, expected, rtol=1e-5)
    block.record_diagnostics = False
    block.last_contribution = None
    _assert_same(got, _run(compiled, block, x))
    assert block.last_contribution is None
