"""PDEDiagnosticsMixin: per-epoch gate, time step and contribution of every PDE block in
nnU-Net's logger, the training log and progress_pde_blocks.png.

The mixin's hooks are driven on a stand-in for nnUNetTrainer that has what they use (the
network of a real trainer class built from the fixture plans, nnU-Net's own logger,
``print_to_log_file``); the real trainers' hooks run in tests/test_trainer_family.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plan_fixtures import load_plans, managers

from nnunet_pde.formats import QUANTITIES, diagnostics_from_logging
from nnunet_pde.network import pde_blocks
from nnunet_pde.trainers.nnUNetTrainerPDE3D import (
    nnUNetTrainerPDE3D,
    nnUNetTrainerPDE3D_Backbone,
    nnUNetTrainerPDE3D_Stages01,
)
from nnunet_pde.training.diagnostics import PLOT_NAME, PDEDiagnosticsMixin, block_labels

SIDE = 16  # divisible by the tiny plans' total stride (8)


class _StandInTrainer:
    """The parts of nnUNetTrainer that the mixin's hooks use, and its hook order."""

    def __init__(self, trainer_class: type, output_folder, current_epoch: int = 0) -> None:
        from nnunetv2.training.logging.nnunet_logger import MetaLogger

        plans, ds = load_plans("tiny_plain")
        pm, cm, n_in, n_out = managers(plans, ds)
        torch.manual_seed(0)
        self.network = trainer_class.build_network_architecture(pm, cm, n_in, n_out, False)
        self.n_in = n_in
        self.logger = MetaLogger(str(output_folder), False)
        self.current_epoch = current_epoch
        self.is_ddp = False
        self.local_rank = 0
        self.output_folder = str(output_folder)
        self.printed: list[str] = []

    def on_train_start(self):
        pass

    def on_train_epoch_start(self):
        self.network.train()

    def train_step(self, batch: torch.Tensor) -> dict:
        loss = self.network(batch).square().mean()
        loss.backward()
        return {"loss": loss.detach().numpy()}

    def on_train_epoch_end(self, train_outputs):
        pass

    def on_epoch_end(self):
        self.current_epoch += 1

    def print_to_log_file(self, *args):
        self.printed.append(" ".join(str(a) for a in args))


def _stand_in(trainer_class, tmp_path, current_epoch=0):
    class Trainer(PDEDiagnosticsMixin, _StandInTrainer):
        pass

    return Trainer(trainer_class, tmp_path, current_epoch)


def _run_epoch(trainer, batches):
    trainer.on_train_epoch_start()
    outputs = [trainer.train_step(b) for b in batches]
    trainer.on_train_epoch_end(outputs)
    trainer.network.eval()  # as nnU-Net's validation does
    trainer.on_epoch_end()


def _batches(n_in: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, n_in, SIDE, SIDE, SIDE, generator=g) for _ in range(n)]


def test_every_block_is_logged_per_epoch_with_the_measured_contribution(tmp_path):
    trainer = _stand_in(nnUNetTrainerPDE3D_Stages01, tmp_path)
    blocks = pde_blocks(trainer.network)
    assert list(block_labels(list(blocks)).values()) == ["stage0", "stage1"]
    trainer.on_train_start()
    assert all(b.record_diagnostics for b in blocks.values())

    # direct measurement of ||y - x|| / ||x|| per step, through forward hooks
    measured: dict[str, list[float]] = {n: [] for n in blocks}

    def hook(name):
        def fn(module, args, output):
            x, y = args[0].detach().double(), output.detach().double()
            measured[name].append(float((y - x).norm() / x.norm()))

        return fn

    for name, block in blocks.items():
        block.register_forward_hook(hook(name))

    _run_epoch(trainer, _batches(trainer.n_in, 2, 0))  # epoch 0: gates closed
    with torch.no_grad():
        gate = blocks["encoder.stages.0.pde"].gamma
        gate.copy_(torch.linspace(-0.6, 0.2, gate.numel()))
        blocks["encoder.stages.1.pde"].tau_logit.fill_(0.5)
    for m in measured.values():
        m.clear()
    _run_epoch(trainer, _batches(trainer.n_in, 3, 1))  # epoch 1: stage 0's gate open

    logged = trainer.logger.local_logger.my_fantastic_logging
    for label in ("stage0", "stage1"):
        for q in QUANTITIES:
            assert len(logged[f"pde_{label}_{q}"]) == 2, (label, q)
    # epoch 0: a fresh block is the identity
    assert logged["pde_stage0_contribution"][0] == 0.0
    assert logged["pde_stage0_gamma_abs_max"][0] == 0.0
    cfg = blocks["encoder.stages.0.pde"].config
    assert logged["pde_stage0_tau"][0] == pytest.approx(cfg.tau_init, rel=1e-6)
    # epoch 1: the gate's statistics, the contribution averaged over the epoch's batches
    gamma0 = blocks["encoder.stages.0.pde"].gamma.detach().abs()
    assert logged["pde_stage0_gamma_abs_mean"][1] == pytest.approx(float(gamma0.mean()))
    assert logged["pde_stage0_gamma_abs_max"][1] == pytest.approx(0.6)
    assert len(measured["encoder.stages.0.pde"]) == 3
    assert logged["pde_stage0_contribution"][1] > 0
    assert logged["pde_stage0_contribution"][1] == pytest.approx(
        np.mean(measured["encoder.stages.0.pde"]), rel=1e-5
    )
    assert logged["pde_stage1_contribution"][1] == 0.0  # its gate is still closed
    tau1 = cfg.tau_max / (1 + math.exp(-0.5))
    assert logged["pde_stage1_tau"][1] == pytest.approx(tau1, rel=1e-6)
    # one line per block per epoch, and the plot
    lines = [p for p in trainer.printed if p.startswith("PDE block ")]
    assert len(lines) == 4
    assert lines[2].startswith("PDE block stage0 (encoder.stages.0.pde): |gamma| mean ")
    assert (tmp_path / PLOT_NAME).stat().st_size > 1000
    # what inspect reads back from a checkpoint's logging entry
    series = diagnostics_from_logging(trainer.logger.get_checkpoint())
    assert list(series) == ["stage0", "stage1"] and list(series["stage0"]) == list(QUANTITIES)
    assert series["stage0"]["contribution"] == logged["pde_stage0_contribution"]


def test_a_network_without_blocks_logs_nothing(tmp_path):
    trainer = _stand_in(nnUNetTrainerPDE3D_Backbone, tmp_path)
    before = set(trainer.logger.local_logger.my_fantastic_logging)
    trainer.on_train_start()
    _run_epoch(trainer, _batches(trainer.n_in, 1, 0))
    assert set(trainer.logger.local_logger.my_fantastic_logging) == before
    assert not trainer.printed and not (tmp_path / PLOT_NAME).exists()


def test_switched_off_records_and_logs_nothing(tmp_path):
    class Quiet(PDEDiagnosticsMixin, _StandInTrainer):
        pde_diagnostics = False

    trainer = Quiet(nnUNetTrainerPDE3D, tmp_path)
    trainer.on_train_start()
    _run_epoch(trainer, _batches(trainer.n_in, 1, 0))
    assert not any(b.record_diagnostics for b in pde_blocks(trainer.network).values())
    assert not any(k.startswith("pde_") for k in trainer.logger.local_logger.my_fantastic_logging)
    assert not trainer.printed


def test_resumed_training_pads_missing_epochs_with_nan(tmp_path):
    """A checkpoint written before the diagnostics existed: nnU-Net reloads its logger (3
    epochs of its own keys, none of ours); the mixin's keys start with NaN for those."""
    trainer = _stand_in(nnUNetTrainerPDE3D, tmp_path, current_epoch=3)
    old = {k: [0.5] * 3 for k in trainer.logger.local_logger.my_fantastic_logging}
    trainer.logger.load_checkpoint(old)
    trainer.on_train_start()
    _run_epoch(trainer, _batches(trainer.n_in, 1, 0))
    logged = trainer.logger.local_logger.my_fantastic_logging
    values = logged["pde_stage2_contribution"]
    assert len(values) == 4 and all(math.isnan(v) for v in values[:3]) and values[3] == 0.0
    assert (tmp_path / PLOT_NAME).is_file()
    # nnU-Net infers the epoch from the shortest list: ours are as long as its own
    assert min(len(v) for k, v in logged.items() if k.startswith("pde_")) == 4


def test_block_labels_for_resenc_names_and_collisions():
    assert block_labels(["encoder.stages.3.blocks.pde", "encoder.stages.4.pde"]) == {
        "encoder.stages.3.blocks.pde": "stage3",
        "encoder.stages.4.pde": "stage4",
    }
    assert block_labels(["a.stages.1.pde", "b.stages.1.pde"]) == {
        "a.stages.1.pde": "a_stages_1_pde",
        "b.stages.1.pde": "b_stages_1_pde",
    }
