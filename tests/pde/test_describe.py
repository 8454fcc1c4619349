"""describe_block: what a block has learned, as JSON-serialisable data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nnunet_pde.pde import PDEBlock, PDEConfig, describe_block


def test_describe_diffusion_block() -> None:
    block = PDEBlock(3, (3.0, 1.5, 1.5), PDEConfig(tau_init=0.25, tau_max=1.0))
    with torch.no_grad():
        block.conductance.alpha_raw.copy_(torch.tensor([0.0, 1.0, -1.0]))
    info = describe_block(block)
    json.dumps(info)  # serialisable as is
    assert info["tau"] == pytest.approx(0.25)
    assert info["tau_effective"] == pytest.approx([0.25] * 3)  # semi-implicit: no clamp
    assert info["alpha"] == pytest.approx([math.log1p(math.exp(v)) for v in (0.0, 1.0, -1.0)])
    assert info["kappa"] == pytest.approx([1.0] * 3, rel=1e-6)
    assert info["spacing_normalised"] == [2.0, 1.0, 1.0]
    assert info["gamma"] == [0.0] * 3
    assert info["moment"] is None and info["response_hidden"] == 3
    assert info["config"]["operator"] == "diffusion"


def test_describe_laplacian_has_no_kappa() -> None:
    info = describe_block(PDEBlock(2, (1.0, 1.0, 1.0), PDEConfig(operator="laplacian")))
    assert info["kappa"] is None


def test_describe_moment_block_names_the_derivatives() -> None:
    block = PDEBlock(2, (2.0, 1.0, 1.0), PDEConfig(operator="moment", accuracy=1))
    with torch.no_grad():
        block.moment.theta.zero_()
        block.moment.theta[0, 0] = math.atanh(0.5)  # channel 0: 0.5 d/dz
        block.moment.theta[5, 1] = math.atanh(-0.25)  # channel 1: -0.25 d2/dx2
    info = describe_block(block)
    json.dumps(info)
    mom = info["moment"]
    targets = [k["target"] for k in mom["kernels"]]
    assert targets == [
        "d/dz", "d/dy", "d/dx", "d2/dz2", "d2/dy2", "d2/dx2", "d2/dzdy", "d2/dzdx", "d2/dydx"
    ]  # fmt: skip
    # Free moments at 0: each kernel is the central difference; up to the order the
    # constraint controls (|alpha| + acc = 2) it is exactly its target.
    assert mom["kernels"][0]["effective_terms"] == pytest.approx({"d/dz": 1.0})
    assert mom["channels"][0]["effective_terms"] == pytest.approx({"d/dz": 0.5})
    assert mom["channels"][1]["effective_terms"] == pytest.approx({"d2/dx2": -0.25})
    assert mom["channels"][0]["coefficients"]["d/dz"] == pytest.approx(0.5)
    assert "0.5*d/dz" in mom["channels"][0]["expression"]
    # Learned free moments show up as extra terms of the effective derivative.
    with torch.no_grad():
        block.moment.free_moments.normal_()
    learned = describe_block(block)["moment"]["kernels"][0]
    assert learned["free_moments_max_abs"] > 0
    assert learned["effective_terms"]["d/dz"] == pytest.approx(1.0)
    assert len(learned["effective_terms"]) > 2
