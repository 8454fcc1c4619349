"""Short CPU schedules of the real-data ablation table (docs/results.md).

``<Trainer>_6epochs_6iters_noTTA`` is ``<Trainer>`` trained for 6 epochs x 6 iterations
(1 validation iteration per epoch) and validated without mirroring test-time augmentation,
which is 8x cheaper on a CPU. Training-time mirroring augmentation is unchanged. Every row of
the table uses the same schedule, so the rows differ only in what their base trainer
changes; the full-length table is the same command with the base trainer names (nnU-Net's
1000 x 250 iterations, mirroring TTA on), see docs/results.md.

The stock reference ``nnUNetTrainer_6epochs_6iters_noTTA`` is nnU-Net's own ``nnUNetTrainer``
(SGD + poly, Dice+CE) with the same schedule.
"""

from __future__ import annotations

from typing import ClassVar

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_pde.trainers.nnUNetTrainerPDE3D import (
    nnUNetTrainerPDE3D,
    nnUNetTrainerPDE3D_Backbone,
    nnUNetTrainerPDE3D_LossOnly,
)
from nnunet_pde.training.length import TrainingLengthMixin
from nnunet_pde.training.subsets import FewLabelMixin


class ShortCPUScheduleMixin(TrainingLengthMixin):
    """6 epochs x 6 iterations, 1 validation iteration per epoch, no mirroring TTA."""

    epochs: ClassVar[int | None] = 6
    iterations_per_epoch: ClassVar[int | None] = 6
    val_iterations_per_epoch: ClassVar[int | None] = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        # nnU-Net stores the axes for validation and nnUNetv2_predict (checkpoint); the
        # returned mirror_axes still drive the training augmentation.
        self.inference_allowed_mirroring_axes = None
        return out


class nnUNetTrainer_6epochs_6iters_noTTA(ShortCPUScheduleMixin, nnUNetTrainer):
    """Stock nnUNetTrainer (SGD + poly) on the short CPU schedule."""


class nnUNetTrainerPDE3D_Backbone_6epochs_6iters_noTTA(
    ShortCPUScheduleMixin, nnUNetTrainerPDE3D_Backbone
):
    """Backbone ablation on the short CPU schedule."""


class nnUNetTrainerPDE3D_LossOnly_6epochs_6iters_noTTA(
    ShortCPUScheduleMixin, nnUNetTrainerPDE3D_LossOnly
):
    """Loss-only ablation on the short CPU schedule."""


class nnUNetTrainerPDE3D_6epochs_6iters_noTTA(ShortCPUScheduleMixin, nnUNetTrainerPDE3D):
    """Full model on the short CPU schedule."""


class nnUNetTrainerPDE3D_Backbone_Frac25_6epochs_6iters_noTTA(
    FewLabelMixin, nnUNetTrainerPDE3D_Backbone_6epochs_6iters_noTTA
):
    """Backbone ablation on 25 % of each fold's training cases, short CPU schedule."""

    few_label_fraction = 0.25


class nnUNetTrainerPDE3D_Frac25_6epochs_6iters_noTTA(
    FewLabelMixin, nnUNetTrainerPDE3D_6epochs_6iters_noTTA
):
    """Full model on 25 % of each fold's training cases, short CPU schedule."""

    few_label_fraction = 0.25
