"""PDE3D-UNet built from the real plans fixtures: backbone, block placement, identity at
init, key compatibility with the stock network, deep supervision, errors, spacing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from plan_fixtures import load_plans, managers

from nnunet_pde.network import (
    UnsupportedPlansError,
    build_pde3d_network,
    pde_blocks,
    stage_spacings,
)
from nnunet_pde.pde import PDEBlock, PDEConfig
from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D


def _input_for(plans: dict, n_in: int, seed: int = 0) -> torch.Tensor:
    """A random input the network can process: 32^3 for 4-stage plans, 64^3 for 6-stage
    plans (so that the bottleneck keeps 2^3 voxels for instance norm)."""
    n_stages = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"]
    side = 32 if n_stages <= 4 else 64
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n_in, side, side, side, generator=g)


def test_builds_on_the_class_with_the_planned_backbone(plans_case):
    plans, ds = load_plans(plans_case)
    pm, cm, n_in, n_out = managers(plans, ds)
    net = nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, True)
    expected = PlainConvUNet if "plain" in plans_case else ResidualEncoderUNet
    assert type(net) is expected
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    blocks = pde_blocks(net)
    # default placement: after the stage that feeds the bottleneck
    s = arch["n_stages"] - 2
    expected_name = (
        f"encoder.stages.{s}.pde" if "plain" in plans_case else f"encoder.stages.{s}.blocks.pde"
    )
    assert list(blocks) == [expected_name]
    block = blocks[expected_name]
    assert isinstance(block, PDEBlock)
    assert sum(p.numel() for p in block.parameters()) > 0
    # the block runs last in that stage, so its output is both skip and next input
    stage_modules = list(net.encoder.stages[s].modules())
    assert stage_modules[-len(list(block.modules()))] is block


def test_backbone_keys_identical_and_fresh_block_is_identity(plans_case):
    plans, ds = load_plans(plans_case)
    pm, cm, n_in, n_out = managers(plans, ds)
    torch.manual_seed(0)
    stock = nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, False).eval()
    pde = nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, False).eval()
    stock_sd, pde_sd = stock.state_dict(), pde.state_dict()

    assert set(stock_sd) <= set(pde_sd)
    extra = set(pde_sd) - set(stock_sd)
    assert extra and all(".pde." in k for k in extra)
    assert all(stock_sd[k].shape == pde_sd[k].shape for k in stock_sd)

    missing, unexpected = pde.load_state_dict(stock_sd, strict=False)
    assert set(missing) == extra and not unexpected
    x = _input_for(plans, n_in)
    with torch.no_grad():
        assert torch.equal(pde(x), stock(x))


def test_deep_supervision_on_and_off_share_one_state_dict():
    plans, ds = load_plans("tiny_plain")
    pm, cm, n_in, n_out = managers(plans, ds)
    on = nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, True)
    off = nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, False)
    assert on.state_dict().keys() == off.state_dict().keys()
    off.load_state_dict(on.state_dict())  # strict
    x = torch.randn(2, n_in, 32, 32, 32)
    out_on = on(x)
    assert isinstance(out_on, (list, tuple)) and len(out_on) == 3  # 4 stages -> 3 decoder outputs
    assert out_on[0].shape == (2, n_out, 32, 32, 32)
    assert out_on[1].shape[-1] == 16
    out_off = off(x)
    assert torch.is_tensor(out_off) and out_off.shape == (2, n_out, 32, 32, 32)
    # nnU-Net toggles deep supervision through decoder.deep_supervision
    on.decoder.deep_supervision = False
    assert torch.is_tensor(on(x))


def test_every_parameter_gets_a_gradient_in_training():
    plans, ds = load_plans("tiny_resencm")
    pm, cm, n_in, n_out = managers(plans, ds)
    net = nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, True).train()
    out = net(torch.randn(2, n_in, 32, 32, 32))
    sum(o.float().mean() for o in out).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert not no_grad


def test_2d_configuration_is_rejected_with_a_clear_message():
    plans, ds = load_plans("tiny_plain")
    pm, cm, n_in, n_out = managers(plans, ds, configuration="2d")
    with pytest.raises(UnsupportedPlansError, match="3-D configuration"):
        nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, True)


def test_unsupported_architecture_is_rejected_naming_the_supported_ones():
    plans, ds = load_plans("tiny_plain")
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = (
        "dynamic_network_architectures.architectures.unet.ResidualUNet"
    )
    pm, cm, n_in, n_out = managers(plans, ds)
    with pytest.raises(UnsupportedPlansError, match="PlainConvUNet.*ResidualEncoderUNet"):
        nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, True)


def test_stage_spacings_multiply_cumulative_strides():
    spacing = (3.0, 0.8, 0.8)
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], 2]
    got = stage_spacings(spacing, strides)
    expected = [(3.0, 0.8, 0.8), (3.0, 1.6, 1.6), (6.0, 3.2, 3.2), (12.0, 6.4, 6.4)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e)
    with pytest.raises(UnsupportedPlansError):
        stage_spacings(spacing, [[1, 1]])


def test_stage_indices_out_of_range_for_the_plans_are_rejected():
    plans, ds = load_plans("tiny_plain")  # 4 stages
    pm, cm, n_in, n_out = managers(plans, ds)
    with pytest.raises(UnsupportedPlansError, match="out of range"):
        build_pde3d_network(pm, cm, n_in, n_out, True, config=PDEConfig(stages=(4,)))
    net = build_pde3d_network(pm, cm, n_in, n_out, True, config=PDEConfig(stages=(0, -1)))
    assert sorted(pde_blocks(net)) == ["encoder.stages.0.pde", "encoder.stages.3.pde"]


def test_anisotropic_plans_give_an_anisotropic_block():
    """The same learned parameters evolve features differently when the plans' spacing
    is anisotropic: the block uses the stage's physical spacing."""
    iso_plans, ds = load_plans("tiny_plain")
    aniso_plans, _ = load_plans("tiny_plain")
    aniso_plans["configurations"]["3d_fullres"]["spacing"] = [3.0, 0.8, 0.8]
    nets = []
    for plans in (iso_plans, aniso_plans):
        pm, cm, n_in, n_out = managers(plans, ds)
        torch.manual_seed(0)
        nets.append(nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, False))
    (iso_block,) = pde_blocks(nets[0]).values()
    (aniso_block,) = pde_blocks(nets[1]).values()
    aniso_block.load_state_dict(iso_block.state_dict())
    torch.manual_seed(1)
    channels = iso_plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "features_per_stage"
    ][-2]
    u = torch.randn(1, channels, 6, 6, 6)
    with torch.no_grad():
        a, b = iso_block.evolve(u), aniso_block.evolve(u)
    assert not torch.allclose(a, b)


def test_every_block_gets_its_own_stage_spacing_with_anisotropic_strides():
    """Real anisotropic plans (first strides (1, 2, 2)): a block that got the plans' spacing,
    or the previous stage's, has the wrong physical_spacing."""
    plans, ds = load_plans("lits_aniso")
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["strides"][:3] == [[1, 1, 1], [1, 2, 2], [1, 2, 2]]
    pm, cm, n_in, n_out = managers(plans, ds)
    cfg = PDEConfig(stages=tuple(range(arch["n_stages"])))
    net = build_pde3d_network(pm, cm, n_in, n_out, True, config=cfg)
    blocks = pde_blocks(net)
    h = (4.0, 0.8, 0.8)  # the plans' spacing, written out independently
    expected = {
        0: (h[0], h[1], h[2]),
        1: (h[0], 2 * h[1], 2 * h[2]),
        2: (h[0], 4 * h[1], 4 * h[2]),
        3: (2 * h[0], 8 * h[1], 8 * h[2]),
        4: (4 * h[0], 16 * h[1], 16 * h[2]),
    }
    assert sorted(blocks) == [f"encoder.stages.{s}.pde" for s in expected]
    for s, spacing in expected.items():
        block = blocks[f"encoder.stages.{s}.pde"]
        assert block.physical_spacing == pytest.approx(spacing, rel=1e-6), s
        assert block.spacing == pytest.approx(tuple(v / min(spacing) for v in spacing), rel=1e-6)


def test_custom_placement_and_no_blocks():
    plans, ds = load_plans("brats_plain")
    pm, cm, n_in, n_out = managers(plans, ds)
    cfg = dataclasses.replace(PDEConfig(), stages=(0, 2, -2))
    net = build_pde3d_network(pm, cm, n_in, n_out, True, config=cfg)
    assert sorted(pde_blocks(net)) == [f"encoder.stages.{s}.pde" for s in (0, 2, 4)]
    bare = build_pde3d_network(pm, cm, n_in, n_out, True, config=None)
    assert not pde_blocks(bare)
