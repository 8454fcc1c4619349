"""nnUNetTrainer's ``__init__``, written once, with two hooks for the mixins.

nnU-Net records the parameters of ``__init__`` by name (``inspect.signature(self.__init__)``)
to re-create a trainer from a checkpoint, so every override must keep nnUNetTrainer's own
signature. :class:`InitHooksMixin` is the one place that does; a mixin that needs to change
the plans before nnU-Net sees them, or a trainer attribute after nnU-Net has set it,
overrides :meth:`~InitHooksMixin.adapt_plans` or :meth:`~InitHooksMixin.after_init` (calling
``super()``) instead of repeating the ``__init__``. Nothing here imports nnunetv2.
"""

from __future__ import annotations

import torch

__all__ = ["InitHooksMixin"]


class InitHooksMixin:
    """``__init__`` with nnUNetTrainer's signature: :meth:`adapt_plans`, nnU-Net's
    ``__init__``, :meth:`after_init`. Mixins derive from it and come before
    ``nnUNetTrainer`` in the bases, so this ``__init__`` runs once, last before nnU-Net's."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's default
    ) -> None:
        plans = self.adapt_plans(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.after_init()

    def adapt_plans(self, plans: dict, configuration: str) -> dict:
        """The plans nnU-Net's ``__init__`` gets (a copy when changed; ``plans`` itself is
        not modified). The default returns ``plans``."""
        return plans

    def after_init(self) -> None:
        """Runs after nnU-Net's ``__init__`` (which sets the training length, the
        deep-supervision flag, ...). The default does nothing."""
