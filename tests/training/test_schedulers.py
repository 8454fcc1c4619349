"""The AdamW schedule: linear warm-up then cosine annealing, at known epochs."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_pde.training.schedulers import WarmupCosineLRScheduler


def _scheduler(max_steps: int = 20, warmup: int = 2) -> tuple[torch.optim.Optimizer, object]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    return opt, WarmupCosineLRScheduler(opt, 1e-3, max_steps, warmup)


@pytest.mark.parametrize(
    "epoch,expected",
    [
        (0, 0.5e-3),  # warm-up: (e + 1) / warmup of the peak
        (1, 1.0e-3),
        (2, 1.0e-3),  # cosine starts at the peak ...
        (11, 0.5e-3),  # ... is at half of it half-way (t = 9 / 18) ...
        (20, 0.0),  # ... and reaches min_lr = 0 at the end
        (6, 1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 18))),
        (17, 1e-3 * 0.5 * (1 + math.cos(math.pi * 15 / 18))),
    ],
)
def test_learning_rate_at_known_epochs(epoch: int, expected: float) -> None:
    """Fails if the cosine is inverted, shifted by the warm-up, or the warm-up is skipped."""
    opt, sched = _scheduler()
    assert sched.lr_at(epoch) == pytest.approx(expected, abs=1e-12)
    sched.step(epoch)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_stepping_without_an_epoch_walks_the_same_curve() -> None:
    """Construction applies epoch 0 (as torch schedulers do); each step() the next epoch."""
    opt, sched = _scheduler(10, 1)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(9):
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([sched.lr_at(e) for e in range(10)])
    assert all(a >= b for a, b in zip(seen[1:], seen[2:], strict=False))  # decreasing after warm-up
