"""Per-epoch state of the PDE blocks during training: gate, time step, contribution.

:class:`PDEDiagnosticsMixin` makes every training of a network with PDE blocks report, once
per epoch and per block,

* ``pde_<block>_gamma_abs_mean`` and ``pde_<block>_gamma_abs_max``: mean and max of
  ``|gamma|`` over the channels (the gate, 0 at initialisation: the block is the identity);
* ``pde_<block>_tau``: the learned time step ``block.tau()``;
* ``pde_<block>_contribution``: ``||y - x|| / ||x||`` of the block's output ``y`` and input
  ``x``, averaged over the epoch's training batches (0 while the gate is closed),

where ``<block>`` is ``stage<s>`` for the block after encoder stage ``s``. The values go to
nnU-Net's logger (so into the checkpoint's ``logging`` entry, and to wandb when nnU-Net's
wandb logging is on), one line per block to the training log, and a plot to
``progress_pde_blocks.png`` next to nnU-Net's ``progress.png``. A network without blocks
logs nothing.

Cost: the blocks record the contribution in their forward as a detached 0-d tensor
(:attr:`~nnunet_pde.pde.PDEBlock.record_diagnostics`); the mixin sums it on the device
after each step and reads it back once per epoch, so no step waits for the device.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar

import numpy as np
import torch

from nnunet_pde.formats import block_log_keys, diagnostics_from_logging
from nnunet_pde.network import pde_blocks
from nnunet_pde.pde import PDEBlock
from nnunet_pde.training.logged_series import pad_logged_series

#: Name of the plot written into the fold folder.
PLOT_NAME = "progress_pde_blocks.png"


def block_labels(names: list[str]) -> dict[str, str]:
    """Short, key-safe label of every block name: ``encoder.stages.3.pde`` -> ``stage3``
    (also for ResEnc's ``encoder.stages.3.blocks.pde``); names without a stage index, or
    whose labels would collide, use the name with ``.`` replaced by ``_``."""
    labels = {}
    for name in names:
        match = re.search(r"(?:^|\.)stages\.(\d+)(?:\.|$)", name)
        labels[name] = f"stage{match.group(1)}" if match else name.replace(".", "_")
    if len(set(labels.values())) != len(labels):
        labels = {name: name.replace(".", "_") for name in names}
    return labels


def block_state(block: PDEBlock) -> dict[str, float]:
    """``gamma_abs_mean``, ``gamma_abs_max`` and ``tau`` of a block, as floats."""
    with torch.no_grad():
        gamma = block.gate().detach().abs().double()
        return {
            "gamma_abs_mean": float(gamma.mean()),
            "gamma_abs_max": float(gamma.max()),
            "tau": float(block.tau().detach()),
        }


class PDEDiagnosticsMixin:
    """Log the state of every PDE block once per epoch (see the module docstring).

    ``pde_diagnostics = False`` switches it off. Put it before ``nnUNetTrainer`` in the
    bases; it uses ``self.network``, ``self.logger``, ``self.current_epoch``,
    ``self.print_to_log_file``, ``self.is_ddp``, ``self.local_rank``, ``self.output_folder``.
    """

    pde_diagnostics: ClassVar[bool] = True

    def _pde_diagnostic_blocks(self) -> dict[str, PDEBlock]:
        if not self.pde_diagnostics:
            return {}
        blocks = getattr(self, "_pde_diag_blocks", None)
        if blocks is None:
            network = getattr(self, "network", None)
            if network is None:  # before initialize(): nothing to cache yet
                return {}
            blocks = pde_blocks(network)
            self._pde_diag_blocks = blocks
            self._pde_diag_labels = block_labels(list(blocks))
        return blocks

    def _pde_diagnostic_keys(self) -> list[str]:
        keys = []
        for name in self._pde_diagnostic_blocks():
            keys.extend(block_log_keys(self._pde_diag_labels[name]).values())
        return keys

    def _reset_pde_contributions(self) -> None:
        self._pde_contrib_sum: dict[str, torch.Tensor] = {}
        self._pde_contrib_count: dict[str, int] = {}

    def on_train_start(self):
        super().on_train_start()
        self._pde_diag_blocks = None  # the network exists now (initialize())
        blocks = self._pde_diagnostic_blocks()
        for block in blocks.values():
            block.record_diagnostics = True
        pad_logged_series(self.logger, self._pde_diagnostic_keys(), self.current_epoch)
        self._reset_pde_contributions()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._reset_pde_contributions()

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if not hasattr(self, "_pde_contrib_sum"):
            self._reset_pde_contributions()
        for name, block in self._pde_diagnostic_blocks().items():
            value = block.last_contribution
            if value is None:
                continue
            block.last_contribution = None
            # stays on the device: no synchronisation per step
            total = self._pde_contrib_sum.get(name)
            self._pde_contrib_sum[name] = value if total is None else total + value
            self._pde_contrib_count[name] = self._pde_contrib_count.get(name, 0) + 1
        return out

    def _epoch_contributions(self, names: list[str]) -> dict[str, float]:
        """Mean recorded contribution of each block over this epoch's steps (all ranks);
        NaN for a block that recorded nothing. One read-back from the device per block."""
        sums = getattr(self, "_pde_contrib_sum", {})
        counts = getattr(self, "_pde_contrib_count", {})
        local = {n: (float(sums[n]), counts[n]) if n in sums else (0.0, 0) for n in names}
        if self.is_ddp:
            import torch.distributed as dist

            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        out = {}
        for n in names:
            total = sum(g[n][0] for g in gathered)
            count = sum(g[n][1] for g in gathered)
            out[n] = total / count if count else float("nan")
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        blocks = self._pde_diagnostic_blocks()
        if blocks:
            contributions = self._epoch_contributions(list(blocks))
        for name, block in blocks.items():
            label = self._pde_diag_labels[name]
            values = dict(block_state(block), contribution=contributions[name])
            for quantity, key in block_log_keys(label).items():
                self.logger.log(key, values[quantity], self.current_epoch)
            self.print_to_log_file(
                f"PDE block {label} ({name}): |gamma| mean {values['gamma_abs_mean']:.4g} "
                f"max {values['gamma_abs_max']:.4g}, tau {values['tau']:.4g}, "
                f"contribution ||y-x||/||x|| {values['contribution']:.4g}"
            )
        self._reset_pde_contributions()

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0 and self._pde_diagnostic_blocks():
            logged = self.logger.local_logger.my_fantastic_logging
            plot_block_diagnostics(
                diagnostics_from_logging(
                    {k: logged[k] for k in self._pde_diagnostic_keys() if k in logged}
                ),
                os.path.join(self.output_folder, PLOT_NAME),
            )


def plot_block_diagnostics(series: dict[str, dict[str, list[float]]], path: str) -> None:
    """Plot :func:`diagnostics_from_logging`'s series per epoch into ``path`` (PNG): one
    panel for ``|gamma|`` (mean solid, max dashed), one for ``tau``, one for the
    contribution, one line per block."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    panels = [
        ("|gamma| (mean solid, max dashed)", ("gamma_abs_mean", "gamma_abs_max")),
        ("tau [(finest voxel)^2]", ("tau",)),
        ("contribution ||y-x|| / ||x||", ("contribution",)),
    ]
    # nnU-Net's own progress plot changes the global seaborn style; use matplotlib's
    with plt.style.context("default"):
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 9), sharex=True)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, (ylabel, quantities) in zip(axes, panels, strict=True):
            for i, (label, by_quantity) in enumerate(series.items()):
                for quantity in quantities:
                    v = np.asarray(by_quantity.get(quantity, []), dtype=float)
                    if not np.any(np.isfinite(v)):
                        continue
                    ax.plot(
                        np.arange(len(v)),
                        v,
                        color=colours[i % len(colours)],
                        ls="--" if quantity.endswith("_max") else "-",
                        marker="." if len(v) < 30 else None,
                        linewidth=2,
                        label=label if quantity == quantities[0] else None,
                    )
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left")
        axes[-1].set_xlabel("epoch")
        axes[0].set_title("PDE blocks (per epoch; contribution averaged over training batches)")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


__all__ = [
    "PLOT_NAME",
    "PDEDiagnosticsMixin",
    "block_labels",
    "block_state",
    "plot_block_diagnostics",
]
