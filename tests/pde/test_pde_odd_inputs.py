"""The PDE block on odd tensors, on every backend that runs here: huge values, integer,
bool and complex inputs, empty batches, double backward."""

from __future__ import annotations

import pytest
import torch

from nnunet_pde.pde import PDEBlock, PDEConfig
from nnunet_pde.pde.kernels import backend

BACKENDS = ["c", "torch"]


@pytest.fixture(params=BACKENDS)
def on_backend(request, monkeypatch):
    monkeypatch.setenv(backend.ENV, request.param)
    if backend.describe("cpu").name != request.param:
        pytest.skip(backend.describe("cpu").reason)
    return request.param


def _open_block(**config) -> PDEBlock:
    torch.manual_seed(0)
    block = PDEBlock(3, (1.0, 2.0, 1.0), PDEConfig(**config)).train()
    with torch.no_grad():
        block.gamma.fill_(0.5)
    return block


@pytest.mark.parametrize("scale", [1e19, 1e30])
def test_huge_inputs_keep_scale_equivariance(on_backend, scale) -> None:
    """The block is equivariant to the features' scale; in float32 the variance of values
    above ~1.8e19 overflows unless the statistics are taken with care."""
    block = _open_block()
    x = torch.randn(2, 3, 5, 6, 7)
    want = block(x)
    got = block(x * scale)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got / scale, want, rtol=1e-4, atol=1e-5)
    fresh = PDEBlock(3, (1.0, 2.0, 1.0), PDEConfig())  # the gate closed: exactly x
    assert torch.equal(fresh(x * scale), x * scale)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_real_float_inputs_are_refused_with_the_fix(dtype) -> None:
    block = _open_block()
    x = torch.ones(1, 3, 4, 4, 4).to(dtype)
    with pytest.raises(ValueError, match=r"floating-point.*x\.float\(\)"):
        block(x)
    with pytest.raises(ValueError, match="floating-point"):
        block.evolve(x)


def test_an_empty_batch_passes_through(on_backend) -> None:
    block = _open_block()
    x = torch.randn(0, 3, 4, 5, 6, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert block.evolve(x.detach()).shape == x.shape


def test_double_backward_is_a_clear_error_and_first_order_stays_right(on_backend) -> None:
    """The hand-written backwards are first order: create_graph=True gives the right
    first-order gradient, and differentiating it again raises instead of returning wrong
    values (or, on the C path, a gradient silently without a graph)."""
    block = _open_block(solver="crank_nicolson")
    x = torch.randn(1, 3, 4, 5, 6, requires_grad=True)
    (plain,) = torch.autograd.grad(block(x).square().sum(), x)
    (g,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    torch.testing.assert_close(g.detach(), plain)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.square().sum().backward()
