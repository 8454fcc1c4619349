"""Stability at the clamped time steps: amplification, CFL/Gershgorin clamps, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pde_reference import block_matrix

from nnunet_pde.pde import PDEBlock, PDEConfig
from nnunet_pde.pde.operators import apply_weights

SPACING = (2.0, 1.0, 1.0)


def _block(**cfg) -> PDEBlock:
    torch.manual_seed(0)
    return PDEBlock(1, SPACING, PDEConfig(response=False, **cfg)).double()


def _set_alpha(block: PDEBlock, alpha: float) -> None:
    with torch.no_grad():
        block.conductance.alpha_raw.fill_(alpha + math.log(-math.expm1(-alpha)))


@pytest.mark.parametrize(
    "solver,sweeps", [("explicit", 1), ("crank_nicolson", 1), ("crank_nicolson", 3)]
)
def test_amplification_at_most_one_at_clamped_tau(solver: str, sweeps: int) -> None:
    """The whole K-step map of the linear heat equation, assembled column by column."""
    block = _block(
        operator="laplacian",
        solver=solver,
        inner_iterations=sweeps,
        steps=2,
        tau_init=50.0,
        tau_max=100.0,
    )
    _set_alpha(block, 3.0)
    s_max = 3.0 * sum(2 / h**2 for h in block.spacing)
    bound = 1 / s_max if solver == "explicit" else 2 / s_max
    assert float(block.time_step()[0].detach()) == pytest.approx(bound, rel=1e-12)  # clamp active

    mat = block_matrix(block.evolve, (1, 4, 5, 4))
    assert mat.min() >= -1e-15  # a non-negative map: no over/undershoots either
    assert np.abs(mat).sum(axis=1).max() <= 1 + 1e-12  # amplification in the max norm
    if solver == "explicit":
        # I + tau A is symmetric here, so the Euclidean norm is bounded as well. (Jacobi-
        # approximated CN is not symmetric; its guarantee is the max-norm one above.)
        assert np.linalg.norm(mat, 2) <= 1 + 1e-12
    # The clamp is needed: at twice the bound the explicit map amplifies a checkerboard.
    if solver == "explicit":
        idx = np.indices((4, 5, 4)).sum(axis=0)
        chk = torch.tensor((-1.0) ** idx).reshape(1, 1, 4, 5, 4)
        tau = 2 * bound
        weights = block.conductance.face_weights(chk)
        unclamped = chk + tau * apply_weights(chk, weights)
        assert unclamped.abs().max() > 1.5


@pytest.mark.parametrize(
    "solver,sweeps", [("explicit", 1), ("crank_nicolson", 1), ("crank_nicolson", 2)]
)
def test_nonlinear_diffusion_is_non_expansive_at_clamped_tau(solver: str, sweeps: int) -> None:
    block = _block(
        operator="diffusion",
        solver=solver,
        inner_iterations=sweeps,
        steps=3,
        tau_init=50.0,
        tau_max=100.0,
    )
    _set_alpha(block, 2.0)
    idx = np.indices((6, 7, 5)).sum(axis=0)
    inputs = [
        torch.tensor((-1.0) ** idx).reshape(1, 1, 6, 7, 5) * 0.1,  # below kappa: diffuses
        torch.randn(1, 1, 6, 7, 5, dtype=torch.float64),
        torch.randn(1, 1, 6, 7, 5, dtype=torch.float64) * 10,
    ]
    for x in inputs:
        out = block.evolve(x)
        assert out.max() <= x.max() + 1e-12 and out.min() >= x.min() - 1e-12
    assert block.evolve(inputs[0]).abs().max() < 0.1 * 0.99  # it did smooth


@pytest.mark.parametrize("solver", ["explicit", "semi_implicit", "gauss_seidel", "crank_nicolson"])
def test_moment_growth_bounded_by_gershgorin(solver: str) -> None:
    """IMEX with the Gershgorin-clamped step: ``|u^{n+1}| <= (1 + tau_eff G) |u^n|`` in max norm
    and ``tau_eff * G <= 1``."""
    block = _block(operator="moment", solver=solver, steps=1, tau_init=20.0, tau_max=40.0)
    torch.manual_seed(1)
    with torch.no_grad():
        block.moment.theta.normal_(0, 2)
        block.moment.free_moments.normal_()
    kernel = block.moment.channel_kernels()
    g = block.moment.gershgorin(kernel)
    tau = block.time_step(kernel)
    assert float((tau * g).detach()) <= 1 + 1e-12
    worst = 0.0
    for seed in range(4):
        x = torch.randn(
            1, 1, 6, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
        )
        worst = max(worst, float((block.evolve(x).abs().max() / x.abs().max()).detach()))
    assert worst <= float((1 + tau * g).detach()) + 1e-12


def test_semi_implicit_diffusion_is_not_clamped() -> None:
    block = _block(operator="diffusion", solver="semi_implicit", tau_init=900.0, tau_max=1000.0)
    assert float(block.time_step()[0].detach()) == pytest.approx(900.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"operator": "wave"}, "operator"),
        ({"solver": "rk4"}, "solver"),
        ({"steps": 0}, "steps"),
        ({"inner_iterations": 0}, "inner_iterations"),
        ({"solver": "explicit", "inner_iterations": 3}, "explicit"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"tau_init": 2.0, "tau_max": 1.0}, "tau_init"),
        ({"tau_max": float("inf")}, "tau_max"),
        ({"alpha_init": 0.0}, "alpha_init"),
        ({"response": False, "response_hidden": 8}, "response_hidden"),
        ({"stages": [-2]}, "stages"),
        ({"stages": (1, 1)}, "duplicate"),
        ({"operator": "moment", "kernel_size": 3, "accuracy": 3}, "accuracy"),
        ({"steps": 1.5}, "steps"),
    ],
)
def test_invalid_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PDEConfig(**kwargs)


def test_resolve_stages() -> None:
    assert PDEConfig().resolve_stages(6) == (4,)
    assert PDEConfig(stages=(0, -1)).resolve_stages(5) == (0, 4)
    with pytest.raises(ValueError, match="out of range"):
        PDEConfig(stages=(7,)).resolve_stages(6)
    with pytest.raises(ValueError, match="same stage"):
        PDEConfig(stages=(1, -5)).resolve_stages(6)


def test_block_rejects_bad_spacing() -> None:
    with pytest.raises(ValueError, match="spacing"):
        PDEBlock(2, (1.0, 0.0, 1.0), PDEConfig())
    with pytest.raises(ValueError, match="spacing"):
        PDEBlock(2, (1.0,), PDEConfig())
