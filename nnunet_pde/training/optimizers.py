"""The paper's optimiser: AdamW with linear warm-up and cosine annealing, as a trainer mixin."""

from __future__ import annotations

from typing import ClassVar

import torch

from nnunet_pde.network import pde_blocks
from nnunet_pde.training.schedulers import WarmupCosineLRScheduler

__all__ = ["AdamWCosineMixin"]


class AdamWCosineMixin:
    """AdamW with linear warm-up and cosine annealing (the paper's optimiser).

    Class attributes: ``adamw_lr`` (peak learning rate), ``adamw_weight_decay``,
    ``lr_warmup_fraction`` (fraction of the epochs spent warming up, at least one epoch
    when positive). ``use_sgd = True`` falls back to nnU-Net's SGD + poly schedule.

    ``pde_lr_scale`` and ``pde_weight_decay`` put the parameters of the PDE blocks (every
    :class:`~nnunet_pde.pde.PDEBlock`: gate, time step, diffusivity, edge threshold,
    response) into a parameter group of their own, with ``pde_lr_scale`` times the learning
    rate at every epoch and that weight decay, as gating scalars often get. With the
    defaults (1 and ``None``: the network's decay) there is one group, as before.
    """

    use_sgd: ClassVar[bool] = False
    adamw_lr: ClassVar[float] = 1e-3
    adamw_weight_decay: ClassVar[float] = 1e-2
    lr_warmup_fraction: ClassVar[float] = 0.05
    pde_lr_scale: ClassVar[float] = 1.0
    pde_weight_decay: ClassVar[float | None] = None

    def optimizer_groups(self) -> list[dict]:
        """The AdamW parameter groups: one, or the PDE blocks' and the rest (see above)."""
        params = list(self.network.parameters())
        if self.pde_lr_scale == 1.0 and self.pde_weight_decay is None:
            return [{"params": params}]
        pde_ids = {id(p) for block in pde_blocks(self.network).values() for p in block.parameters()}
        pde = [p for p in params if id(p) in pde_ids]
        rest = [p for p in params if id(p) not in pde_ids]
        decay = self.adamw_weight_decay if self.pde_weight_decay is None else self.pde_weight_decay
        groups = [{"params": rest, "lr_scale": 1.0, "name": "network"}]
        if pde:
            groups.append(
                {
                    "params": pde,
                    "lr": self.adamw_lr * self.pde_lr_scale,
                    "lr_scale": float(self.pde_lr_scale),
                    "weight_decay": decay,
                    "name": "pde_blocks",
                }
            )
        return groups

    def configure_optimizers(self):
        if self.use_sgd:
            return super().configure_optimizers()
        self.initial_lr = self.adamw_lr
        self.weight_decay = self.adamw_weight_decay
        optimizer = torch.optim.AdamW(
            self.optimizer_groups(), lr=self.adamw_lr, weight_decay=self.adamw_weight_decay
        )
        warmup = 0
        if self.lr_warmup_fraction > 0:
            warmup = max(1, round(self.lr_warmup_fraction * self.num_epochs))
        scheduler = WarmupCosineLRScheduler(optimizer, self.adamw_lr, self.num_epochs, warmup)
        return optimizer, scheduler
