"""PDE3D-UNet trainers: the full model and the paper's ablations.

Every class is listed, with what it changes and the ablation it serves, in
``docs/trainers.md`` (a test keeps the two in agreement). A variant changes class
attributes only:

* ``pde_config``: the PDE blocks (:class:`nnunet_pde.pde.PDEConfig`), ``None`` for none;
  ``pde_all_stages``: a block after every encoder stage;
* ``reg_config``: the regulariser terms (:class:`nnunet_pde.losses.RegularizerConfig`);
* ``use_sgd``: nnU-Net's SGD + poly schedule instead of AdamW + warm-up/cosine;
* ``epochs`` / ``iterations_per_epoch`` / ``val_iterations_per_epoch``: training length;
* ``pde_diagnostics``: log the blocks' gate, time step and contribution per epoch (default
  on; nothing is logged for a network without blocks).

The network is built by the hook ``build_network`` of
:class:`~nnunet_pde.training.network_hook.NetworkBuilderMixin` from the plans and class
attributes only, because ``nnUNetv2_predict`` builds it on the class. The smoke and demo
lengths are :class:`~nnunet_pde.training.length.SmokeLengthMixin` and
:class:`~nnunet_pde.training.length.DemoLengthMixin`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.benchmarking.nnUNetTrainerBenchmark_5epochs import (
    nnUNetTrainerBenchmark_5epochs,
)
from nnunetv2.training.nnUNetTrainer.variants.benchmarking.nnUNetTrainerBenchmark_5epochs_noDataLoading import (  # noqa: E501
    nnUNetTrainerBenchmark_5epochs_noDataLoading,
)
from torch import nn

from nnunet_pde.losses import RegularizerConfig
from nnunet_pde.network import build_pde3d_network
from nnunet_pde.pde import PDEConfig
from nnunet_pde.training.diagnostics import PDEDiagnosticsMixin
from nnunet_pde.training.length import DemoLengthMixin, SmokeLengthMixin, TrainingLengthMixin
from nnunet_pde.training.loss_terms import RegularizedLossMixin
from nnunet_pde.training.network_hook import NetworkBuilderMixin, NetworkSpec
from nnunet_pde.training.optimizers import AdamWCosineMixin

#: The full model's regulariser. The weights make each term about 2 % of the Dice+CE loss at
#: the start of training (measured on the synthetic BraTS-like data: L_pde ~0.16, L_tv ~0.2
#: against L_seg ~0.73), and they were the best of (0, 0), (0.1, 0.05), (0.4, 0.2) in the small
#: sweep recorded in docs/trainers.md (scripts/lambda_sweep.py, 2 folds, synthetic data).
FULL_REGULARIZER = RegularizerConfig(lambda_pde=0.1, lambda_tv=0.05, warmup_fraction=0.1)


class nnUNetTrainerPDE3D(
    NetworkBuilderMixin,
    PDEDiagnosticsMixin,
    RegularizedLossMixin,
    AdamWCosineMixin,
    TrainingLengthMixin,
    nnUNetTrainer,
):
    """Full PDE3D-UNet: a PDE block (semi-implicit anisotropic diffusion, K=2, learned
    response) after the stage feeding the bottleneck; Dice+CE + PDE consistency + TV;
    AdamW with warm-up and cosine annealing. Every epoch logs each block's gate, time step
    and contribution (:class:`~nnunet_pde.training.diagnostics.PDEDiagnosticsMixin`)."""

    pde_config: ClassVar[PDEConfig | None] = PDEConfig()
    pde_all_stages: ClassVar[bool] = False
    reg_config: ClassVar[RegularizerConfig] = FULL_REGULARIZER

    @classmethod
    def build_network(cls, spec: NetworkSpec) -> nn.Module:
        """nnU-Net's planned network with the blocks of ``pde_config`` (none if ``None``)."""
        return build_pde3d_network(
            spec.plans_manager,
            *spec.sizing,
            spec.enable_deep_supervision,
            config=cls.pde_config,
            all_stages=cls.pde_all_stages,
        )


def _pde(**changes) -> PDEConfig:
    return dataclasses.replace(nnUNetTrainerPDE3D.pde_config, **changes)


# ---------------------------------------------------------------- ablations of the paper


class nnUNetTrainerPDE3D_Backbone(nnUNetTrainerPDE3D):
    """Ablation 1, backbone only: no PDE blocks, no regulariser; same optimiser and
    schedule as the full model."""

    pde_config = None
    reg_config = RegularizerConfig()


class nnUNetTrainerPDE3D_LossOnly(nnUNetTrainerPDE3D):
    """Ablation 2, backbone + PDE regulariser as a loss term only: no embedded blocks;
    PDE consistency of the predicted probabilities (distance from one implicit diffusion
    step of themselves) + TV."""

    pde_config = None
    reg_config = RegularizerConfig(lambda_pred=1.0, lambda_tv=0.05, warmup_fraction=0.1)


class nnUNetTrainerPDE3D_NoReg(nnUNetTrainerPDE3D):
    """Embedded PDE blocks, no regulariser terms (plain Dice+CE)."""

    reg_config = RegularizerConfig()


# ------------------------------------------------------------- number of steps K


class nnUNetTrainerPDE3D_K1(nnUNetTrainerPDE3D):
    """K=1 PDE step per block."""

    pde_config = _pde(steps=1)


class nnUNetTrainerPDE3D_K3(nnUNetTrainerPDE3D):
    """K=3 PDE steps per block."""

    pde_config = _pde(steps=3)


class nnUNetTrainerPDE3D_K5(nnUNetTrainerPDE3D):
    """K=5 PDE steps per block."""

    pde_config = _pde(steps=5)


# ------------------------------------------------------------------------ solvers


class nnUNetTrainerPDE3D_Explicit(nnUNetTrainerPDE3D):
    """Forward Euler steps; time step ``tau / (1 + tau R)`` inside the CFL bound ``1 / R``."""

    pde_config = _pde(solver="explicit")


class nnUNetTrainerPDE3D_CrankNicolson(nnUNetTrainerPDE3D):
    """Crank-Nicolson on the AOS splitting (exact tridiagonal solves), time step inside
    the bound that keeps it positive."""

    pde_config = _pde(solver="crank_nicolson")


class nnUNetTrainerPDE3D_OneSweepJacobi(nnUNetTrainerPDE3D):
    """The paper's semi-implicit step: one Jacobi sweep of the implicit system from u^n
    (algebraically a per-voxel rescaled explicit step)."""

    pde_config = _pde(solver="jacobi")


class nnUNetTrainerPDE3D_OneSweepGaussSeidel(nnUNetTrainerPDE3D):
    """The paper's semi-implicit step with one red-black Gauss-Seidel sweep from u^n."""

    pde_config = _pde(solver="gauss_seidel")


class nnUNetTrainerPDE3D_DampedJacobi3(nnUNetTrainerPDE3D):
    """Three damped Jacobi sweeps (omega = 2/3) of the implicit system from u^n."""

    pde_config = _pde(solver="jacobi", inner_iterations=3, jacobi_omega=2.0 / 3.0)


# ---------------------------------------------------------------------- operators


class nnUNetTrainerPDE3D_Laplacian(nnUNetTrainerPDE3D):
    """Linear spacing-aware heat equation (no edge stopping) instead of anisotropic
    diffusion."""

    pde_config = _pde(operator="laplacian")


class nnUNetTrainerPDE3D_Moment(nnUNetTrainerPDE3D):
    """Anisotropic diffusion plus PDE-Net moment-constrained first/second derivatives
    (3^3 kernels), IMEX."""

    pde_config = _pde(operator="moment", kernel_size=3)


class nnUNetTrainerPDE3D_Moment5(nnUNetTrainerPDE3D):
    """As _Moment with 5^3 moment kernels."""

    pde_config = _pde(operator="moment", kernel_size=5)


# ------------------------------------------------------------ placement, optimiser


class nnUNetTrainerPDE3D_AllStages(nnUNetTrainerPDE3D):
    """A PDE block after every encoder stage (bottleneck included)."""

    pde_all_stages = True


class nnUNetTrainerPDE3D_Stage0(nnUNetTrainerPDE3D):
    """The PDE block at full resolution: after encoder stage 0 instead of the stage feeding
    the bottleneck (where the boundaries of small structures still exist)."""

    pde_config = _pde(stages=(0,))


class nnUNetTrainerPDE3D_Stages01(nnUNetTrainerPDE3D):
    """PDE blocks after the two highest-resolution encoder stages (0 and 1)."""

    pde_config = _pde(stages=(0, 1))


class nnUNetTrainerPDE3D_SGD(nnUNetTrainerPDE3D):
    """Full model with nnU-Net's SGD (lr 1e-2, Nesterov) + poly schedule."""

    use_sgd = True


# ------------------------------------- giving the gate a chance (issue 22's candidates)
# The default's gate ends near 0 (mean |gamma| 0.03 after 160 steps): with Adam a parameter
# moves about one learning rate per step, so a gate that must travel O(0.1-1) from 0 needs
# hundreds of steps of consistent gradient sign. Both candidates keep the block the
# identity at initialisation (gamma = 0), so a stock checkpoint warm-starts them exactly.


class nnUNetTrainerPDE3D_PDELR10(nnUNetTrainerPDE3D):
    """Full model with the PDE blocks' parameters (gate, time step, diffusivity, edge
    threshold, response) in their own AdamW group: 10x the learning rate at every epoch of
    the schedule, no weight decay."""

    pde_lr_scale = 10.0
    pde_weight_decay = 0.0


class nnUNetTrainerPDE3D_GateScale10(nnUNetTrainerPDE3D):
    """Full model with the gate reparametrised as ``10 * gamma``: the gate alone moves 10x
    as far per Adam step; every other parameter as in the default."""

    pde_config = _pde(gate_scale=10.0)


# --------------------------------------------------------------- training length


class nnUNetTrainerPDE3D_1epoch(nnUNetTrainerPDE3D):
    """1 epoch of nnU-Net's 250 iterations (debugging plans)."""

    epochs = 1


class nnUNetTrainerPDE3D_5epochs(nnUNetTrainerPDE3D):
    """5 epochs of nnU-Net's 250 iterations (debugging plans)."""

    epochs = 5


class nnUNetTrainerPDE3D_10epochs(nnUNetTrainerPDE3D):
    """10 epochs of nnU-Net's 250 iterations."""

    epochs = 10


class nnUNetTrainerPDE3D_2epochs_4iters(SmokeLengthMixin, nnUNetTrainerPDE3D):
    """Smoke test: 2 epochs x 4 training iterations, 2 validation iterations per epoch,
    checkpoint_latest.pth after every epoch."""


class nnUNetTrainerPDE3D_Backbone_2epochs_4iters(SmokeLengthMixin, nnUNetTrainerPDE3D_Backbone):
    """Smoke test of the backbone ablation (2 epochs x 4 iterations)."""


class nnUNetTrainerPDE3D_LossOnly_2epochs_4iters(SmokeLengthMixin, nnUNetTrainerPDE3D_LossOnly):
    """Smoke test of the loss-only ablation (2 epochs x 4 iterations)."""


class nnUNetTrainerPDE3D_Demo(DemoLengthMixin, nnUNetTrainerPDE3D):
    """The README demo: 20 epochs x 8 iterations, 2 validation iterations per epoch."""


class nnUNetTrainerPDE3D_Backbone_Demo(DemoLengthMixin, nnUNetTrainerPDE3D_Backbone):
    """The backbone ablation with the demo's length (20 epochs x 8 iterations): the
    reference of the small robustness example in docs/robustness.md."""


# ---------------------------------------------------- nnU-Net's benchmark procedure


class nnUNetTrainerPDE3D_Benchmark_5epochs(nnUNetTrainerPDE3D, nnUNetTrainerBenchmark_5epochs):
    """nnU-Net's GPU benchmark (5 epochs, fastest epoch to benchmark_result.json) for the
    full model."""


class nnUNetTrainerPDE3D_Benchmark_5epochs_noDataLoading(
    nnUNetTrainerPDE3D, nnUNetTrainerBenchmark_5epochs_noDataLoading
):
    """As _Benchmark_5epochs with synthetic batches (no data loading)."""


class nnUNetTrainerPDE3D_Backbone_Benchmark_5epochs(
    nnUNetTrainerPDE3D_Backbone, nnUNetTrainerBenchmark_5epochs
):
    """nnU-Net's GPU benchmark for the backbone ablation (the reference of the PDE3D
    overhead)."""


class nnUNetTrainerPDE3D_Backbone_Benchmark_5epochs_noDataLoading(
    nnUNetTrainerPDE3D_Backbone, nnUNetTrainerBenchmark_5epochs_noDataLoading
):
    """As _Backbone_Benchmark_5epochs with synthetic batches (no data loading)."""
