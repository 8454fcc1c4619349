"""Every PDE3D-family trainer: what it builds, one real training step through nnU-Net's
trainer on a preprocessed synthetic dataset (CPU), and DDP safety in a real 2-process
gloo run."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from plan_fixtures import load_plans, managers, nnunet_subprocess_env

from nnunet_pde.env import list_trainers
from nnunet_pde.losses import RegularizedSegmentationLoss
from nnunet_pde.network import pde_blocks
from nnunet_pde.training.loss_terms import LOSS_TERM_KEYS


def pde_family() -> dict[str, type]:
    from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D

    return {n: c for n, c in list_trainers().items() if issubclass(c, nnUNetTrainerPDE3D)}


def cpu_trainers() -> list[str]:
    """Trainers that can run on a CPU (nnU-Net's benchmark trainers require CUDA). Of the
    few-label ``_FracNN`` variants, which differ from their base only in ``do_split``
    (tests/training/test_few_labels.py), only the smoke-test ones take a real step here."""
    return sorted(
        n
        for n in pde_family()
        if "Benchmark" not in n and ("_Frac" not in n or "2epochs_4iters" in n)
    )


# ------------------------------------------------------------------ what each builds


#: On the BraTS-sized plans (30M parameters per build) one trainer of each structure.
BRATS_SUBSET = {
    "nnUNetTrainerPDE3D",
    "nnUNetTrainerPDE3D_Backbone",
    "nnUNetTrainerPDE3D_AllStages",
    "nnUNetTrainerPDE3D_Moment5",
}


@pytest.mark.parametrize("case", ["tiny_plain", "tiny_resencm", "brats_resencm"])
def test_every_trainer_builds_what_its_configuration_says(case):
    plans, ds = load_plans(case)
    pm, cm, n_in, n_out = managers(plans, ds)
    n_stages = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"]
    for name, cls in pde_family().items():
        if case.startswith("brats") and name not in BRATS_SUBSET:
            continue
        net = cls.build_network_architecture(pm, cm, n_in, n_out, True)
        blocks = pde_blocks(net)
        if cls.pde_config is None:
            assert not blocks, name
            continue
        expected = n_stages if cls.pde_all_stages else len(cls.pde_config.stages)
        assert len(blocks) == expected, name
        for block in blocks.values():
            assert dataclasses.replace(block.config, stages=()) == dataclasses.replace(
                cls.pde_config, stages=()
            ), name


def test_ablations_differ_from_the_full_model_in_what_their_names_say():
    fam = pde_family()
    full = fam["nnUNetTrainerPDE3D"]
    assert full.pde_config.steps == 2 and full.pde_config.solver == "semi_implicit"
    assert set(full.reg_config.active_terms) == {"pde", "tv"} and not full.use_sgd
    assert fam["nnUNetTrainerPDE3D_Backbone"].pde_config is None
    assert fam["nnUNetTrainerPDE3D_Backbone"].reg_config.active_terms == ()
    assert fam["nnUNetTrainerPDE3D_LossOnly"].pde_config is None
    assert set(fam["nnUNetTrainerPDE3D_LossOnly"].reg_config.active_terms) == {"pred", "tv"}
    assert fam["nnUNetTrainerPDE3D_NoReg"].reg_config.active_terms == ()
    assert fam["nnUNetTrainerPDE3D_NoReg"].pde_config == full.pde_config
    for k in (1, 3, 5):
        assert fam[f"nnUNetTrainerPDE3D_K{k}"].pde_config.steps == k
    assert fam["nnUNetTrainerPDE3D_Explicit"].pde_config.solver == "explicit"
    one_gs = fam["nnUNetTrainerPDE3D_OneSweepGaussSeidel"].pde_config
    assert (one_gs.solver, one_gs.inner_iterations) == ("gauss_seidel", 1)
    one_j = fam["nnUNetTrainerPDE3D_OneSweepJacobi"].pde_config
    assert (one_j.solver, one_j.inner_iterations, one_j.jacobi_omega) == ("jacobi", 1, 1.0)
    damped = fam["nnUNetTrainerPDE3D_DampedJacobi3"].pde_config
    assert (damped.solver, damped.inner_iterations) == ("jacobi", 3)
    assert damped.jacobi_omega == pytest.approx(2 / 3)
    assert fam["nnUNetTrainerPDE3D_CrankNicolson"].pde_config.solver == "crank_nicolson"
    assert fam["nnUNetTrainerPDE3D_Laplacian"].pde_config.operator == "laplacian"
    assert fam["nnUNetTrainerPDE3D_Moment"].pde_config.kernel_size == 3
    assert fam["nnUNetTrainerPDE3D_Moment5"].pde_config.kernel_size == 5
    assert fam["nnUNetTrainerPDE3D_AllStages"].pde_all_stages
    assert fam["nnUNetTrainerPDE3D_SGD"].use_sgd


def _distinct_pde_configs() -> dict[str, type]:
    """One trainer per distinct PDE configuration (lengths and few-label variants share one)."""
    seen: dict[tuple, str] = {}
    for name, cls in sorted(pde_family().items(), key=lambda kv: len(kv[0])):
        if cls.pde_config is None:
            continue
        key = (cls.pde_config, cls.pde_all_stages)
        seen.setdefault(key, name)
    return {n: pde_family()[n] for n in seen.values()}


@pytest.mark.parametrize("name", sorted(_distinct_pde_configs()))
def test_every_pde_parameter_gets_a_segmentation_gradient_at_init(name):
    """With the gate opened, nnU-Net's Dice+CE reaches every PDE parameter: RMS gradient >= 1e-3
    of the largest PDE-parameter gradient, in every block (no clamp active at init, nothing
    multiplied by an exact 0)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_pde.pde.describe import relative_parameter_gradients

    plans, ds = load_plans("tiny_plain")
    pm, cm, n_in, n_out = managers(plans, ds)
    cls = pde_family()[name]
    torch.manual_seed(0)
    net = cls.build_network_architecture(pm, cm, n_in, n_out, False)
    blocks = pde_blocks(net)
    for block in blocks.values():
        with torch.no_grad():
            block.gamma.fill_(0.5)
    loss = DC_and_CE_loss(
        {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    g = torch.Generator().manual_seed(1)
    side = (24, 24, 24)  # divisible by the plans' total stride (8); small: this is per trainer
    x = torch.randn(2, n_in, *side, generator=g)
    y = torch.randint(0, n_out, (2, 1, *side), generator=g)
    loss(net(x), y).backward()
    for block_name, block in blocks.items():
        rel = relative_parameter_gradients(block)
        assert min(rel.values()) >= 1e-3, (name, block_name, rel)


# ------------------------------------------------- one training step through nnU-Net


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """A tiny preprocessed BraTS-like (regions) dataset: env for nnU-Net + plans + json."""
    root = tmp_path_factory.mktemp("family")
    env = nnunet_subprocess_env(root)
    for cmd in (
        [
            "nnunet-pde",
            "make-dataset",
            "brats-like",
            "--id",
            "961",
            "--size",
            "32",
            "--num-train",
            "5",
            "--num-test",
            "0",
            "--seed",
            "1",
        ],
        ["nnUNetv2_plan_and_preprocess", "-d", "961", "-c", "3d_fullres", "-np", "2"],
    ):
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    (folder,) = (root / "pre").glob("Dataset961_*")
    return env, folder


@pytest.fixture
def nnunet_env(preprocessed, monkeypatch):
    env, folder = preprocessed
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", cpu_trainers())
def test_one_training_step_is_finite_and_logs_every_loss_term(name, nnunet_env):
    from batchgenerators.utilities.file_and_folder_operations import load_json

    plans = load_json(str(nnunet_env / "nnUNetPlans.json"))
    ds = load_json(str(nnunet_env / "dataset.json"))
    plans["continue_training"] = False
    trainer = list_trainers()[name](plans, "3d_fullres", 0, ds, torch.device("cpu"))
    trainer.on_train_start()
    try:
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        out = trainer.train_step(next(trainer.dataloader_train))
        trainer.on_train_epoch_end([out])
    finally:
        trainer.dataloader_train = trainer.dataloader_val = None
    assert np.isfinite(out["loss"])
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    # Blocks record the consistency term only when the loss reads it (_NoReg: never).
    reads = trainer.reg_config.lambda_pde > 0
    for block in pde_blocks(trainer.network).values():
        assert block.record_consistency == reads, name
        assert block.last_residuals is None, name  # consumed by the loss, or never made
    logged = trainer.logger.local_logger.my_fantastic_logging
    expected = {LOSS_TERM_KEYS["seg"]} | {
        LOSS_TERM_KEYS[t] for t in trainer.reg_config.active_terms
    }
    assert expected <= set(logged)
    for key in expected:
        assert len(logged[key]) == 1 and np.isfinite(logged[key][0]), (name, key)
    # every block's gate, time step and contribution (PDEDiagnosticsMixin); none without blocks
    blocks = pde_blocks(trainer.network)
    diagnostics = {k for k in logged if k.startswith("pde_")}
    assert len(diagnostics) == 4 * len(blocks), (name, diagnostics)
    for key in diagnostics:
        assert len(logged[key]) == 1 and np.isfinite(logged[key][0]), (name, key)
        if key.endswith("_contribution"):
            assert logged[key][0] == 0.0, (name, key)  # measured before the step moved gamma
    assert all(b.record_diagnostics for b in blocks.values()), name
    # the schedule: AdamW warms up from a fraction of its peak; SGD starts at nnU-Net's 1e-2
    lr = trainer.optimizer.param_groups[0]["lr"]
    if trainer.use_sgd:
        assert isinstance(trainer.optimizer, torch.optim.SGD) and lr == pytest.approx(1e-2)
    else:
        assert isinstance(trainer.optimizer, torch.optim.AdamW) and 0 < lr <= trainer.adamw_lr


# -------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, names: list[str], result_dir: str) -> None:
    """Build each trainer's network + loss, wrap in DDP (no find_unused_parameters, as
    nnU-Net does), run two optimisation steps; DDP raises if a parameter got no gradient."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        plans, ds = load_plans("tiny_plain")
        pm, cm, n_in, n_out = managers(plans, ds)
        trainers = list_trainers()
        for name in names:
            cls = trainers[name]
            torch.manual_seed(0)
            net = cls.build_network_architecture(pm, cm, n_in, n_out, True)
            # step the blocks away from their identity init so every path carries gradient
            with torch.no_grad():
                for block in pde_blocks(net).values():
                    block.gamma.fill_(0.5)
            ddp = DDP(net)
            seg = DeepSupervisionWrapper(
                DC_and_CE_loss(
                    {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": True},
                    {},
                    weight_ce=1,
                    weight_dice=1,
                    dice_class=MemoryEfficientSoftDiceLoss,
                ),
                [4 / 7, 2 / 7, 1 / 7],
            )
            loss = RegularizedSegmentationLoss(
                seg,
                cls.reg_config,
                cm.spacing,
                has_regions=False,
                blocks=(lambda n=net: pde_blocks(n).values())
                if cls.reg_config.lambda_pde > 0
                else None,
            )
            opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
            g = torch.Generator().manual_seed(rank)
            for _ in range(2):
                x = torch.randn(1, n_in, 32, 32, 32, generator=g)
                target = [
                    torch.randint(0, n_out, (1, 1, 32 // f, 32 // f, 32 // f), generator=g)
                    for f in (1, 2, 4)
                ]
                opt.zero_grad()
                loss(ddp(x), target).backward()
                missing = [n for n, p in net.named_parameters() if p.grad is None]
                assert not missing, (name, missing)
                opt.step()
            # gradients were all-reduced: replicas stay identical
            flat = torch.cat([p.detach().flatten() for p in net.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            assert torch.equal(gathered[0], gathered[1]), name
        Path(result_dir, f"ok_{rank}").write_text("\n".join(names))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_gloo_every_parameter_gets_a_gradient(tmp_path):
    names = [
        "nnUNetTrainerPDE3D",
        "nnUNetTrainerPDE3D_NoReg",
        "nnUNetTrainerPDE3D_LossOnly",
        "nnUNetTrainerPDE3D_Laplacian",
        "nnUNetTrainerPDE3D_Moment",
        "nnUNetTrainerPDE3D_CrankNicolson",
    ]
    mp.spawn(_ddp_worker, args=(2, _free_port(), names, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "ok_0").read_text().split() == names
    assert (tmp_path / "ok_1").read_text().split() == names
