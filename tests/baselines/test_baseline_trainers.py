"""The baseline trainer classes: nnU-Net's finder resolves them, the patch adaptation
reaches the plans the trainer holds and saves, optimisers, training lengths, docs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for plan_fixtures

from plan_fixtures import REPO, load_plans  # noqa: E402

from nnunet_pde.baselines import adapt_patch_size, plans_with_adapted_patch  # noqa: E402
from nnunet_pde.env import list_trainers  # noqa: E402
from nnunet_pde.trainers import nnUNetTrainerBaselines as baselines  # noqa: E402
from nnunet_pde.training.schedulers import WarmupCosineLRScheduler  # noqa: E402

BASELINES = sorted(
    name
    for name, cls in list_trainers().items()
    if cls.__module__.endswith("nnUNetTrainerBaselines")
)


def test_the_module_defines_the_papers_baselines_and_their_smoke_variants():
    for name in ("VNet", "SwinUNet3D", "ESUNet"):
        assert f"nnUNetTrainer{name}" in BASELINES
        assert f"nnUNetTrainer{name}_2epochs_4iters" in BASELINES


def test_nnunet_finder_resolves_every_baseline_by_name(resolve_with_nnunet_finder):
    """As nnUNetv2_train/-predict do: a fresh interpreter with only nnUNet_extTrainer."""
    assert resolve_with_nnunet_finder(BASELINES) == BASELINES


def test_docs_list_every_baseline_in_the_trainers_table_and_in_baselines_md():
    trainers_md = (REPO / "docs" / "trainers.md").read_text()
    baselines_md = (REPO / "docs" / "baselines.md").read_text()
    section = trainers_md[trainers_md.index("## Baselines") :]
    rows = set(re.findall(r"^\|\s*`(nnUNetTrainer\w+)`\s*\|", section, flags=re.M))
    assert set(BASELINES) <= rows
    for name in ("nnUNetTrainerVNet", "nnUNetTrainerSwinUNet3D", "nnUNetTrainerESUNet"):
        assert name in baselines_md


# --------------------------------------------------------------------- patch size


@pytest.mark.parametrize(
    "patch,divisor,expected",
    [
        ((128, 128, 128), 16, (128, 128, 128)),  # already valid: unchanged
        ((120, 128, 136), 16, (112, 128, 128)),  # ties go down
        ((20, 190, 170), 16, (16, 192, 176)),  # nearest
        ((5, 48, 48), 16, (16, 48, 48)),  # never below one multiple
        ((40, 96, 80), (8, 16, 32), (40, 96, 64)),  # per-axis divisors
    ],
)
def test_adapt_patch_size_rule(patch, divisor, expected):
    assert adapt_patch_size(patch, divisor) == expected


def _make(cls, plans, tmp_path, monkeypatch, ds):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    plans["continue_training"] = False
    return cls(plans, "3d_fullres", 0, ds, torch.device("cpu"))


@pytest.mark.parametrize(
    "name,expected",
    [("nnUNetTrainerVNet", [32, 48, 48]), ("nnUNetTrainerSwinUNETR", [32, 32, 64])],
)
def test_patch_adaptation_is_written_into_the_plans_the_trainer_holds(
    name, expected, tmp_path, monkeypatch
):
    plans, ds = load_plans("tiny_plain")
    plans["configurations"]["3d_fullres"]["patch_size"] = [40, 44, 56]
    tr = _make(getattr(baselines, name), plans, tmp_path, monkeypatch, ds)
    # what training, validation and the saved plans.json (-> nnUNetv2_predict) use
    assert list(tr.configuration_manager.patch_size) == expected
    assert tr.plans_manager.plans["configurations"]["3d_fullres"]["patch_size"] == expected
    # what checkpoints record to re-create the trainer
    assert tr.my_init_kwargs["plans"]["configurations"]["3d_fullres"]["patch_size"] == expected
    # the caller's plans are not modified
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 44, 56]
    # idempotent: re-adapting the saved plans changes nothing
    again = plans_with_adapted_patch(tr.plans_manager.plans, "3d_fullres", tr.patch_divisor)
    assert again == tr.plans_manager.plans


def test_networks_without_a_constraint_keep_the_planned_patch(tmp_path, monkeypatch):
    plans, ds = load_plans("tiny_plain")
    for name in ("nnUNetTrainerSwinUNet3D", "nnUNetTrainerESUNet"):
        tr = _make(getattr(baselines, name), dict(plans), tmp_path, monkeypatch, ds)
        assert list(tr.configuration_manager.patch_size) == [48, 48, 48]
        assert tr.enable_deep_supervision


def test_single_output_trainers_disable_deep_supervision(tmp_path, monkeypatch):
    plans, ds = load_plans("tiny_plain")
    for name in ("nnUNetTrainerVNet", "nnUNetTrainerSwinUNETR"):
        tr = _make(getattr(baselines, name), dict(plans), tmp_path, monkeypatch, ds)
        assert tr.enable_deep_supervision is False
        assert tr._get_deep_supervision_scales() is None
        tr.set_deep_supervision_enabled(True)  # no-op, even before a network exists
        loss = tr._build_loss()
        assert type(loss).__name__ != "DeepSupervisionWrapper"


# ------------------------------------------------------------ optimiser and length


def test_default_optimiser_is_the_backbone_ablations(tmp_path, monkeypatch):
    from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D_Backbone

    plans, ds = load_plans("tiny_plain")
    for name in ("nnUNetTrainerVNet", "nnUNetTrainerSwinUNet3D", "nnUNetTrainerESUNet"):
        tr = _make(getattr(baselines, name), dict(plans), tmp_path, monkeypatch, ds)
        tr.network = torch.nn.Conv3d(1, 1, 1)
        opt, sched = tr.configure_optimizers()
        assert isinstance(opt, torch.optim.AdamW) and isinstance(sched, WarmupCosineLRScheduler)
        assert tr.adamw_lr == nnUNetTrainerPDE3D_Backbone.adamw_lr
        assert tr.adamw_weight_decay == nnUNetTrainerPDE3D_Backbone.adamw_weight_decay
        assert tr.lr_warmup_fraction == nnUNetTrainerPDE3D_Backbone.lr_warmup_fraction
        assert not hasattr(tr, "reg_config")  # no regulariser: nnU-Net's loss only


def test_vnet_paper_optimiser(tmp_path, monkeypatch):
    plans, ds = load_plans("tiny_plain")
    tr = _make(baselines.nnUNetTrainerVNet_PaperOptim, plans, tmp_path, monkeypatch, ds)
    tr.network = torch.nn.Conv3d(1, 1, 1)
    opt, sched = tr.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.99
    sched.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    sched.step(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_smoke_variants_change_only_the_training_length(tmp_path, monkeypatch):
    plans, ds = load_plans("tiny_plain")
    for name in BASELINES:
        if not name.endswith("_2epochs_4iters"):
            continue
        tr = _make(getattr(baselines, name), dict(plans), tmp_path, monkeypatch, ds)
        assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (
            2,
            4,
            2,
        )
        parent = getattr(baselines, name.removesuffix("_2epochs_4iters"))
        assert type(tr).build_network_architecture.__func__ is (
            parent.build_network_architecture.__func__
        )
        assert set(tr.my_init_kwargs) == {
            "plans",
            "configuration",
            "fold",
            "dataset_json",
            "device",
        }
