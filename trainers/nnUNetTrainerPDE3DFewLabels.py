"""Few-label variants: train on 5 / 10 / 25 / 50 % of each fold's training cases.

``<Trainer>_FracNN`` is ``<Trainer>`` trained on a nested, seeded NN % subset of the fold's
training cases (:mod:`nnunet_pde.training.subsets`), validated on the fold's full
validation set; the subset is written to ``few_label_subset.json`` in the fold folder.
The subsets depend only on the case ids and the seed, so they are identical across
trainers: compare ``nnUNetTrainerPDE3D_Frac25`` with ``nnUNetTrainerPDE3D_Backbone_Frac25``.
``nnunet-pde benchmark robustness few-labels`` pools and compares them (docs/robustness.md).
"""

from __future__ import annotations

from nnunet_pde.trainers.nnUNetTrainerPDE3D import (
    nnUNetTrainerPDE3D,
    nnUNetTrainerPDE3D_2epochs_4iters,
    nnUNetTrainerPDE3D_Backbone,
    nnUNetTrainerPDE3D_Backbone_2epochs_4iters,
    nnUNetTrainerPDE3D_GateScale10,
    nnUNetTrainerPDE3D_LossOnly,
    nnUNetTrainerPDE3D_PDELR10,
    nnUNetTrainerPDE3D_Stages01,
)
from nnunet_pde.training.subsets import FewLabelMixin

# ------------------------------------------------------------------ full model


class nnUNetTrainerPDE3D_Frac05(FewLabelMixin, nnUNetTrainerPDE3D):
    """Full model on 5 % of each fold's training cases."""

    few_label_fraction = 0.05


class nnUNetTrainerPDE3D_Frac10(FewLabelMixin, nnUNetTrainerPDE3D):
    """Full model on 10 % of each fold's training cases."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_Frac25(FewLabelMixin, nnUNetTrainerPDE3D):
    """Full model on 25 % of each fold's training cases."""

    few_label_fraction = 0.25


class nnUNetTrainerPDE3D_Frac50(FewLabelMixin, nnUNetTrainerPDE3D):
    """Full model on 50 % of each fold's training cases."""

    few_label_fraction = 0.50


# ------------------------------------------------------------ backbone ablation


class nnUNetTrainerPDE3D_Backbone_Frac05(FewLabelMixin, nnUNetTrainerPDE3D_Backbone):
    """Backbone ablation on 5 % of each fold's training cases."""

    few_label_fraction = 0.05


class nnUNetTrainerPDE3D_Backbone_Frac10(FewLabelMixin, nnUNetTrainerPDE3D_Backbone):
    """Backbone ablation on 10 % of each fold's training cases."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_Backbone_Frac25(FewLabelMixin, nnUNetTrainerPDE3D_Backbone):
    """Backbone ablation on 25 % of each fold's training cases."""

    few_label_fraction = 0.25


class nnUNetTrainerPDE3D_Backbone_Frac50(FewLabelMixin, nnUNetTrainerPDE3D_Backbone):
    """Backbone ablation on 50 % of each fold's training cases."""

    few_label_fraction = 0.50


# ----------------------------------------------------------- loss-only ablation


class nnUNetTrainerPDE3D_LossOnly_Frac05(FewLabelMixin, nnUNetTrainerPDE3D_LossOnly):
    """Loss-only ablation on 5 % of each fold's training cases."""

    few_label_fraction = 0.05


class nnUNetTrainerPDE3D_LossOnly_Frac10(FewLabelMixin, nnUNetTrainerPDE3D_LossOnly):
    """Loss-only ablation on 10 % of each fold's training cases."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_LossOnly_Frac25(FewLabelMixin, nnUNetTrainerPDE3D_LossOnly):
    """Loss-only ablation on 25 % of each fold's training cases."""

    few_label_fraction = 0.25


class nnUNetTrainerPDE3D_LossOnly_Frac50(FewLabelMixin, nnUNetTrainerPDE3D_LossOnly):
    """Loss-only ablation on 50 % of each fold's training cases."""

    few_label_fraction = 0.50


# ----------------------------------- placement and gate candidates (issue 22's few-label rows)


class nnUNetTrainerPDE3D_Stages01_Frac10(FewLabelMixin, nnUNetTrainerPDE3D_Stages01):
    """PDE blocks after encoder stages 0 and 1, on 10 % of each fold's training cases."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_PDELR10_Frac10(FewLabelMixin, nnUNetTrainerPDE3D_PDELR10):
    """The PDE parameter group at 10x the learning rate, on 10 % of each fold's training
    cases."""

    few_label_fraction = 0.10


class nnUNetTrainerPDE3D_GateScale10_Frac10(FewLabelMixin, nnUNetTrainerPDE3D_GateScale10):
    """The gate reparametrised as 10 * gamma, on 10 % of each fold's training cases."""

    few_label_fraction = 0.10


# ------------------------------------------------------- smoke tests (2 x 4 iters)


class nnUNetTrainerPDE3D_2epochs_4iters_Frac50(FewLabelMixin, nnUNetTrainerPDE3D_2epochs_4iters):
    """Smoke test of the few-label regime: `_2epochs_4iters` on 50 % of the fold's cases."""

    few_label_fraction = 0.50


class nnUNetTrainerPDE3D_Backbone_2epochs_4iters_Frac50(
    FewLabelMixin, nnUNetTrainerPDE3D_Backbone_2epochs_4iters
):
    """Smoke test: `_Backbone_2epochs_4iters` on 50 % of the fold's cases."""

    few_label_fraction = 0.50
