"""The baseline networks built from the trainer classes on the shared plans fixtures:
sizing from the plans, outputs in nnU-Net's deep-supervision order and scales, nnU-Net's
loss on those outputs, gradients, state_dict independence, autocast, errors."""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for plan_fixtures

from plan_fixtures import PLANS_CASES, load_plans, managers  # noqa: E402

from nnunet_pde.baselines import (  # noqa: E402
    ESUNet,
    SwinUNet3D,
    UnsupportedConfigurationError,
    plans_with_adapted_patch,
)
from nnunet_pde.trainers.nnUNetTrainerBaselines import (  # noqa: E402
    nnUNetTrainerESUNet,
    nnUNetTrainerSwinUNet3D,
    nnUNetTrainerSwinUNETR,
    nnUNetTrainerVNet,
)

#: trainers whose network has deep-supervision outputs
DS_TRAINERS = [nnUNetTrainerSwinUNet3D, nnUNetTrainerESUNet]
#: trainers whose network has a single full-resolution output
SINGLE_TRAINERS = [nnUNetTrainerVNet, nnUNetTrainerSwinUNETR]
ALL_TRAINERS = DS_TRAINERS + SINGLE_TRAINERS


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


def anisotropic_plans() -> tuple[dict, dict]:
    """The tiny labels plans turned anisotropic as nnU-Net plans thick-slice data: 3 mm
    slices, 0.8 mm in-plane; no down-sampling and 1x3x3 kernels along z in the first stage."""
    plans, ds = load_plans("tiny_plain")
    cfg = plans["configurations"]["3d_fullres"]
    cfg["spacing"] = [3.0, 0.8, 0.8]
    cfg["patch_size"] = [24, 64, 64]
    arch = cfg["architecture"]["arch_kwargs"]
    arch["strides"] = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    arch["kernel_sizes"] = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    return plans, ds


def tiny_regions_plans() -> tuple[dict, dict]:
    """The tiny plans with the BraTS regions dataset.json (4 channels, 3 sigmoid regions):
    regions at a cost small enough for forward/backward tests."""
    plans, _ = load_plans("tiny_plain")
    _, ds = load_plans("brats_plain")
    return plans, ds


def plans_for(case: str) -> tuple[dict, dict]:
    if case == "anisotropic":
        return anisotropic_plans()
    if case == "tiny_regions":
        return tiny_regions_plans()
    return load_plans(case)


CASES = sorted(PLANS_CASES) + ["anisotropic"]


def built(trainer, case: str, ds_on: bool = True, in_channels: int | None = None):
    """(network, plans, n_in, n_out) built on the class, as nnUNetv2_predict does, from the
    plans as the trainer holds them (patch adapted). Builds are cached (initialising tens of
    millions of parameters is most of the cost) and handed out as deep copies."""
    net, plans, n_in, n_out = _built(trainer, case, ds_on, in_channels)
    return copy.deepcopy(net), copy.deepcopy(plans), n_in, n_out


@functools.cache
def _built(trainer, case: str, ds_on: bool, in_channels: int | None):
    torch.manual_seed(0)
    plans, ds = plans_for(case)
    plans = plans_with_adapted_patch(plans, "3d_fullres", getattr(trainer, "patch_divisor", None))
    pm, cm, n_in, n_out = managers(plans, ds)
    n_in = in_channels or n_in
    net = trainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=ds_on)
    return net, plans, n_in, n_out


def small_input(case: str, n_in: int, divisor: int = 1) -> torch.Tensor:
    """A small input the network accepts in training mode (instance norm needs more than
    one voxel at the bottleneck, V-Net's batch norm too): 16^3 for the 4-stage plans
    (bottleneck 2^3), 8x16x16 for the anisotropic plans, 64x32x32 for the 6-stage BraTS
    plans (bottleneck 2x1x1); 32^3 for V-Net (divisor 16) and 64x32x32 for SwinUNETR
    (divisor 32)."""
    if divisor >= 32 or "brats" in case:
        shape: tuple[int, ...] = (64, 32, 32)
    elif divisor == 16:
        shape = (32, 32, 32)
    else:
        shape = (8, 16, 16) if case == "anisotropic" else (16, 16, 16)
    return torch.randn(1, n_in, *shape, generator=torch.Generator().manual_seed(0))


def ds_shapes(plans: dict, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Spatial shapes of nnU-Net's deep-supervision targets for an input of ``spatial``
    (as nnUNetTrainer._get_deep_supervision_scales computes the scales)."""
    strides = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"]
    scales = list(1 / np.cumprod(np.vstack(strides), axis=0))[:-1]
    return [
        tuple(int(round(s * f)) for s, f in zip(spatial, scale, strict=True)) for scale in scales
    ]


# ------------------------------------------------------------------------ building


#: (trainer, plans case) pairs to build: every case for the plans-sized networks; V-Net and
#: SwinUNETR have a fixed topology, so the input/output channels (tiny: 1 channel, labels;
#: BraTS: 4 channels, regions) and the anisotropic patch are what varies.
BUILD_CASES = [(t, c) for t in DS_TRAINERS for c in CASES] + [
    (t, c) for t in SINGLE_TRAINERS for c in ("tiny_plain", "brats_plain", "anisotropic")
]


@pytest.mark.parametrize(
    "trainer,case", BUILD_CASES, ids=[f"{t.__name__}-{c}" for t, c in BUILD_CASES]
)
def test_builds_on_the_class_from_every_plans_fixture(trainer, case):
    net, plans, n_in, n_out = built(trainer, case)
    assert sum(p.numel() for p in net.parameters()) > 0
    if trainer in DS_TRAINERS:
        arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        assert len(net.decoder.seg_layers) == arch["n_stages"] - 1
        assert net.decoder.seg_layers[0].out_channels == n_out


def test_sized_from_the_plans():
    """Features and stages follow the plans: the BraTS plans (6 stages, up to 320
    features) give bigger networks than the tiny ones (4 stages, up to 256)."""
    for trainer, cls in [(nnUNetTrainerESUNet, ESUNet), (nnUNetTrainerSwinUNet3D, SwinUNet3D)]:
        tiny, *_ = built(trainer, "tiny_plain")
        brats, *_ = built(trainer, "brats_plain")
        assert isinstance(tiny, cls) and isinstance(brats, cls)
        assert len(brats.decoder.seg_layers) == 5 and len(tiny.decoder.seg_layers) == 3
    es, *_ = built(nnUNetTrainerESUNet, "brats_plain")
    assert [s[-1].convs[-1].conv.out_channels for s in es.encoder.stages] == [
        32,
        64,
        128,
        256,
        320,
        320,
    ]
    swin, *_ = built(nnUNetTrainerSwinUNet3D, "anisotropic")
    # the first down-sampling keeps z (planned stride 1x2x2); windows capped by the plan
    assert tuple(swin.down[0].reduction.stride) == (1, 2, 2)
    assert swin.windows[1] == (4, 4, 4) and swin.windows[3] == (4, 4, 4)


def test_parameter_counts_have_the_papers_order_of_magnitude():
    """V-Net: about 45 M (MONAI's VNet, the widely reported figure); SwinUNETR with feature
    size 48: 62 M (61.98 M in Hatamizadeh et al. 2022)."""
    vnet, *_ = built(nnUNetTrainerVNet, "brats_plain")
    swin_unetr, *_ = built(nnUNetTrainerSwinUNETR, "brats_plain")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 40e6 < count(vnet) < 50e6
    assert 60e6 < count(swin_unetr) < 64e6


@pytest.mark.parametrize("trainer", ALL_TRAINERS, ids=lambda t: t.__name__)
def test_2d_configuration_is_rejected_with_a_clear_error(trainer):
    plans, ds = load_plans("tiny_plain")
    pm, cm, n_in, n_out = managers(plans, ds, configuration="2d")
    with pytest.raises(UnsupportedConfigurationError, match="3-D"):
        trainer.build_network_architecture(pm, cm, n_in, n_out, True)


def test_vnet_rejects_channel_counts_that_do_not_divide_16():
    with pytest.raises(UnsupportedConfigurationError, match="divide 16"):
        built(nnUNetTrainerVNet, "tiny_plain", in_channels=3)


def test_vnet_rejects_patches_not_divisible_by_16():
    plans, ds = load_plans("tiny_plain")
    plans["configurations"]["3d_fullres"]["patch_size"] = [40, 48, 48]
    pm, cm, n_in, n_out = managers(plans, ds)
    with pytest.raises(UnsupportedConfigurationError, match="divisible by 16"):
        nnUNetTrainerVNet.build_network_architecture(pm, cm, n_in, n_out, False)


# ------------------------------------------------------------------- outputs, loss


@pytest.mark.parametrize("case", ["tiny_plain", "brats_plain", "anisotropic"])
@pytest.mark.parametrize("trainer", DS_TRAINERS, ids=lambda t: t.__name__)
def test_deep_supervision_outputs_match_nnunet_targets(trainer, case):
    net, plans, n_in, n_out = built(trainer, case, ds_on=True)
    x = small_input(case, n_in)
    with torch.no_grad():
        outs = net(x)
        assert isinstance(outs, list)
        assert [tuple(o.shape[2:]) for o in outs] == ds_shapes(plans, tuple(x.shape[2:]))
        assert all(o.shape[:2] == (1, n_out) for o in outs)
        net.decoder.deep_supervision = False  # what set_deep_supervision_enabled does
        single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, n_out, *x.shape[2:])


def _trainer(cls, case, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    plans, ds = plans_for(case)
    plans["continue_training"] = False
    return cls(plans, "3d_fullres", 0, ds, torch.device("cpu"))


@pytest.mark.parametrize(
    "trainer,case",
    [
        (nnUNetTrainerESUNet, "tiny_plain"),
        (nnUNetTrainerESUNet, "tiny_regions"),
        (nnUNetTrainerSwinUNet3D, "tiny_regions"),
        (nnUNetTrainerVNet, "tiny_regions"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_nnunet_loss_accepts_the_outputs(trainer, case, tmp_path, monkeypatch):
    """The loss nnU-Net builds for the trainer (deep-supervision wrapper or not) takes the
    network's outputs and targets at nnU-Net's scales, and the loss reaches every
    parameter (DDP runs without find_unused_parameters)."""
    tr = _trainer(trainer, case, tmp_path, monkeypatch)
    pm, cm = tr.plans_manager, tr.configuration_manager
    _, _, n_in, n_out = managers(tr.plans_manager.plans, tr.dataset_json)
    net = trainer.build_network_architecture(pm, cm, n_in, n_out, tr.enable_deep_supervision)
    loss = tr._build_loss()
    x = small_input(case, n_in, divisor=getattr(trainer, "patch_divisor", None) or 1)
    out = net(x)
    g = torch.Generator().manual_seed(1)
    regions = tr.label_manager.has_regions
    assert regions == (case == "tiny_regions")

    def target_at(shape: tuple[int, ...]) -> torch.Tensor:
        if regions:  # one binary map per region (no background)
            return torch.randint(0, 2, (1, n_out, *shape), generator=g).float()
        return torch.randint(0, n_out, (1, 1, *shape), generator=g).float()

    if tr.enable_deep_supervision:
        shapes = ds_shapes(tr.plans_manager.plans, tuple(x.shape[2:]))
        target = [target_at(s) for s in shapes]
        # nnU-Net gives the lowest scale weight 0 (1e-6 under DDP): weight them all here
        value = loss.loss(out[-1], target[-1]) + loss(out, target)
    else:
        assert isinstance(out, torch.Tensor)
        value = loss(out, target_at(tuple(x.shape[2:])))
    assert torch.isfinite(value)
    value.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_swin_unetr_output_gradients_and_bfloat16_autocast():
    """The MONAI extra, on the BraTS regions plans (64x32x32 input), under CPU autocast:
    one full-resolution output, finite, and a gradient for every parameter."""
    net, plans, n_in, n_out = built(nnUNetTrainerSwinUNETR, "brats_plain")
    x = small_input("brats_plain", n_in, divisor=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, n_out, *x.shape[2:])
    assert torch.isfinite(out.float()).all()
    out.float().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("trainer", ALL_TRAINERS, ids=lambda t: t.__name__)
def test_state_dict_does_not_depend_on_deep_supervision(trainer):
    on, *_ = built(trainer, "tiny_plain", ds_on=True)
    off, *_ = built(trainer, "tiny_plain", ds_on=False)
    sd_on, sd_off = on.state_dict(), off.state_dict()
    assert {k: v.shape for k, v in sd_on.items()} == {k: v.shape for k, v in sd_off.items()}
    off.load_state_dict(sd_on, strict=True)  # what nnUNetv2_predict does


@pytest.mark.parametrize("trainer", [*DS_TRAINERS, nnUNetTrainerVNet], ids=lambda t: t.__name__)
def test_bfloat16_autocast_on_cpu_gives_finite_outputs(trainer):
    net, plans, n_in, n_out = built(trainer, "tiny_plain", ds_on=True)
    x = small_input("tiny_plain", n_in, divisor=getattr(trainer, "patch_divisor", None) or 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    if trainer in SINGLE_TRAINERS:
        assert isinstance(out, torch.Tensor) and out.shape == (1, n_out, *x.shape[2:])
    for o in out if isinstance(out, list) else [out]:
        assert torch.isfinite(o.float()).all()


def test_resenc_plans_give_the_same_baseline_as_the_default_plans():
    """The baselines use the plans' stages, features, strides and kernel sizes, not the
    planned architecture class: the BraTS ResEnc M plans give the same network."""
    for trainer in DS_TRAINERS:
        a, *_ = built(trainer, "brats_resencm")
        b, *_ = built(trainer, "brats_plain")
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        assert shapes(a) == shapes(b)


def test_vnet_has_no_active_dropout_as_in_the_paper():
    """MONAI fixes two skip dropouts at 0.5 whatever its arguments say; the build sets every
    dropout layer to the trainer's ``vnet_dropout`` (0.0, the paper has none)."""
    net, *_ = built(nnUNetTrainerVNet, "tiny_plain")
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert dropouts and all(m.p == nnUNetTrainerVNet.vnet_dropout == 0.0 for m in dropouts)
