"""Time-step parametrisation and configuration errors (the stability properties themselves
are tested in test_pde_solvers.py)."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_pde.pde import PDEBlock, PDEConfig

SPACING = (2.0, 1.0, 1.0)


def _block(**cfg) -> PDEBlock:
    torch.manual_seed(0)
    return PDEBlock(1, SPACING, PDEConfig(response=False, **cfg)).double()


def _set_alpha(block: PDEBlock, alpha: float) -> None:
    with torch.no_grad():
        block.conductance.alpha_raw.fill_(alpha + math.log(-math.expm1(-alpha)))


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
        ({"solver": "semi_implicit", "inner_iterations": 2}, "exactly"),
        ({"solver": "jacobi", "jacobi_omega": 1.5}, "jacobi_omega"),
        ({"solver": "gauss_seidel", "jacobi_omega": 0.5}, "damped"),
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
