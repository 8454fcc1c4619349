"""PDEBlock: identity at init, stability, spacing, solver accuracy, gradients, precision."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from pde_reference import cell_centres, diffusion_matrix
from torch.func import functional_call

from nnunet_pde.pde import OPERATORS, SOLVERS, PDEBlock, PDEConfig

SPACING = (1.5, 0.77, 0.77)  # CT-like anisotropic spacing, mm, (D, H, W)
ALL_COMBOS = list(itertools.product(OPERATORS, SOLVERS))


def make_block(channels: int = 2, spacing=SPACING, **cfg) -> PDEBlock:
    torch.manual_seed(0)
    return PDEBlock(channels, spacing, PDEConfig(**cfg))


def randomize(block: PDEBlock, seed: int = 0) -> PDEBlock:
    """Move every parameter away from its initial value (gamma into (0.5, 1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name == "tau_logit":
                continue
            if name == "gamma":
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            else:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return block


def set_tau(block: PDEBlock, tau: float) -> None:
    c = block.config
    with torch.no_grad():
        block.tau_logit.fill_(math.log(tau / (c.tau_max - tau)))


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("operator,solver", ALL_COMBOS)
def test_fresh_block_is_exact_identity(operator: str, solver: str) -> None:
    block = make_block(operator=operator, solver=solver)
    x = torch.randn(2, 2, 6, 7, 5) * 3
    assert torch.equal(block(x), x)
    block.eval()
    assert torch.equal(block(x), x)
    x16 = x.to(torch.float16)
    out16 = block(x16)
    assert out16.dtype == torch.float16 and torch.equal(out16, x16)


# --------------------------------------------------------------------------- maximum principle


@pytest.mark.parametrize("solver", ["semi_implicit", "gauss_seidel"])
@pytest.mark.parametrize("operator", ["diffusion", "laplacian"])
@pytest.mark.parametrize("tau", [0.1, 10.0, 1e3])
@pytest.mark.parametrize("sweeps", [1, 3])
def test_maximum_principle_for_any_tau(operator: str, solver: str, tau: float, sweeps: int) -> None:
    block = make_block(
        operator=operator,
        solver=solver,
        tau_max=2e3,
        response=False,
        steps=2,
        inner_iterations=sweeps,
    )
    randomize(block, seed=1)
    set_tau(block, tau)
    torch.manual_seed(2)
    x = torch.randn(2, 2, 9, 8, 10)
    x[0, 0, 4, 4, 4] = 50.0  # isolated spike: the classic trigger of over/undershoots
    x[1, 1, 2, 3, 4] = -50.0
    out = block.evolve(x)
    dims = (2, 3, 4)
    lo, hi = x.amin(dim=dims), x.amax(dim=dims)
    tol = 1e-5 * x.abs().amax()
    assert (out.amin(dim=dims) >= lo - tol).all()
    assert (out.amax(dim=dims) <= hi + tol).all()
    # The step does something: a max-principle test on an identity map would be vacuous.
    assert (out - x).abs().max() > 1e-3


# --------------------------------------------------------------------------- spacing


def test_anisotropic_spacing_changes_the_operator() -> None:
    x = torch.randn(1, 2, 8, 8, 8)
    iso = randomize(make_block(spacing=(1.0, 1.0, 1.0)))
    aniso = randomize(make_block(spacing=SPACING))
    scaled = randomize(make_block(spacing=tuple(2 * h for h in SPACING)))
    assert not torch.allclose(iso.evolve(x), aniso.evolve(x), atol=1e-4)
    # Only ratios of spacings matter (normalised to min 1): doubling all is the same block.
    assert torch.allclose(aniso.evolve(x), scaled.evolve(x))
    assert aniso.spacing == pytest.approx((1.5 / 0.77, 1.0, 1.0))


def _neumann_rate(block: PDEBlock, n: tuple[int, int, int], axis: int, mode: int) -> float:
    """``D[u] / u`` of the block for a cosine mode along ``axis`` (a discrete eigenfunction)."""
    h = block.spacing[axis]
    length = n[axis] * h
    z = cell_centres(n[axis], h)
    profile = np.cos(np.pi * mode * z / length)
    shape = [1, 1, 1]
    shape[axis] = n[axis]
    u = torch.tensor(np.broadcast_to(profile.reshape(shape), n).copy(), dtype=torch.float64)
    u = u.expand(1, 2, *n).contiguous()
    with torch.no_grad():
        d = block.flux_divergence(u)
    ratio = (d / u)[u.abs() > 0.1]
    assert torch.allclose(ratio, ratio[0], rtol=1e-9, atol=1e-9), "not an eigenfunction"
    return float(ratio[0])


@pytest.mark.parametrize("axis", [0, 2])
def test_refinement_along_one_axis_follows_the_continuous_operator(axis: int) -> None:
    """Halving h along one axis approximates the same physical ``alpha * d2u/dz2``.

    The cosine mode ``cos(pi m z / L)`` is an exact eigenfunction of the zero-flux discrete
    operator with eigenvalue ``-alpha * 4/h^2 * sin^2(pi m h / (2L))`` and of the continuous
    one with ``-alpha (pi m / L)^2``; the discrete rate must match the former exactly and
    converge to the latter at second order.
    """
    mode = 2
    n_coarse = [6, 6, 6]
    n_coarse[axis] = 8
    n_fine = list(n_coarse)
    n_fine[axis] = 16
    spacing_coarse = [1.0, 1.0, 1.0]
    spacing_coarse[axis] = 2.0  # physical: this axis twice as coarse as the others
    spacing_fine = [1.0, 1.0, 1.0]  # same physical length, h halved along `axis`

    rates, errors = [], []
    for spacing, n in ((spacing_coarse, n_coarse), (spacing_fine, n_fine)):
        block = make_block(spacing=spacing, operator="laplacian", response=False).double()
        alpha = float(block.conductance.alpha()[0].detach())
        h = block.spacing[axis]
        length = n[axis] * h
        rate = _neumann_rate(block, tuple(n), axis, mode)
        discrete = -alpha * 4.0 / h**2 * math.sin(math.pi * mode * h / (2 * length)) ** 2
        continuous = -alpha * (math.pi * mode / length) ** 2
        assert rate == pytest.approx(discrete, rel=1e-10)
        rates.append(rate)
        errors.append(abs(rate - continuous))
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.05)  # second order in h
    # Ignoring the spacing (iso block on the coarse grid) would be off by 1/h^2 = 4x.
    iso = make_block(spacing=(1.0, 1.0, 1.0), operator="laplacian", response=False).double()
    assert _neumann_rate(iso, tuple(n_coarse), axis, mode) == pytest.approx(4 * rates[0], rel=1e-9)


# --------------------------------------------------------------------------- solver accuracy


@pytest.mark.parametrize("solver", ["semi_implicit", "gauss_seidel"])
@pytest.mark.parametrize("operator", ["diffusion", "laplacian"])
def test_sweeps_converge_monotonically_to_sparse_direct_solve(operator: str, solver: str) -> None:
    spacing = (2.0, 1.0, 1.0)
    n = (5, 6, 7)
    torch.manual_seed(3)
    u0 = torch.randn(1, 1, *n, dtype=torch.float64)
    tau = 1.5

    base = make_block(1, spacing, operator=operator, solver=solver, steps=1, response=False)
    base = randomize(base.double(), seed=4)
    set_tau(base, tau)
    alpha = float(base.conductance.alpha()[0].detach())
    kappa = float(base.conductance.kappa()[0].detach()) if operator == "diffusion" else None
    a = diffusion_matrix(u0[0, 0].numpy(), alpha, kappa, base.spacing)
    system = sp.identity(a.shape[0], format="csr") - tau * a
    b = u0[0, 0].numpy().ravel()
    exact = spla.spsolve(system.tocsc(), b)

    errors = []
    for sweeps in range(1, 26):
        block = make_block(
            1,
            spacing,
            operator=operator,
            solver=solver,
            steps=1,
            response=False,
            inner_iterations=sweeps,
        ).double()
        block.load_state_dict(base.state_dict())
        block.train()
        with torch.no_grad():
            v = block.evolve(u0)[0, 0].numpy().ravel()
        errors.append(np.abs(v - exact).max())
        # The recorded residual is the residual of exactly this linear system.
        r = system @ v - b
        recorded = float(block.last_residuals["implicit_residual"].detach())
        assert recorded == pytest.approx(float(np.mean(r**2)), rel=1e-8, abs=1e-300)
    errors = np.array(errors)
    assert np.all(np.diff(errors) <= 1e-14), errors
    assert errors[-1] < 1e-3 * errors[0]


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("operator,solver", ALL_COMBOS)
def test_gradcheck_float64(operator: str, solver: str) -> None:
    block = make_block(
        2,
        SPACING,
        operator=operator,
        solver=solver,
        steps=2,
        inner_iterations=1 if solver == "explicit" else 2,
        response_hidden=3,
    ).double()
    randomize(block, seed=5)
    names = [n for n, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in block.parameters())
    torch.manual_seed(6)
    x = torch.randn(1, 2, 4, 3, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        return functional_call(block, dict(zip(names, ps, strict=True)), (x,))

    # fast_mode checks random projections u^T J v against finite differences, which covers
    # every input and parameter at the cost of a few forwards instead of one per entry.
    assert torch.autograd.gradcheck(
        fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
    )

    # Full Jacobian w.r.t. the input, tau, gamma and alpha (the rest held fixed).
    def fn_head(x, *head):
        return fn(x, *head, *params[3:])

    assert torch.autograd.gradcheck(fn_head, (x, *params[:3]), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("operator,solver", ALL_COMBOS)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_parameter_receives_a_gradient(
    operator: str, solver: str, checkpointing: bool
) -> None:
    block = make_block(operator=operator, solver=solver, checkpointing=checkpointing)
    x = torch.randn(2, 2, 6, 6, 6)
    # At init (gamma = 0) the gradients exist (DDP needs that) ...
    block(x).square().sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    # ... and away from init every one of them is non-zero: nothing is dead. (A small tau
    # keeps the stability clamp inactive; a clamped tau has zero gradient by design.)
    randomize(block, seed=7)
    set_tau(block, 0.01)
    block.zero_grad()
    out = block(x)
    r = block.last_residuals
    (out.square().sum() + r["implicit_residual"] + r["flux_divergence"]).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_unused_parts_have_no_parameters() -> None:
    names = {n for n, _ in make_block(operator="laplacian", response=False).named_parameters()}
    assert names == {"tau_logit", "gamma", "conductance.alpha_raw"}
    names = {n for n, _ in make_block(operator="diffusion").named_parameters()}
    assert "conductance.kappa_raw" in names and not any(n.startswith("moment") for n in names)
    assert any(n.startswith("response") for n in names)


def test_checkpointing_gives_same_values_and_gradients() -> None:
    x = torch.randn(1, 2, 6, 6, 6)
    grads = []
    for ckpt in (False, True):
        block = randomize(make_block(operator="moment", checkpointing=ckpt), seed=8)
        out = block(x)
        (out.square().sum() + block.last_residuals["implicit_residual"]).backward()
        grads.append((out.detach(), [p.grad.clone() for p in block.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0])
    for g0, g1 in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(g0, g1, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("operator,solver", ALL_COMBOS)
def test_autocast_large_inputs_stay_finite(dtype: torch.dtype, operator: str, solver: str) -> None:
    block = randomize(make_block(operator=operator, solver=solver), seed=9)
    torch.manual_seed(10)
    x = (torch.rand(2, 2, 6, 6, 6) * 2 - 1) * 1e4
    x[0, 0, ::2] = 1e4  # sharp +-1e4 layers: the largest gradients
    x[0, 0, 1::2] = -1e4
    with torch.autocast("cpu", dtype=dtype):
        y = block(x)
        y_low = block(x.to(dtype))
    assert y.dtype == torch.float32 and y_low.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(y_low).all()
    assert all(torch.isfinite(v).all() for v in block.last_residuals.values())
    y_low.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


# --------------------------------------------------------------------------- residual recording


def test_residuals_recorded_in_training_only() -> None:
    block = make_block()
    assert block.last_residuals is None
    x = torch.randn(1, 2, 5, 5, 5)
    block.eval()
    block(x)
    assert block.last_residuals is None
    block.train()
    block(x)
    res = block.last_residuals
    assert set(res) == {"implicit_residual", "flux_divergence"}
    assert all(v.ndim == 0 and v.requires_grad and v >= 0 for v in res.values())
    block.clear_residuals()
    assert block.last_residuals is None
    block(x)
    block.eval()  # switching to eval drops what training left behind
    assert block.last_residuals is None


def test_flux_divergence_record_is_the_operator_at_the_final_state() -> None:
    block = randomize(make_block(operator="diffusion"), seed=11)
    x = torch.randn(1, 2, 5, 6, 5)
    block.train()
    block(x)
    with torch.no_grad():
        d = block.flux_divergence(block.evolve(x))
    assert float(block.last_residuals["flux_divergence"].detach()) == pytest.approx(
        float(d.square().mean()), rel=1e-5
    )


@pytest.mark.parametrize("operator,solver", ALL_COMBOS)
def test_two_dimensional_block(operator: str, solver: str) -> None:
    block = randomize(make_block(spacing=(0.77, 1.2), operator=operator, solver=solver), seed=12)
    x = torch.randn(2, 2, 9, 7)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    with pytest.raises(ValueError, match="expects input of shape"):
        block(torch.randn(2, 2, 4, 4, 4))
