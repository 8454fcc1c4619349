"""Trainer-side building blocks shared by the trainer classes in ``trainers/``.

Each mixin overrides one narrow nnU-Net hook and is configured by class attributes, so a
trainer variant is a few class attributes, not a copied method. Put the mixins *before*
``nnUNetTrainer`` in the bases. Nothing here imports nnunetv2: the mixins use the
trainer's attributes by name (``self.network``, ``self.loss``, ``self.logger``, ...).
The per-epoch PDE block diagnostics are :class:`.diagnostics.PDEDiagnosticsMixin`.
"""

from __future__ import annotations

import math
import os
from typing import ClassVar

import numpy as np
import torch
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_pde.losses import RegularizedSegmentationLoss, RegularizerConfig
from nnunet_pde.network import pde_blocks


class TrainingLengthMixin:
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
        if self.save_every_epochs is not None:
            self.save_every = self.save_every_epochs


class FewLabelMixin:
    """Train on a nested, seeded fraction of each fold's training cases (few-label regime).

    ``do_split`` returns nnU-Net's split with the training keys reduced to
    :func:`nnunet_pde.training.subsets.few_label_subset` of them; the validation keys
    stay the fold's full validation set, so nnU-Net's final validation scores every
    validation case. The subset is written to ``few_label_subset.json`` in the fold folder.
    ``few_label_fraction = None`` keeps the whole fold. The seed is ``few_label_seed``
    unless the environment variable ``NNUNET_PDE_FEW_LABEL_SEED`` is set.
    """

    few_label_fraction: ClassVar[float | None] = None
    few_label_seed: ClassVar[int] = 0

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        if self.few_label_fraction is None:
            return tr_keys, val_keys
        from nnunet_pde.training.subsets import (
            SEED_ENV_VAR,
            few_label_subset,
            write_subset_record,
        )

        env_seed = os.environ.get(SEED_ENV_VAR)
        try:
            seed = self.few_label_seed if env_seed in (None, "") else int(env_seed)
        except ValueError:
            raise ValueError(f"{SEED_ENV_VAR} must be an integer, got '{env_seed}'") from None
        selected = few_label_subset(tr_keys, self.few_label_fraction, seed)
        self.print_to_log_file(
            f"Few-label regime: training on {len(selected)} of {len(tr_keys)} training cases "
            f"(fraction {self.few_label_fraction:g}, seed {seed}); validating on all "
            f"{len(val_keys)} validation cases."
        )
        if self.local_rank == 0:
            write_subset_record(
                self.output_folder,
                fraction=self.few_label_fraction,
                seed=seed,
                fold=self.fold,
                train_keys=tr_keys,
                selected=selected,
                val_keys=val_keys,
                extra={"trainer": type(self).__name__},
            )
        return selected, val_keys


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


#: Logger keys of the loss terms: RegularizedSegmentationLoss.last_terms key -> logger key.
LOSS_TERM_KEYS: dict[str, str] = {
    "seg": "train_loss_seg",
    "pde": "train_loss_pde",
    "pred": "train_loss_pred",
    "tv": "train_loss_tv",
}


def pad_logged_series(logger, keys, epochs: int) -> None:
    """Give each of ``keys`` in nnU-Net's logger (``logger.local_logger``) ``epochs`` values:
    a resumed run whose checkpoint predates a key gets NaN for the epochs it missed."""
    logged = logger.local_logger.my_fantastic_logging
    for key in keys:
        values = logged.setdefault(key, [])
        values.extend([float("nan")] * (epochs - len(values)))


class RegularizedLossMixin:
    """Adds the PDE / TV terms of :attr:`reg_config` to the loss nnU-Net builds, and logs
    every term once per epoch through nnU-Net's logger (``train_loss_seg``,
    ``train_loss_pde``, ``train_loss_pred``, ``train_loss_tv``; they reach wandb when
    nnU-Net's wandb logging is on, and ``progress_loss_terms.png`` in the fold folder).
    """

    reg_config: ClassVar[RegularizerConfig] = RegularizerConfig()

    def _build_loss(self):
        seg_loss = super()._build_loss()
        cfg = self.reg_config
        lm = self.label_manager
        warmup = round(cfg.warmup_fraction * self.num_epochs)
        return RegularizedSegmentationLoss(
            seg_loss,
            cfg,
            spacing=self.configuration_manager.spacing,
            has_regions=lm.has_regions,
            ignore_label=lm.ignore_label,
            blocks=(lambda: pde_blocks(self.network).values()) if cfg.lambda_pde > 0 else None,
            warmup_epochs=warmup,
        )

    def _loss_log_keys(self) -> list[str]:
        return [LOSS_TERM_KEYS["seg"]] + [LOSS_TERM_KEYS[t] for t in self.reg_config.active_terms]

    def on_train_start(self):
        super().on_train_start()
        pad_logged_series(self.logger, self._loss_log_keys(), self.current_epoch)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.loss.epoch = self.current_epoch

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        for term, value in self.loss.last_terms.items():
            out[LOSS_TERM_KEYS[term]] = np.float32(value)
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        for key in self._loss_log_keys():
            values = [o[key] for o in train_outputs if key in o]
            mean = float(np.mean(values)) if values else float("nan")
            if self.is_ddp:
                import torch.distributed as dist

                gathered: list = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, mean)
                mean = float(np.nanmean(gathered))
            self.logger.log(key, mean, self.current_epoch)

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            logged = self.logger.local_logger.my_fantastic_logging
            plot_loss_terms(
                {k: logged[k] for k in self._loss_log_keys() if k in logged},
                os.path.join(self.output_folder, "progress_loss_terms.png"),
            )


def plot_loss_terms(series: dict[str, list[float]], path: str) -> None:
    """Plot each loss term per epoch (log scale) into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    # nnU-Net's own progress plot changes the global seaborn style; use matplotlib's
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(10, 5))
        for key, values in series.items():
            v = np.asarray(values, dtype=float)
            if np.any(np.isfinite(v) & (v > 0)):
                ax.plot(np.arange(len(v)), np.where(v > 0, v, np.nan), label=key, linewidth=2)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean over the epoch")
        ax.set_title("training loss terms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
