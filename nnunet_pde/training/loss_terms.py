"""The regularised loss of a trainer and the per-epoch log and plot of its terms.

:class:`RegularizedLossMixin` adds the PDE / TV terms of its :attr:`reg_config` to the loss
nnU-Net builds and logs every term once per epoch (:data:`LOSS_TERM_KEYS`);
:func:`plot_loss_terms` draws them into ``progress_loss_terms.png`` in the fold folder.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from nnunet_pde.losses import RegularizedSegmentationLoss, RegularizerConfig
from nnunet_pde.network import pde_blocks
from nnunet_pde.training.logged_series import pad_logged_series

__all__ = ["LOSS_TERM_KEYS", "RegularizedLossMixin", "plot_loss_terms"]

#: Logger keys of the loss terms: RegularizedSegmentationLoss.last_terms key -> logger key.
LOSS_TERM_KEYS: dict[str, str] = {
    "seg": "train_loss_seg",
    "pde": "train_loss_pde",
    "pred": "train_loss_pred",
    "tv": "train_loss_tv",
}


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
