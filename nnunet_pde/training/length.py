"""The training length of a trainer variant, as class attributes."""

from __future__ import annotations

from typing import ClassVar

from nnunet_pde.training.init_hooks import InitHooksMixin

__all__ = ["DemoLengthMixin", "SmokeLengthMixin", "TrainingLengthMixin"]


class TrainingLengthMixin(InitHooksMixin):
    """Override nnU-Net's training length through class attributes.

    nnU-Net fixes ``num_epochs`` (1000), ``num_iterations_per_epoch`` (250) and
    ``num_val_iterations_per_epoch`` (50) in ``nnUNetTrainer.__init__``. A short variant
    sets the class attributes below instead of repeating an ``__init__``; ``None`` keeps
    nnU-Net's value. ``save_every_epochs`` sets how often ``checkpoint_latest.pth`` is
    written (what ``--c`` resumes from).
    """

    epochs: ClassVar[int | None] = None
    iterations_per_epoch: ClassVar[int | None] = None
    val_iterations_per_epoch: ClassVar[int | None] = None
    #: write checkpoint_latest.pth every N epochs (nnU-Net: 50)
    save_every_epochs: ClassVar[int | None] = None

    def after_init(self) -> None:
        super().after_init()
        if self.epochs is not None:
            self.num_epochs = self.epochs
        if self.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        if self.save_every_epochs is not None:
            self.save_every = self.save_every_epochs


class SmokeLengthMixin:
    """Training length of the ``_2epochs_4iters`` smoke variants: 2 epochs x 4 training
    iterations, 2 validation iterations per epoch, ``checkpoint_latest.pth`` after every
    epoch. The class attributes of ``TrainingLengthMixin`` (which the trainer it shortens
    has); put it before that trainer in the bases."""

    epochs: ClassVar[int | None] = 2
    iterations_per_epoch: ClassVar[int | None] = 4
    val_iterations_per_epoch: ClassVar[int | None] = 2
    save_every_epochs: ClassVar[int | None] = 1


class DemoLengthMixin:
    """Training length of the README demo's ``_Demo`` variants: 20 epochs x 8 training
    iterations, 2 validation iterations per epoch. The class attributes of
    ``TrainingLengthMixin``; put it before the trainer it shortens."""

    epochs: ClassVar[int | None] = 20
    iterations_per_epoch: ClassVar[int | None] = 8
    val_iterations_per_epoch: ClassVar[int | None] = 2
