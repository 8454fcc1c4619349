"""PDE3D-UNet trainers: the planned nnU-Net 3-D U-Net with PDE blocks in its encoder.

Every class here is listed, with what it changes, in ``docs/trainers.md``.
"""

from __future__ import annotations

from typing import ClassVar

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_pde.network import build_pde3d_network
from nnunet_pde.pde import PDEConfig
from nnunet_pde.training import TrainingLengthMixin


class nnUNetTrainerPDE3D(TrainingLengthMixin, nnUNetTrainer):
    """Full PDE3D-UNet: one semi-implicit anisotropic-diffusion PDE block (K=2 steps,
    learned response) after the encoder stage that feeds the bottleneck.

    All configuration lives in the class attribute :attr:`pde_config` so that
    :meth:`build_network_architecture` works when called on the class, as
    ``nnUNetv2_predict`` does.
    """

    pde_config: ClassVar[PDEConfig] = PDEConfig()

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        return build_pde3d_network(
            plans_manager,
            configuration_manager,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision,
            config=cls.pde_config,
        )


class nnUNetTrainerPDE3D_1epoch(nnUNetTrainerPDE3D):
    """1 epoch of nnU-Net's 250 iterations (debugging plans)."""

    epochs = 1


class nnUNetTrainerPDE3D_5epochs(nnUNetTrainerPDE3D):
    """5 epochs of nnU-Net's 250 iterations (debugging plans)."""

    epochs = 5


class nnUNetTrainerPDE3D_10epochs(nnUNetTrainerPDE3D):
    """10 epochs of nnU-Net's 250 iterations."""

    epochs = 10


class nnUNetTrainerPDE3D_2epochs_4iters(nnUNetTrainerPDE3D):
    """Smoke test: 2 epochs x 4 training iterations, 2 validation iterations per epoch.
    Exercises the whole pipeline (train, checkpoint, validation, export) in about a
    minute on a CPU; learns nothing useful."""

    epochs = 2
    iterations_per_epoch = 4
    val_iterations_per_epoch = 2


class nnUNetTrainerPDE3D_Demo(nnUNetTrainerPDE3D):
    """The README demo: 25 epochs x 8 iterations, 2 validation iterations per epoch,
    enough for the synthetic BraTS-like tumour to be segmented on a 2-core CPU in a few
    minutes."""

    epochs = 25
    iterations_per_epoch = 8
    val_iterations_per_epoch = 2
