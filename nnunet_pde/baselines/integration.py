"""Trainer-side glue of the baselines: patch-size adaptation, deep-supervision switch,
the papers' own optimisers.

Mixins in the style of :mod:`nnunet_pde.training`: each overrides one narrow nnU-Net hook,
is configured by class attributes and uses the trainer's attributes by name (nothing here
imports nnunetv2 at module level). Put them *before* ``nnUNetTrainer`` in the bases.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from nnunet_pde.baselines.plans import plans_with_adapted_patch
from nnunet_pde.training.init_hooks import InitHooksMixin
from nnunet_pde.training.schedulers import EpochStepLRScheduler


class PatchAdaptationMixin(InitHooksMixin):
    """Adapt the planned patch size to what the network needs, in the plans themselves.

    ``patch_divisor`` (class attribute): every patch axis must be divisible by it (an int,
    or one int per axis; ``None``: no requirement). ``__init__`` replaces the configuration's
    ``patch_size`` in a copy of the plans by the nearest valid size
    (:func:`nnunet_pde.baselines.adapt_patch_size`) *before* nnU-Net's ``__init__`` sees
    them, so the trainer's ``configuration_manager`` (data loading, augmentation, validation
    sliding window), the ``plans.json`` that nnU-Net writes into the results folder (read by
    ``nnUNetv2_predict``) and the init arguments stored in checkpoints all carry the adapted
    size (:meth:`~nnunet_pde.training.init_hooks.InitHooksMixin.adapt_plans`). The caller's
    dict is not modified.
    """

    patch_divisor: ClassVar[int | tuple[int, int, int] | None] = None

    def adapt_plans(self, plans: dict, configuration: str) -> dict:
        return plans_with_adapted_patch(
            super().adapt_plans(plans, configuration), configuration, self.patch_divisor
        )


class NoDeepSupervisionMixin(InitHooksMixin):
    """For networks with a single full-resolution output: nnU-Net's loss without the
    deep-supervision wrapper, no down-sampled targets, and a no-op
    ``set_deep_supervision_enabled`` (nnU-Net calls it around validation)."""

    def after_init(self) -> None:
        super().after_init()
        self.enable_deep_supervision = False

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """No-op: the network has no deep-supervision outputs."""


class StepDecaySGDMixin:
    """SGD with momentum and a step learning-rate decay, stepped per epoch (V-Net's paper:
    lr 1e-4, momentum 0.99, divided by 10 every 25,000 iterations = 100 of nnU-Net's
    250-iteration epochs). Class attributes ``paper_lr``, ``paper_momentum``,
    ``paper_weight_decay``, ``paper_lr_step_epochs``, ``paper_lr_gamma``."""

    paper_lr: ClassVar[float] = 1e-4
    paper_momentum: ClassVar[float] = 0.99
    paper_weight_decay: ClassVar[float] = 0.0
    paper_lr_step_epochs: ClassVar[int] = 100
    paper_lr_gamma: ClassVar[float] = 0.1

    def configure_optimizers(self):
        self.initial_lr = self.paper_lr
        self.weight_decay = self.paper_weight_decay
        network: nn.Module = self.network
        optimizer = torch.optim.SGD(
            network.parameters(),
            lr=self.paper_lr,
            momentum=self.paper_momentum,
            weight_decay=self.paper_weight_decay,
        )
        scheduler = EpochStepLRScheduler(
            optimizer, self.paper_lr, self.paper_lr_step_epochs, self.paper_lr_gamma
        )
        return optimizer, scheduler
