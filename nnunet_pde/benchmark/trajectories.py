"""The PDE blocks' per-epoch state across a benchmark grid: gate, time step, contribution.

Every training of a trainer with PDE blocks logs, once per epoch and per block, the mean and
max of ``|gamma|``, ``tau`` and the contribution ``||y - x|| / ||x||``
(:mod:`nnunet_pde.formats`, ``pde_<block>_<quantity>``); nnU-Net stores its logger in every
checkpoint. :func:`read_trajectories` collects them from the ``checkpoint_final.pth`` of each
finished (trainer, run, fold), so that ``benchmark report`` can show how the gates of
repeated trainings moved (:data:`TRAJECTORIES_CSV`, :data:`TRAJECTORIES_PNG`). Trainers
without blocks, and folds not finished, contribute nothing.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.writers import short_trainer
from nnunet_pde.folders import fold_dir
from nnunet_pde.formats import QUANTITIES, diagnostics_from_logging

__all__ = [
    "TRAJECTORIES_CSV",
    "TRAJECTORIES_PNG",
    "TRAJECTORY_COLUMNS",
    "read_trajectories",
    "trajectories_png",
]

#: Written by ``benchmark report`` when some trainer's checkpoints hold block diagnostics.
TRAJECTORIES_CSV = "block_trajectories.csv"
TRAJECTORIES_PNG = "block_trajectories.png"

#: Columns of :data:`TRAJECTORIES_CSV`: one row per (trainer, run, fold, block, epoch).
TRAJECTORY_COLUMNS = ("trainer", "run", "fold", "block", "epoch", *QUANTITIES)


def _checkpoint_logging(path: Path) -> dict | None:
    """The ``logging`` entry of an nnU-Net checkpoint (its logger's per-epoch lists)."""
    import torch

    # nnU-Net's logger holds numpy scalars, which weights_only=True refuses; these are the
    # user's own results, read as nnUNetv2_train itself reads them
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging") if isinstance(checkpoint, dict) else None
    return logging if isinstance(logging, dict) else None


def read_trajectories(
    roots: Mapping[int, str | os.PathLike[str]],
    dataset: str,
    trainers: Sequence[str],
    folds: Sequence[int],
    plans: str = "nnUNetPlans",
    configuration: str = "3d_fullres",
    warn: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of :data:`TRAJECTORY_COLUMNS` from ``checkpoint_final.pth`` of every
    (run, trainer, fold): ``roots`` maps a run index to its results root
    (:func:`nnunet_pde.benchmark.runs.run_results`). Values are floats, NaN for an epoch
    without a value (a training resumed from a checkpoint that predates the diagnostics).

    A checkpoint that cannot be read is left out and named through ``warn``: the
    trajectories are a side view, and the metrics of a report do not depend on them."""
    rows: list[dict[str, Any]] = []
    for run, root in roots.items():
        for trainer in trainers:
            for fold in folds:
                path = (
                    fold_dir(root, dataset, trainer, plans, configuration, fold)
                    / "checkpoint_final.pth"
                )
                if not path.is_file():
                    continue
                try:
                    logging = _checkpoint_logging(path)
                except Exception as exc:  # any unpickling / archive error: leave it out
                    if warn is not None:
                        warn(
                            f"block trajectories: {path} could not be read "
                            f"({type(exc).__name__}: {exc}); left out"
                        )
                    continue
                series = diagnostics_from_logging(logging)
                for block, by_quantity in series.items():
                    epochs = max((len(v) for v in by_quantity.values()), default=0)
                    for epoch in range(epochs):
                        row: dict[str, Any] = {
                            "trainer": trainer,
                            "run": int(run),
                            "fold": int(fold),
                            "block": block,
                            "epoch": epoch,
                        }
                        for q in QUANTITIES:
                            values = by_quantity.get(q, [])
                            row[q] = float(values[epoch]) if epoch < len(values) else math.nan
                        rows.append(row)
    return rows


#: (panel title, quantity) of :func:`trajectories_png`'s columns
PANELS = (
    ("mean |gamma|", "gamma_abs_mean"),
    ("max |gamma|", "gamma_abs_max"),
    ("tau [(finest voxel)^2]", "tau"),
    ("contribution ||y-x|| / ||x||", "contribution"),
)


def trajectories_png(rows: Sequence[Mapping[str, Any]], trainers: Sequence[str]) -> bytes:
    """PNG bytes: one row of panels per block (:data:`PANELS`), one colour per trainer and
    one line per (run, fold) of it, value against epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blocks = sorted({str(r["block"]) for r in rows})
    present = [t for t in trainers if any(r["trainer"] == t for r in rows)]
    fig = Figure(figsize=(4.0 * len(PANELS), 2.8 * max(1, len(blocks)) + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(blocks)), len(PANELS), squeeze=False)
    colours = [f"C{i % 10}" for i in range(len(present))]
    for i, block in enumerate(blocks):
        for j, (title, quantity) in enumerate(PANELS):
            ax = axes[i][j]
            for colour, trainer in zip(colours, present, strict=True):
                lines: dict[tuple[int, int], list[tuple[int, float]]] = {}
                for r in rows:
                    if r["trainer"] == trainer and r["block"] == block:
                        key = (int(r["run"]), int(r["fold"]))
                        lines.setdefault(key, []).append((int(r["epoch"]), float(r[quantity])))
                for k, (_, points) in enumerate(sorted(lines.items())):
                    points.sort()
                    ax.plot(
                        [p[0] for p in points],
                        [p[1] for p in points],
                        color=colour,
                        linewidth=1.2,
                        alpha=0.8,
                        label=short_trainer(trainer) if k == 0 else None,
                    )
            ax.set_title(f"{block}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(blocks) - 1:
                ax.set_xlabel("epoch")
    if present:
        axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("PDE blocks per epoch (one line per run and fold)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
