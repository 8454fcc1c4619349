"""Learning-rate schedules stepped per epoch, as nnU-Net steps its own
(``self.lr_scheduler.step(self.current_epoch)``).

:class:`EpochLRScheduler` is the base: a subclass gives the learning rate of an epoch
(:meth:`~EpochLRScheduler.lr_at`); the base sets it on every parameter group, times the
group's ``lr_scale``. :class:`WarmupCosineLRScheduler` is the paper's schedule,
:class:`EpochStepLRScheduler` the step decay of V-Net's paper.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import _LRScheduler

__all__ = ["EpochLRScheduler", "EpochStepLRScheduler", "WarmupCosineLRScheduler"]


class EpochLRScheduler(_LRScheduler):
    """A learning rate that is a function :meth:`lr_at` of the epoch, set on every parameter
    group (times the group's ``lr_scale``, 1 if absent); ``step(epoch)`` as nnU-Net calls
    it (``self.lr_scheduler.step(self.current_epoch)``), ``step()`` counts on from the last
    call. Subclasses set their attributes, then call
    ``super().__init__(optimizer)``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, step: int) -> float:
        """Learning rate of epoch ``step`` (0-based)."""
        raise NotImplementedError

    def step(self, current_step: int | None = None) -> None:  # noqa: D102 - nnU-Net's API
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:  # noqa: D102
        return self._last_lr


class WarmupCosineLRScheduler(EpochLRScheduler):
    """Linear warm-up then cosine annealing, stepped per epoch like nnU-Net's PolyLR.

    ``lr(e) = initial_lr * (e + 1) / warmup_steps`` for ``e < warmup_steps``, then
    ``min_lr + (initial_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (e - warmup_steps) / (max_steps - warmup_steps)``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        initial_lr: float,
        max_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if max_steps < 1 or not 0 <= warmup_steps <= max_steps:
            raise ValueError(
                "WarmupCosineLRScheduler needs max_steps >= 1 and 0 <= warmup_steps <= max_steps, "
                f"got max_steps={max_steps}, warmup_steps={warmup_steps}"
            )
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        self.warmup_steps = min(warmup_steps, max_steps - 1) if max_steps > 1 else 0
        self.min_lr = min_lr
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        """Learning rate of epoch ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / self.warmup_steps
        span = max(self.max_steps - self.warmup_steps, 1)
        t = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_lr + (self.initial_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class EpochStepLRScheduler(EpochLRScheduler):
    """``lr(e) = initial_lr * gamma ** (e // step_epochs)``; ``step(epoch)`` as nnU-Net
    calls it (``self.lr_scheduler.step(self.current_epoch)``)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, initial_lr: float, step_epochs: int, gamma: float
    ) -> None:
        self.initial_lr = initial_lr
        self.step_epochs = max(int(step_epochs), 1)
        self.gamma = gamma
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (0-based)."""
        return self.initial_lr * self.gamma ** (epoch // self.step_epochs)
