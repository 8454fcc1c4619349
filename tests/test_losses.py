"""The regulariser terms against analytic values and an independent numpy/scipy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_pde.losses import (
    RegularizedSegmentationLoss,
    RegularizerConfig,
    diffusion_step_residual,
    probabilities_and_valid_mask,
    total_variation,
)
from nnunet_pde.pde import PDEBlock, PDEConfig


def test_tv_is_zero_on_constant_maps_and_positive_on_a_checkerboard():
    const = torch.full((2, 3, 6, 7, 8), 0.37)
    assert total_variation(const, (1.0, 1.0, 1.0)).item() == pytest.approx(0.0, abs=1e-7)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (6, 7, 8)], indexing="ij")).sum(0)
    checker = (idx % 2).float().expand(2, 3, 6, 7, 8)
    # every forward difference is +-1 on every axis: |grad| = sqrt(3)
    assert total_variation(checker, (1.0, 1.0, 1.0), eps=1e-6).item() == pytest.approx(
        np.sqrt(3), rel=1e-4
    )


def test_tv_of_a_linear_ramp_is_its_slope_in_normalised_spacing():
    z = torch.arange(10, dtype=torch.float32).reshape(1, 1, 10, 1, 1).expand(1, 1, 10, 4, 4)
    # spacing (3, 1, 1): the step along z is 3 finest-voxels long -> slope 1/3 per voxel
    tv = total_variation(0.1 * z, (3.0, 1.0, 1.0), eps=1e-6)
    assert tv.item() == pytest.approx(0.1 / 3.0, rel=1e-4)
    # only ratios of the spacing matter (mm or any other unit)
    assert total_variation(0.1 * z, (6.0, 2.0, 2.0), eps=1e-6).item() == pytest.approx(tv.item())


def test_tv_ignores_voxels_under_the_ignore_label():
    p = torch.zeros(1, 1, 8, 8, 8)
    p[..., 4:] = 1.0  # an edge between x=3 and x=4
    valid = torch.ones(1, 1, 8, 8, 8, dtype=torch.bool)
    assert total_variation(p, (1, 1, 1), valid).item() > 0
    valid[..., 3:5] = False  # the edge lies in ignored voxels
    assert total_variation(p, (1, 1, 1), valid).item() == pytest.approx(0.0, abs=1e-7)


def test_probabilities_and_mask_for_labels_and_regions():
    logits = torch.randn(2, 3, 4, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4, 4))
    target[0, 0, 0] = 5  # ignore label 5
    probs, valid = probabilities_and_valid_mask(logits, target, has_regions=False, ignore_label=5)
    assert probs.shape == (2, 2, 4, 4, 4)
    torch.testing.assert_close(probs, torch.softmax(logits, 1)[:, 1:])
    assert valid.shape == (2, 1, 4, 4, 4) and not valid[0, 0, 0].any() and valid[1].all()
    # regions: sigmoid per region; the last target channel marks ignored voxels
    reg_target = torch.zeros(2, 4, 4, 4, 4)
    reg_target[1, -1, 2] = 1
    probs, valid = probabilities_and_valid_mask(
        logits, reg_target, has_regions=True, ignore_label=9
    )
    torch.testing.assert_close(probs, torch.sigmoid(logits))
    assert not valid[1, 0, 2].any() and valid[0].all()
    assert probabilities_and_valid_mask(logits, target, False, None)[1] is None


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8)])
def test_diffusion_step_residual_matches_a_scipy_laplacian(spacing):
    rng = np.random.default_rng(0)
    p = rng.random((1, 2, 7, 9, 8)).astype(np.float32)
    tau = 0.7
    h = np.asarray(spacing) / min(spacing)
    lap = np.zeros_like(p)
    for d in range(3):
        # 'nearest' = replicate padding = zero-flux boundary
        lap += ndimage.correlate1d(p, [1.0, -2.0, 1.0], axis=2 + d, mode="nearest") / h[d] ** 2
    diag = sum(2.0 / h[d] ** 2 for d in range(3))
    expected = np.mean((tau * lap / (1 + tau * diag)) ** 2)
    got = diffusion_step_residual(torch.from_numpy(p), spacing, tau).item()
    assert got == pytest.approx(expected, rel=1e-4)
    assert diffusion_step_residual(
        torch.full((1, 1, 5, 5, 5), 0.3), spacing
    ).item() == pytest.approx(0)


class _IdentitySegLoss(torch.nn.Module):
    def forward(self, output, target):
        return output[0].float().mean() * 0 + 1.0


def test_wrapper_adds_weighted_terms_with_warmup_and_clears_block_records():
    block = PDEBlock(2, (1.0, 1.0, 1.0), PDEConfig()).train()
    torch.manual_seed(0)
    u = torch.randn(1, 2, 6, 6, 6)
    cfg = RegularizerConfig(lambda_pde=0.5, lambda_tv=0.1, lambda_pred=2.0)
    loss = RegularizedSegmentationLoss(
        _IdentitySegLoss(),
        cfg,
        (1.0, 1.0, 1.0),
        has_regions=False,
        blocks=lambda: [block],
        warmup_epochs=4,
    )
    logits = [torch.randn(1, 3, 6, 6, 6), torch.randn(1, 3, 3, 3, 3)]
    target = [torch.randint(0, 3, (1, 1, 6, 6, 6)), torch.randint(0, 3, (1, 1, 3, 3, 3))]

    block(u)
    rec = {k: v.detach() for k, v in block.last_residuals.items()}
    loss.epoch = 1  # warm-up factor 1/4
    value = loss(logits, target)
    probs = torch.softmax(logits[0], 1)[:, 1:]
    expected_extra = (
        0.5 * sum(rec.values())
        + 0.1 * total_variation(probs, (1, 1, 1))
        + 2.0 * diffusion_step_residual(probs, (1, 1, 1))
    )
    assert value.item() == pytest.approx(1.0 + 0.25 * expected_extra.item(), rel=1e-5)
    assert set(loss.last_terms) == {"seg", "pde", "tv", "pred"}
    assert block.last_residuals is None  # consumed

    loss.epoch = 10  # past the warm-up; no new forward -> no block term
    value = loss(logits, target)
    assert "pde" not in loss.last_terms
    assert value.item() == pytest.approx(
        1.0 + 0.1 * loss.last_terms["tv"] + 2.0 * loss.last_terms["pred"], rel=1e-5
    )


def test_wrapper_switches_block_recording_on_only_when_it_reads_it():
    block = PDEBlock(2, (1.0, 1.0, 1.0), PDEConfig()).train()
    RegularizedSegmentationLoss(
        _IdentitySegLoss(), RegularizerConfig(lambda_tv=0.1), (1, 1, 1), False
    )
    assert not block.record_consistency
    RegularizedSegmentationLoss(
        _IdentitySegLoss(),
        RegularizerConfig(lambda_pde=0.1),
        (1, 1, 1),
        False,
        blocks=lambda: [block],
    )
    assert block.record_consistency


def _tv_reference(p: np.ndarray, valid: np.ndarray, h, eps: float) -> float:
    """Numpy TV over voxels x whose forward neighbours x+e_d (every d) and x are valid."""
    n = p.shape
    total, count = 0.0, 0
    for z in range(n[0] - 1):
        for y in range(n[1] - 1):
            for x in range(n[2] - 1):
                pts = [(z, y, x), (z + 1, y, x), (z, y + 1, x), (z, y, x + 1)]
                if not all(valid[q] for q in pts):
                    continue
                g = [(p[pts[d + 1]] - p[z, y, x]) / h[d] for d in range(3)]
                total += np.sqrt(sum(v * v for v in g) + eps * eps) - eps
                count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("spot", [(2, 3, 4), (0, 0, 0), (4, 4, 3)])
def test_tv_with_a_single_ignored_voxel_matches_a_reference(spot):
    """One ignored voxel removes itself and every voxel whose forward neighbour it is along
    any axis: fails if one neighbour check is dropped (anisotropic spacing on purpose)."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(1, 1, 5, 6, 5, generator=g)
    valid = torch.ones(1, 1, 5, 6, 5, dtype=torch.bool)
    valid[(0, 0, *spot)] = False
    h = (2.0, 1.0, 1.5)
    got = total_variation(p, h, valid, eps=1e-3).item()
    hn = tuple(v / min(h) for v in h)
    ref = _tv_reference(p[0, 0].numpy().astype(np.float64), valid[0, 0].numpy(), hn, 1e-3)
    assert got == pytest.approx(ref, rel=1e-5)
    assert got != pytest.approx(total_variation(p, h, None, eps=1e-3).item(), rel=1e-6)


def test_config_rejects_negative_weights():
    with pytest.raises(ValueError, match="lambda_tv"):
        RegularizerConfig(lambda_tv=-1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        RegularizerConfig(warmup_fraction=1.5)
    with pytest.raises(ValueError, match="blocks"):
        RegularizedSegmentationLoss(
            _IdentitySegLoss(), RegularizerConfig(lambda_pde=1), (1, 1, 1), False
        )
