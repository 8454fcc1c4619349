"""The torch backend's tridiagonal solves (pde/kernels/torch_aos.py): parallel cyclic
reduction off the CPU, against a sparse direct solve and the Thomas loop, inside a whole
block, and under torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
from pde_reference import compiled_graph_nodes

from nnunet_pde.pde import PDEBlock, PDEConfig
from nnunet_pde.pde.kernels import backend, torch_aos
from nnunet_pde.pde.tridiagonal import cyclic_reduction, thomas


def _spsolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One line: T = I + graph Laplacian with face weights a, by scipy's direct solver."""
    n = b.shape[0]
    main = np.ones(n)
    main[:-1] += a
    main[1:] += a
    T = scipy.sparse.diags([main, -a, -a], [0, 1, -1], format="csc")
    return scipy.sparse.linalg.spsolve(T, b)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 33, 100])
def test_cyclic_reduction_equals_a_sparse_direct_solve(n) -> None:
    g = torch.Generator().manual_seed(n)
    a = 10.0 ** (4 * torch.rand(max(n - 1, 0), 6, generator=g, dtype=torch.float64) - 2)
    b = torch.randn(n, 6, generator=g, dtype=torch.float64)
    got = cyclic_reduction(a, b)
    for line in range(6):
        want = _spsolve(a[:, line].numpy(), b[:, line].numpy())
        np.testing.assert_allclose(
            got[:, line].numpy(), np.atleast_1d(want), rtol=1e-10, atol=1e-12
        )


def test_cyclic_reduction_in_float32_is_as_accurate_as_thomas() -> None:
    g = torch.Generator().manual_seed(0)
    a = 1e3 * torch.rand(127, 200, generator=g)
    b = torch.randn(128, 200, generator=g)
    exact = thomas(a.double(), b.double())
    err_pcr = (cyclic_reduction(a, b).double() - exact).abs().max().item()
    err_thomas = (thomas(a, b).double() - exact).abs().max().item()
    assert err_pcr < 4 * max(err_thomas, 1e-7), (err_pcr, err_thomas)


def _block_run(block, x):
    xi = x.clone().requires_grad_()
    block.zero_grad()
    y = block(xi)
    (y * y.detach().sin()).sum().add(3.0 * block.last_residuals["energy"]).backward()
    return [y.detach(), xi.grad, *(p.grad for p in block.parameters())]


def test_block_on_torch_with_cyclic_reduction_equals_the_block_on_c(monkeypatch) -> None:
    """The torch backend as a GPU without Triton runs it (cyclic reduction) gives the C
    kernels' output and gradients (crank-nicolson, edge stopping, reaction, open gate)."""
    if backend.describe("cpu").name != "c":
        pytest.skip(backend.describe("cpu").reason)
    torch.manual_seed(6)
    block = PDEBlock(3, (1.0, 2.0, 1.5), PDEConfig(solver="crank_nicolson")).double().train()
    block.record_consistency = True
    with torch.no_grad():
        block.gamma.copy_(torch.tensor([0.5, -0.2, 0.9]))
        block.response.out.weight.normal_(0, 0.3)
    x = torch.randn(2, 3, 6, 5, 7, dtype=torch.float64)
    want = _block_run(block, x)
    monkeypatch.setenv(backend.ENV, "torch")
    monkeypatch.setattr(torch_aos, "SOLVERS", {})  # the CPU too takes cyclic reduction
    got = _block_run(block, x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_compiled_torch_backend_with_cyclic_reduction_grows_with_log_n(monkeypatch) -> None:
    """No per-cell loop is unrolled: grids with the same number of reduction levels
    (n = 5 and 8: three) trace graphs of the same size."""
    monkeypatch.setenv(backend.ENV, "torch")
    monkeypatch.setattr(torch_aos, "SOLVERS", {})
    assert compiled_graph_nodes(5) == compiled_graph_nodes(8)
