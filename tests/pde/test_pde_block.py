"""PDEBlock: identity at init, stability, spacing, solver accuracy, gradients, precision."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pde_reference import cell_centres
from torch.func import functional_call

from nnunet_pde.pde import OPERATORS, SOLVERS, PDEBlock, PDEConfig
from nnunet_pde.pde.block import edge_energy, normalise
from nnunet_pde.pde.config import ITERATIVE_SOLVERS

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


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("operator,solver", ALL_COMBOS)
def test_gradcheck_float64(operator: str, solver: str) -> None:
    block = make_block(
        2,
        SPACING,
        operator=operator,
        solver=solver,
        steps=2,
        inner_iterations=2 if solver in ITERATIVE_SOLVERS else 1,
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
    block.zero_grad()
    block.record_consistency = True
    out = block(x)
    (out.square().sum() + block.last_residuals["energy"]).backward()
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
        block.record_consistency = True
        out = block(x)
        (out.square().sum() + block.last_residuals["energy"]).backward()
        grads.append((out.detach(), [p.grad.clone() for p in block.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0])
    for g0, g1 in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(g0, g1, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("operator,solver", ALL_COMBOS)
def test_autocast_large_inputs_stay_finite(dtype: torch.dtype, operator: str, solver: str) -> None:
    block = randomize(make_block(operator=operator, solver=solver), seed=9)
    block.record_consistency = True
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


def test_consistency_recorded_only_in_training_and_only_when_asked() -> None:
    block = make_block()
    assert block.last_residuals is None and not block.record_consistency
    x = torch.randn(1, 2, 5, 5, 5)
    block.train()
    block(x)
    assert block.last_residuals is None  # nobody reads it: nothing is computed or kept
    block.record_consistency = True
    block.eval()
    block(x)
    assert block.last_residuals is None
    block.train()
    block(x)
    res = block.last_residuals
    assert set(res) == {"energy"}
    assert res["energy"].ndim == 0 and res["energy"].requires_grad and res["energy"] >= 0
    block.clear_residuals()
    assert block.last_residuals is None
    block(x)
    block.eval()  # switching to eval drops what training left behind
    assert block.last_residuals is None


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_training_without_recording_saves_what_eval_saves() -> None:
    """No tensor is kept for a regulariser nobody reads (the _NoReg ablation)."""
    block = randomize(make_block(), seed=3)
    x = torch.randn(2, 2, 6, 6, 6, requires_grad=True)
    block.train()
    train_bytes = _saved_bytes(lambda: block(x))
    block.eval()
    eval_bytes = _saved_bytes(lambda: block(x))
    block.train()
    block.record_consistency = True
    recording = _saved_bytes(lambda: block(x))
    assert train_bytes == eval_bytes < recording


def test_recorded_energy_is_the_edge_energy_of_the_final_state() -> None:
    block = randomize(make_block(operator="diffusion"), seed=11)
    block.record_consistency = True
    x = torch.randn(1, 2, 5, 6, 5)
    block.train()
    block(x)
    recorded = float(block.last_residuals["energy"].detach())
    with torch.no_grad():
        final = block.integrate(normalise(x)[0])
    assert recorded == pytest.approx(float(edge_energy(final, block.spacing)), rel=1e-5)


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


# --------------------------------------------------------------------------- diagnostics

#: The fused whole-block path (default), the reference path with its gate function (moment
#: operator, and an iterative solver).
DIAGNOSTIC_CONFIGS = [
    {},
    {"operator": "moment", "kernel_size": 3},
    {"solver": "gauss_seidel"},
]


def _relative_change(x: torch.Tensor, y: torch.Tensor) -> float:
    x64, y64 = x.detach().double(), y.detach().double()
    return float((y64 - x64).norm() / x64.norm())


@pytest.mark.parametrize("cfg", DIAGNOSTIC_CONFIGS)
def test_recorded_contribution_is_the_relative_change(cfg: dict) -> None:
    block = randomize(make_block(**cfg), seed=5)
    block.record_diagnostics = True
    block.train()
    x = torch.randn(2, 2, 6, 5, 7)
    y = block(x)
    c = block.last_contribution
    assert c is not None and c.ndim == 0 and not c.requires_grad
    assert float(c) == pytest.approx(_relative_change(x, y), rel=1e-5)
    assert float(c) > 0


def test_contribution_of_a_closed_gate_is_zero_and_grows_with_the_gate() -> None:
    block = make_block()
    block.record_diagnostics = True
    block.train()
    x = torch.randn(1, 2, 6, 6, 6)
    block(x)
    assert float(block.last_contribution) == 0.0  # fresh block: gamma = 0, y == x
    seen = []
    for gamma in (0.1, 0.5):
        with torch.no_grad():
            block.gamma.fill_(gamma)
        y = block(x)
        seen.append(float(block.last_contribution))
        assert seen[-1] == pytest.approx(_relative_change(x, y), rel=1e-5)
    # one shared gamma scales y - x linearly
    assert 0 < seen[0] and seen[1] == pytest.approx(5 * seen[0], rel=1e-5)


@pytest.mark.parametrize("cfg", DIAGNOSTIC_CONFIGS)
def test_diagnostics_flag_changes_no_output_gradient_or_saved_tensor(cfg, monkeypatch) -> None:
    """Off (the default) nothing is recorded; on, the output and every gradient are bit for
    bit those of the flag off, autograd keeps nothing more, and the fused block function is
    still the one that runs where it did."""
    fused_calls = []
    original = PDEBlock._fused_forward

    def spy(self, x):
        fused_calls.append(1)
        return original(self, x)

    monkeypatch.setattr(PDEBlock, "_fused_forward", spy)
    block = randomize(make_block(**cfg), seed=7)
    block.train()
    x = torch.randn(2, 2, 5, 6, 5)

    def step():
        block.zero_grad()
        xg = x.clone().requires_grad_(True)
        y = block(xg)
        (y.square().mean()).backward()
        return y.detach(), xg.grad, [p.grad.clone() for p in block.parameters()]

    assert block.record_diagnostics is False
    off = step()
    assert block.last_contribution is None
    calls_off = len(fused_calls)
    block.record_diagnostics = True
    on = step()
    assert block.last_contribution is not None
    assert len(fused_calls) == 2 * calls_off  # same path with the flag on
    assert (calls_off == 1) == (block.fused and block.moment is None)
    assert torch.equal(off[0], on[0]) and torch.equal(off[1], on[1])
    for g_off, g_on in zip(off[2], on[2], strict=True):
        assert torch.equal(g_off, g_on)
    block.record_diagnostics = False
    saved_off = _saved_bytes(lambda: block(x.clone().requires_grad_(True)))
    block.record_diagnostics = True
    assert _saved_bytes(lambda: block(x.clone().requires_grad_(True))) == saved_off


def test_contribution_recorded_only_in_training() -> None:
    block = randomize(make_block(), seed=2)
    block.record_diagnostics = True
    x = torch.randn(1, 2, 5, 5, 5)
    block.eval()
    block(x)
    assert block.last_contribution is None
    block.train()
    block(x)
    assert block.last_contribution is not None
    block.eval()  # switching to eval drops it
    assert block.last_contribution is None
