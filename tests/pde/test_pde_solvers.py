"""The time steppers against independent sparse references, and what each one guarantees.

Every reference here is assembled from the formulas with numpy/scipy (tests/pde/
pde_reference.py), never from nnunet_pde code. Each test names the bug it is there to catch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from pde_reference import (
    axis_matrix,
    block_matrix,
    diffusion_matrix,
    face_weight_arrays,
    sequential_red_black,
)

from nnunet_pde.pde import SOLVERS, PDEBlock, PDEConfig
from nnunet_pde.pde.block import edge_energy
from nnunet_pde.pde.describe import relative_parameter_gradients
from nnunet_pde.pde.tridiagonal import TridiagonalSolve, thomas

SPACING = (2.0, 1.0, 1.0)  # anisotropic on purpose: an axis mix-up changes every result
SHAPE = (5, 6, 7)


def _block(operator="diffusion", solver="semi_implicit", channels=1, spacing=SPACING, **cfg):
    torch.manual_seed(0)
    cfg.setdefault("response", False)
    cfg.setdefault("steps", 1)
    return PDEBlock(channels, spacing, PDEConfig(operator=operator, solver=solver, **cfg)).double()


def _set(block: PDEBlock, tau: float | None = None, alpha: float = 1.3, kappa: float = 0.7):
    c = block.config
    with torch.no_grad():
        if tau is not None:
            block.tau_logit.fill_(math.log(tau / (c.tau_max - tau)))
        block.conductance.alpha_raw.fill_(alpha + math.log(-math.expm1(-alpha)))
        if block.conductance.edge_stopping:
            k = kappa - 1e-3
            block.conductance.kappa_raw.fill_(k + math.log(-math.expm1(-k)))


def _params(block: PDEBlock) -> tuple[float, float | None, float]:
    with torch.no_grad():
        alpha = float(block.conductance.alpha()[0])
        edge = block.conductance.edge_stopping
        kappa = float(block.conductance.kappa()[0]) if edge else None
        return alpha, kappa, float(block.time_step()[0])


def _field(seed: int = 3, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, *shape, dtype=torch.float64, generator=g)


def _run(block: PDEBlock, u: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return block.integrate(u)[0, 0].numpy()


# ------------------------------------------------------------------ exact solves


def test_thomas_matches_a_banded_direct_solve() -> None:
    """Catches a wrong pivot or back-substitution: a 40-cell line with random faces."""
    rng = np.random.default_rng(0)
    n, lines = 40, 3
    a = rng.uniform(0, 50, size=(n - 1, lines))
    b = rng.normal(size=(n, lines))
    x = thomas(torch.tensor(a), torch.tensor(b)).numpy()
    for k in range(lines):
        ab = np.zeros((3, n))
        ab[0, 1:] = -a[:, k]
        ab[1] = 1 + np.r_[0, a[:, k]] + np.r_[a[:, k], 0]
        ab[2, :-1] = -a[:, k]
        ref = scipy.linalg.solve_banded((1, 1), ab, b[:, k])
        assert np.abs(x[:, k] - ref).max() < 1e-12


def test_tridiagonal_adjoint_backward_passes_gradcheck() -> None:
    """The hand-written backward (adjoint solve, face gradient) against finite differences."""
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(6, 2, 3, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    b = torch.randn(7, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(TridiagonalSolve.apply, (a, b), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("operator", ["diffusion", "laplacian"])
@pytest.mark.parametrize("solver,theta", [("semi_implicit", 1.0), ("crank_nicolson", 0.5)])
@pytest.mark.parametrize("tau", [0.3, 40.0])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_aos_step_equals_sparse_direct_solve_of_the_split_system(
    operator: str, solver: str, theta: float, tau: float, fused: bool
) -> None:
    """``u^{n+1} = (1/m) sum_d (I - m theta tau A_d)^{-1} (u + m (1 - theta) tau A_d u)``.

    Fails if the solve is approximate (a sweep instead of an exact solve), if the explicit
    half of Crank-Nicolson is dropped, or if the axes or their spacings are mixed up; for
    the fused step (compiled kernels on the CPU) and the reference implementation alike.
    """
    block = _block(operator, solver, tau_max=100.0)
    block.fused = fused
    _set(block, tau)
    u = _field()
    alpha, kappa, tau_eff = _params(block)
    un = u[0, 0].numpy()
    m = un.ndim
    weights = face_weight_arrays(un, alpha, kappa, block.spacing)
    ref = np.zeros(un.size)
    for d in range(m):
        a_d = axis_matrix(weights[d], un.shape, d)
        lhs = sp.identity(un.size, format="csc") - m * theta * tau_eff * a_d
        rhs = un.ravel() + m * (1 - theta) * tau_eff * (a_d @ un.ravel())
        ref += spla.spsolve(lhs.tocsc(), rhs) / m
    got = _run(block, u).ravel()
    assert np.abs(got - ref).max() < 1e-6 * np.abs(un).max()
    assert np.abs(got - un.ravel()).max() > 1e-2  # the step does something


@pytest.mark.parametrize("operator", ["diffusion", "laplacian"])
def test_explicit_step_equals_sparse_update_formula(operator: str) -> None:
    """``u + tau_eff A(u) u`` with the full operator: fails on a wrong face weight or sign."""
    block = _block(operator, "explicit", tau_max=100.0)
    _set(block, 3.0)
    u = _field(4)
    alpha, kappa, tau_eff = _params(block)
    un = u[0, 0].numpy()
    a = diffusion_matrix(un, alpha, kappa, block.spacing)
    ref = un.ravel() + tau_eff * (a @ un.ravel())
    assert np.abs(_run(block, u).ravel() - ref).max() < 1e-12


def test_red_black_gauss_seidel_equals_sequential_reference() -> None:
    """Fails if the sweep degenerates to Jacobi (black cells not seeing the new red ones)."""
    sweeps = 2
    block = _block("diffusion", "gauss_seidel", inner_iterations=sweeps, tau_max=100.0)
    _set(block, 2.0)
    u = _field(5)
    alpha, kappa, tau = _params(block)
    un = u[0, 0].numpy()
    a = diffusion_matrix(un, alpha, kappa, block.spacing)
    ref = sequential_red_black(a, un.ravel(), un.ravel(), tau, un.shape, sweeps)
    got = _run(block, u).ravel()
    assert np.abs(got - ref).max() < 1e-12
    jacobi = _block("diffusion", "jacobi", inner_iterations=sweeps, tau_max=100.0)
    jacobi.load_state_dict(block.state_dict())
    assert np.abs(_run(jacobi, u).ravel() - ref).max() > 1e-3  # the reference can tell


@pytest.mark.parametrize("omega", [1.0, 2.0 / 3.0])
def test_damped_jacobi_equals_reference_and_one_sweep_is_a_rescaled_explicit_step(
    omega: float,
) -> None:
    """``v <- (1 - omega) v + omega D^{-1} (b + tau N v)``, three sweeps; and the documented
    identity: one undamped sweep from ``u`` is ``u + tau A u / (1 + tau S)``."""
    block = _block("diffusion", "jacobi", inner_iterations=3, jacobi_omega=omega, tau_max=100.0)
    _set(block, 2.0)
    u = _field(6)
    alpha, kappa, tau = _params(block)
    un = u[0, 0].numpy().ravel()
    a = diffusion_matrix(u[0, 0].numpy(), alpha, kappa, block.spacing)
    s = -a.diagonal()
    off = a - sp.diags(a.diagonal())
    v = un.copy()
    for _ in range(3):
        v = (1 - omega) * v + omega * (un + tau * (off @ v)) / (1 + tau * s)
    assert np.abs(_run(block, u).ravel() - v).max() < 1e-12
    one = _block("diffusion", "jacobi", tau_max=100.0)
    one.load_state_dict(block.state_dict())
    rescaled_explicit = un + tau * (a @ un) / (1 + tau * s)
    assert np.abs(_run(one, u).ravel() - rescaled_explicit).max() < 1e-12


@pytest.mark.parametrize("solver", ["jacobi", "gauss_seidel"])
def test_sweeps_converge_monotonically_to_the_unsplit_direct_solve(solver: str) -> None:
    block = _block("diffusion", solver, tau_max=100.0)
    _set(block, 1.5)
    u = _field(7)
    alpha, kappa, tau = _params(block)
    un = u[0, 0].numpy()
    a = diffusion_matrix(un, alpha, kappa, block.spacing)
    exact = spla.spsolve((sp.identity(un.size) - tau * a).tocsc(), un.ravel())
    errors = []
    for sweeps in range(1, 26):
        b = _block("diffusion", solver, inner_iterations=sweeps, tau_max=100.0)
        b.load_state_dict(block.state_dict())
        errors.append(np.abs(_run(b, u).ravel() - exact).max())
    errors = np.array(errors)
    assert np.all(np.diff(errors) <= 1e-14), errors
    assert errors[-1] < 1e-3 * errors[0]


# ------------------------------------------------------------------ what each solver keeps


def _bump() -> torch.Tensor:
    u = _field(8, (9, 8, 10)) * 0.2
    u[0, 0, 4, 4, 4] = 50.0  # isolated spike: the classic trigger of over/undershoots
    u[0, 0, 2, 3, 6] = -50.0
    return u


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("operator", ["diffusion", "laplacian"])
@pytest.mark.parametrize("tau", [0.1, 10.0, 1e3])
def test_maximum_principle_for_any_tau(operator: str, solver: str, tau: float) -> None:
    """No solver creates new extrema at any learned tau (explicit and CN because their step
    is parametrised inside the bound)."""
    block = _block(operator, solver, steps=2, tau_max=2e3)
    _set(block, tau)
    u = _bump()
    out = _run(block, u)
    assert out.min() >= u.min().item() - 1e-9 and out.max() <= u.max().item() + 1e-9
    assert np.abs(out - u[0, 0].numpy()).max() > 1e-3  # not vacuous


@pytest.mark.parametrize("solver", ["semi_implicit", "crank_nicolson"])
@pytest.mark.parametrize("tau", [1.0, 1e3])
def test_exact_solvers_conserve_mass(solver: str, tau: float) -> None:
    """Relative drift below 1e-6 in float32 through the whole block (normalisation and its
    inverse included); the sweep solvers do not conserve (documented)."""
    block = PDEBlock(3, SPACING, PDEConfig(solver=solver, response=False, tau_max=2e3))
    _set(block, tau)
    x = torch.randn(2, 3, 9, 8, 10, generator=torch.Generator().manual_seed(9)) + 2.0
    with torch.no_grad():
        out = block.evolve(x)
    dims = (2, 3, 4)

    def drift(y: torch.Tensor) -> float:
        mass = x.double().sum(dims)
        return float(((y.double().sum(dims) - mass).abs() / x.double().abs().sum(dims)).max())

    assert drift(out) < 1e-6
    assert (out - x).abs().max() > 1e-2
    sweep = PDEBlock(3, SPACING, PDEConfig(solver="gauss_seidel", response=False, tau_max=2e3))
    sweep.load_state_dict(block.state_dict())
    with torch.no_grad():
        gs = sweep.evolve(x)
    assert drift(gs) > 1e-4


@pytest.mark.parametrize("solver", ["semi_implicit", "crank_nicolson", "explicit"])
def test_linear_step_amplification_at_most_one_in_l2_and_max_norm(solver: str) -> None:
    """The whole K-step map of the (spacing-aware) heat equation, assembled column by column,
    at a large learned tau and diffusivity: non-negative, max-norm and L2 norm <= 1."""
    block = _block("laplacian", solver, steps=2, tau_max=2e3)
    _set(block, 500.0, alpha=3.0)
    mat = block_matrix(block.integrate, (1, 4, 5, 4))
    assert mat.min() >= -1e-13
    assert np.abs(mat).sum(axis=1).max() <= 1 + 1e-12
    assert np.linalg.norm(mat, 2) <= 1 + 1e-12


def _checkerboard(shape=(8, 8, 8)) -> torch.Tensor:
    idx = np.indices(shape).sum(axis=0)
    return torch.tensor((-1.0) ** idx, dtype=torch.float64).reshape(1, 1, *shape)


def test_exact_implicit_step_damps_a_checkerboard_that_one_sweep_keeps() -> None:
    """The highest mode after K=2 steps at tau=10: the AOS default removes it, the paper's
    one-sweep scheme keeps most of it (it is a rescaled explicit step)."""
    u = _checkerboard()
    factors = {}
    for solver in ("semi_implicit", "jacobi"):
        block = _block("diffusion", solver, steps=2, spacing=(1.0, 1.0, 1.0), tau_max=100.0)
        _set(block, 10.0, alpha=1.0, kappa=1.0)
        out = _run(block, u)
        factors[solver] = float(np.sqrt((out**2).sum() / (u.numpy() ** 2).sum()))  # L2 ratio
    assert factors["semi_implicit"] < 0.01
    assert factors["jacobi"] > 0.5


def test_aos_is_translation_equivariant_and_red_black_is_not() -> None:
    """Away from the boundary (the exact inverse couples a whole line, decaying
    geometrically, hence a grid of 24 cells around a centred bump)."""
    u = torch.zeros(1, 1, 24, 24, 24, dtype=torch.float64)
    u[0, 0, 10:13, 11:13, 11:13] = torch.arange(12, dtype=torch.float64).reshape(3, 2, 2)
    shifted = torch.roll(u, shifts=(1, 0, 0), dims=(2, 3, 4))
    for solver, equivariant in (("semi_implicit", True), ("gauss_seidel", False)):
        block = _block("diffusion", solver, steps=1, spacing=(1.0, 1.0, 1.0), tau_max=100.0)
        _set(block, 0.05)  # small: the bump's influence stays away from the boundary
        a = _run(block, u)
        b = _run(block, shifted)
        diff = np.abs(np.roll(a, 1, axis=0) - b).max()
        assert (diff < 1e-7) if equivariant else (diff > 1e-3), (solver, diff)


def test_block_is_scale_and_offset_equivariant() -> None:
    torch.manual_seed(0)
    block = PDEBlock(2, SPACING, PDEConfig()).double()
    with torch.no_grad():
        block.gamma.fill_(0.8)
    x = torch.randn(2, 2, 6, 7, 5, dtype=torch.float64)
    scale = torch.tensor([0.3, 40.0], dtype=torch.float64).reshape(1, 2, 1, 1, 1)
    with torch.no_grad():
        y = block(x)
        y_scaled = block(scale * x - 5.0)
    # Exact up to the variance floor NORM_EPS = 1e-5 of the normalisation.
    assert ((y_scaled - (scale * y - 5.0)) / scale).abs().max() < 1e-3


# ------------------------------------------------------------------ moment operator


def test_moment_step_is_bounded_and_does_not_throttle_the_diffusion() -> None:
    block = _block("moment", "semi_implicit", tau_max=200.0)
    _set(block, 100.0)
    with torch.no_grad():
        block.moment.theta.normal_(0, 2, generator=torch.Generator().manual_seed(1))
        block.moment.free_moments.normal_(generator=torch.Generator().manual_seed(2))
    kernel = block.moment.channel_kernels()
    g = block.moment.gershgorin(kernel)
    tau_m = block.moment_time_step(kernel)
    assert float((tau_m * g).detach()) < 1.0
    # The diffusion keeps its own (unbounded) implicit step: no shared clamp.
    assert float(block.time_step()[0].detach()) == pytest.approx(100.0)
    only_diffusion = _block("diffusion", "semi_implicit", tau_max=200.0)
    only_diffusion.load_state_dict(block.state_dict(), strict=False)
    u = _field(10, (6, 6, 6))
    diffused = torch.tensor(_run(only_diffusion, u)).reshape(u.shape)
    worst = float(((_run(block, u) - diffused.numpy()) ** 2).sum() ** 0.5)
    # The moment sub-step changes the diffused state by at most tau_M G times its L2 norm.
    bound = float((tau_m * g).detach()) * float(diffused.square().sum().sqrt())
    assert 0 < worst <= bound + 1e-9


# ------------------------------------------------------------------ parameters at init


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("operator", ["diffusion", "laplacian", "moment"])
def test_every_parameter_is_alive_at_init_once_the_gate_opens(operator: str, solver: str) -> None:
    """No stability bound is active at init and no parameter is multiplied by an exact 0:
    each one's RMS gradient is at least 1e-3 of the largest (fails for a clamped tau, a
    zero-initialised response output layer or all-zero moment coefficients)."""
    torch.manual_seed(0)
    block = PDEBlock(4, (1.5, 0.77, 0.77), PDEConfig(operator=operator, solver=solver))
    with torch.no_grad():
        block.gamma.fill_(0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 9, 7, generator=g)
    target = torch.randn(2, 4, 8, 9, 7, generator=g)
    (block(x) * target).mean().backward()
    rel = relative_parameter_gradients(block)
    assert min(rel.values()) >= 1e-3, rel


@pytest.mark.parametrize("solver", ["explicit", "crank_nicolson"])
def test_bounded_step_is_smooth_and_always_inside_its_bound(solver: str) -> None:
    block = _block("diffusion", solver, tau_max=2e3)
    for tau in (0.5, 50.0, 1500.0):
        _set(block, tau, alpha=2.0)
        rate = float(block.stability_rate()[0].detach())
        tau_eff = block.time_step()[0]
        assert float(tau_eff) < 1.0 / rate
        (grad,) = torch.autograd.grad(tau_eff, block.tau_logit)
        assert float(grad) > 0  # no clamp: tau keeps a gradient at any value


# ------------------------------------------------------------------ regulariser


def test_edge_energy_is_invariant_to_scale_and_offset() -> None:
    z = torch.randn(2, 3, 6, 7, 5, generator=torch.Generator().manual_seed(0))
    e = edge_energy(z, SPACING)
    assert float(edge_energy(4.0 * z + 3.0, SPACING)) == pytest.approx(float(e), rel=1e-4)
    assert float(edge_energy(0.25 * z, SPACING)) == pytest.approx(float(e), rel=1e-4)
    # A two-region field is cheaper than noise of the same variance.
    two = torch.zeros(1, 1, 6, 7, 5)
    two[..., 3:] = 1.0
    assert float(edge_energy(two, SPACING)) < 0.5 * float(edge_energy(z[:1, :1], SPACING))


def _consistency(block: PDEBlock, x: torch.Tensor) -> torch.Tensor:
    block.train()
    block.record_consistency = True
    block(x)
    return block.last_residuals["energy"]


def test_regulariser_is_unchanged_by_scaling_the_features() -> None:
    torch.manual_seed(0)
    block = PDEBlock(3, SPACING, PDEConfig())
    x = torch.randn(2, 3, 6, 7, 5)
    ref = float(_consistency(block, x))
    for s in (0.1, 10.0):
        assert float(_consistency(block, s * x)) == pytest.approx(ref, rel=1e-3)


def test_optimising_the_regulariser_alone_does_not_collapse_the_features() -> None:
    """Features and block parameters optimised on L_reg alone (Adam, 150 steps): the loss
    falls, and every channel's spatial std (features and block output) stays >= 50 %."""
    torch.manual_seed(0)
    block = PDEBlock(4, SPACING, PDEConfig())
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(2, 4, 8, 8, 8).requires_grad_(True)
    opt = torch.optim.Adam([x, *block.parameters()], lr=1e-2)

    def stds() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return x.std(dim=(2, 3, 4)), block(x).std(dim=(2, 3, 4))

    x0, y0 = stds()
    first = float(_consistency(block, x))
    for _ in range(150):
        opt.zero_grad()
        _consistency(block, x).backward()
        opt.step()
    last = float(_consistency(block, x))
    x1, y1 = stds()
    assert last < 0.9 * first
    assert (x1 >= 0.5 * x0).all() and (y1 >= 0.5 * y0).all()
