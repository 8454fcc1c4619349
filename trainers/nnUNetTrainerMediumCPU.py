"""The medium CPU schedule of the v2 real-label campaign (docs/results.md).

``<Trainer>_25epochs_20iters_noTTA`` is ``<Trainer>`` trained for 25 epochs x 20 iterations
(500 iterations; 1 validation iteration per epoch) and validated without mirroring test-time
augmentation. Training-time augmentation is unchanged. It is the longest schedule the
project's 2-core CPU affords for three runs per row (about 1 h per training), and it is
early training: nnU-Net's own schedule is 1000 x 250 iterations. On the few-label rows
(``_Frac10``: 16 of fold 0's 160 training cases) 500 iterations of batch 7 draw each training
case about 200 times, past the rise of the validation curve (docs/results.md shows it).
``checkpoint_latest.pth`` is written every 5 epochs, so that a training cut off by the end of a
session continues (``benchmark run`` resumes it with ``--c``) instead of starting again.

Every row uses the same schedule, so rows differ only in what their base trainer changes.
"""

from __future__ import annotations

from typing import ClassVar

from nnunet_pde.trainers.nnUNetTrainerPDE3D import (
    nnUNetTrainerPDE3D,
    nnUNetTrainerPDE3D_Backbone,
    nnUNetTrainerPDE3D_GateScale10,
    nnUNetTrainerPDE3D_LossOnly,
    nnUNetTrainerPDE3D_NoReg,
    nnUNetTrainerPDE3D_PDELR10,
    nnUNetTrainerPDE3D_Stages01,
)
from nnunet_pde.trainers.nnUNetTrainerShortCPU import ShortCPUScheduleMixin
from nnunet_pde.training.subsets import FewLabelMixin


class MediumCPUScheduleMixin(ShortCPUScheduleMixin):
    """25 epochs x 20 iterations, 1 validation iteration per epoch, no mirroring TTA;
    ``checkpoint_latest.pth`` every 5 epochs."""

    epochs: ClassVar[int | None] = 25
    iterations_per_epoch: ClassVar[int | None] = 20
    val_iterations_per_epoch: ClassVar[int | None] = 1
    save_every_epochs: ClassVar[int | None] = 5


# --- full labels (fold 0's 160 training cases) ---------------------------------------


class nnUNetTrainerPDE3D_Backbone_25epochs_20iters_noTTA(
    MediumCPUScheduleMixin, nnUNetTrainerPDE3D_Backbone
):
    """Backbone ablation on the medium CPU schedule."""


class nnUNetTrainerPDE3D_LossOnly_25epochs_20iters_noTTA(
    MediumCPUScheduleMixin, nnUNetTrainerPDE3D_LossOnly
):
    """Loss-only ablation on the medium CPU schedule."""


class nnUNetTrainerPDE3D_NoReg_25epochs_20iters_noTTA(
    MediumCPUScheduleMixin, nnUNetTrainerPDE3D_NoReg
):
    """PDE blocks without the PDE/TV loss terms, medium CPU schedule."""


class nnUNetTrainerPDE3D_25epochs_20iters_noTTA(MediumCPUScheduleMixin, nnUNetTrainerPDE3D):
    """Full model on the medium CPU schedule."""


class nnUNetTrainerPDE3D_Stages01_25epochs_20iters_noTTA(
    MediumCPUScheduleMixin, nnUNetTrainerPDE3D_Stages01
):
    """Blocks after stages 0 and 1, medium CPU schedule."""


class nnUNetTrainerPDE3D_PDELR10_25epochs_20iters_noTTA(
    MediumCPUScheduleMixin, nnUNetTrainerPDE3D_PDELR10
):
    """PDE parameters at 10x the learning rate, medium CPU schedule."""


class nnUNetTrainerPDE3D_GateScale10_25epochs_20iters_noTTA(
    MediumCPUScheduleMixin, nnUNetTrainerPDE3D_GateScale10
):
    """Gate ``10 * gamma``, medium CPU schedule."""


# --- few labels (10 % of fold 0's training cases, seed 0) ------------------------------


class nnUNetTrainerPDE3D_Backbone_25epochs_20iters_noTTA_Frac10(
    FewLabelMixin, nnUNetTrainerPDE3D_Backbone_25epochs_20iters_noTTA
):
    """Backbone ablation on 10 % of the fold's training cases, medium CPU schedule."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_LossOnly_25epochs_20iters_noTTA_Frac10(
    FewLabelMixin, nnUNetTrainerPDE3D_LossOnly_25epochs_20iters_noTTA
):
    """Loss-only ablation on 10 % of the fold's training cases, medium CPU schedule."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_25epochs_20iters_noTTA_Frac10(
    FewLabelMixin, nnUNetTrainerPDE3D_25epochs_20iters_noTTA
):
    """Full model on 10 % of the fold's training cases, medium CPU schedule."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_Stages01_25epochs_20iters_noTTA_Frac10(
    FewLabelMixin, nnUNetTrainerPDE3D_Stages01_25epochs_20iters_noTTA
):
    """Blocks after stages 0 and 1 on 10 % of the fold's training cases, medium CPU schedule."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_PDELR10_25epochs_20iters_noTTA_Frac10(
    FewLabelMixin, nnUNetTrainerPDE3D_PDELR10_25epochs_20iters_noTTA
):
    """10x PDE learning rate on 10 % of the fold's training cases, medium CPU schedule."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_GateScale10_25epochs_20iters_noTTA_Frac10(
    FewLabelMixin, nnUNetTrainerPDE3D_GateScale10_25epochs_20iters_noTTA
):
    """Gate ``10 * gamma`` on 10 % of the fold's training cases, medium CPU schedule."""

    few_label_fraction = 0.10
