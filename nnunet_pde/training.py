"""Trainer-side helpers shared by the trainer classes in ``trainers/``.

Nothing here subclasses nnU-Net's trainer; the classes in ``trainers/`` compose these
pieces so that each variant overrides one narrow thing.
"""

from __future__ import annotations

from typing import ClassVar

import torch


class TrainingLengthMixin:
    """Override nnU-Net's training length through class attributes.

    nnU-Net fixes ``num_epochs`` (1000), ``num_iterations_per_epoch`` (250) and
    ``num_val_iterations_per_epoch`` (50) in ``nnUNetTrainer.__init__``. A short variant
    sets the class attributes below instead of repeating an ``__init__``; ``None`` keeps
    nnU-Net's value. Put the mixin *before* ``nnUNetTrainer`` in the bases.
    """

    epochs: ClassVar[int | None] = None
    iterations_per_epoch: ClassVar[int | None] = None
    val_iterations_per_epoch: ClassVar[int | None] = None

    # The signature must be nnUNetTrainer's own: nnU-Net records its parameters by name
    # (inspect.signature(self.__init__)) to re-create the trainer from a checkpoint.
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's default
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.epochs is not None:
            self.num_epochs = self.epochs
        if self.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
