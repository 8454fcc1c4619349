"""Per-epoch series of every finished training of a benchmark grid, read from nnU-Net's
checkpoints: the PDE blocks' state and the training curves.

nnU-Net stores its logger (one list per key, one entry per epoch) in every checkpoint.
:func:`read_logs` collects it from the ``checkpoint_final.pth`` of each finished (trainer,
run, fold), once; from those logs

* :func:`trajectory_rows`: every block's mean and max ``|gamma|``, ``tau`` and contribution
  ``||y - x|| / ||x||`` per epoch (:mod:`nnunet_pde.formats`, ``pde_<block>_<quantity>``),
  for trainers with PDE blocks (:data:`TRAJECTORIES_CSV`, :data:`TRAJECTORIES_PNG`);
* :func:`curve_rows`: nnU-Net's own curves per epoch, the training and validation losses
  and the pseudo Dice with its moving average (:data:`CURVES_CSV`, :data:`CURVES_PNG`), and
  :func:`plateau_rows`, one line per training with the trend of its pseudo Dice over the last
  half of its epochs and that trend's standard error: whether a schedule trained to a
  plateau.

Folds not finished contribute nothing.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.writers import short_trainer
from nnunet_pde.folders import fold_dir
from nnunet_pde.formats import QUANTITIES, diagnostics_from_logging

__all__ = [
    "checkpoint_logging",
    "CURVES_CSV",
    "CURVES_PNG",
    "CURVE_COLUMNS",
    "PLATEAU_COLUMNS",
    "TRAJECTORIES_CSV",
    "TRAJECTORIES_PNG",
    "TRAJECTORY_COLUMNS",
    "FoldLog",
    "curve_rows",
    "curves_png",
    "plateau_rows",
    "read_logs",
    "trajectory_rows",
    "trajectories_png",
]

#: Written by ``benchmark report`` when some trainer's checkpoints hold block diagnostics.
TRAJECTORIES_CSV = "block_trajectories.csv"
TRAJECTORIES_PNG = "block_trajectories.png"

#: Columns of :data:`TRAJECTORIES_CSV`: one row per (trainer, run, fold, block, epoch).
TRAJECTORY_COLUMNS = ("trainer", "run", "fold", "block", "epoch", *QUANTITIES)

#: Written by ``benchmark report`` when some finished training's checkpoint holds a logger.
CURVES_CSV = "training_curves.csv"
CURVES_PNG = "training_curves.png"

#: Column of :data:`CURVES_CSV` -> nnU-Net's logger key (nnunetv2 2.8.1, ``nnUNetLogger``)
CURVE_KEYS = {
    "train_loss": "train_losses",
    "val_loss": "val_losses",
    "pseudo_dice": "mean_fg_dice",
    "ema_pseudo_dice": "ema_fg_dice",
}

#: Columns of :data:`CURVES_CSV`: one row per (trainer, run, fold, epoch).
CURVE_COLUMNS = ("trainer", "run", "fold", "epoch", *CURVE_KEYS)

#: Columns of :func:`plateau_rows`: one row per training.
PLATEAU_COLUMNS = (
    "trainer",
    "run",
    "fold",
    "epochs",
    "final_ema_pseudo_dice",
    "best_ema_pseudo_dice",
    "late_rise",
    "late_rise_se",
)


@dataclass(frozen=True)
class FoldLog:
    """nnU-Net's logger of one finished training: ``logging`` maps a key to its per-epoch
    list, as ``checkpoint_final.pth`` stores it."""

    trainer: str
    run: int
    fold: int
    logging: Mapping[str, Any]


def checkpoint_logging(path: Path) -> dict | None:
    """The ``logging`` entry of an nnU-Net checkpoint (its logger's per-epoch lists)."""
    import torch

    # nnU-Net's logger holds numpy scalars, which weights_only=True refuses; these are the
    # user's own results, read as nnUNetv2_train itself reads them
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging") if isinstance(checkpoint, dict) else None
    return logging if isinstance(logging, dict) else None


def read_logs(
    roots: Mapping[int, str | os.PathLike[str]],
    dataset: str,
    trainers: Sequence[str],
    folds: Sequence[int],
    plans: str = "nnUNetPlans",
    configuration: str = "3d_fullres",
    warn: Callable[[str], None] | None = None,
) -> list[FoldLog]:
    """The logger of ``checkpoint_final.pth`` of every (run, trainer, fold) that has one,
    each checkpoint read once: ``roots`` maps a run index to its results root
    (:func:`nnunet_pde.benchmark.runs.run_results`).

    A checkpoint that cannot be read is left out and named through ``warn``: the series are
    a side view, and the metrics of a report do not depend on them."""
    logs: list[FoldLog] = []
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
                    logging = checkpoint_logging(path)
                except Exception as exc:  # any unpickling / archive error: leave it out
                    if warn is not None:
                        warn(
                            f"training logs: {path} could not be read "
                            f"({type(exc).__name__}: {exc}); left out"
                        )
                    continue
                if logging is not None:
                    logs.append(FoldLog(trainer, int(run), int(fold), logging))
    return logs


def _value(values: Sequence[Any], epoch: int) -> float:
    """``values[epoch]`` as a float; NaN where the list is shorter or the entry is not a
    number (nnU-Net logs numpy scalars)."""
    try:
        return float(values[epoch]) if epoch < len(values) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _epoch_rows(
    log: FoldLog, series: Mapping[str, Sequence[Any]], **keys: Any
) -> list[dict[str, Any]]:
    """One row per epoch of ``series`` (column -> per-epoch list; as many epochs as the
    longest, NaN where a list is shorter), led by the log's trainer, run and fold and
    ``keys``."""
    epochs = max((len(v) for v in series.values()), default=0)
    return [
        {
            "trainer": log.trainer,
            "run": log.run,
            "fold": log.fold,
            **keys,
            "epoch": epoch,
            **{col: _value(values, epoch) for col, values in series.items()},
        }
        for epoch in range(epochs)
    ]


def trajectory_rows(logs: Sequence[FoldLog]) -> list[dict[str, Any]]:
    """Rows of :data:`TRAJECTORY_COLUMNS`, in the order of ``logs``, blocks sorted. Values
    are floats, NaN for an epoch without a value (a training resumed from a checkpoint that
    predates the diagnostics). Logs without block keys (trainers without blocks) give
    none."""
    rows: list[dict[str, Any]] = []
    for log in logs:
        for block, by_quantity in diagnostics_from_logging(dict(log.logging)).items():
            series = {q: by_quantity.get(q, []) for q in QUANTITIES}
            rows += _epoch_rows(log, series, block=block)
    return rows


def curve_rows(logs: Sequence[FoldLog]) -> list[dict[str, Any]]:
    """Rows of :data:`CURVE_COLUMNS`, one per epoch of every log (as many epochs as its
    longest curve; NaN where a curve has no value)."""
    rows: list[dict[str, Any]] = []
    for log in logs:
        series = {col: list(log.logging.get(key) or []) for col, key in CURVE_KEYS.items()}
        rows += _epoch_rows(log, series)
    return rows


def _late_trend(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through the last half of ``values`` (one per epoch, at least 3
    points): its rise across that window (slope times the window's span in epochs) and the
    standard error of that rise. NaN, NaN with fewer than 6 values."""
    n = len(values) - len(values) // 2
    if len(values) < 6:
        return math.nan, math.nan
    ys = list(values[-n:])
    xs = list(range(n))
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    se = math.sqrt(sum(r * r for r in resid) / (n - 2) / sxx)
    return slope * (n - 1), se * (n - 1)


def plateau_rows(curves: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row of :data:`PLATEAU_COLUMNS` per training in ``curves`` (rows of
    :data:`CURVE_COLUMNS`), in their order: the moving-average pseudo Dice at the end and at
    its best, and the trend of the per-epoch pseudo Dice over the last half of the epochs
    (:func:`_late_trend`: the rise of a fitted line across that window and its standard
    error). A late rise within about two standard errors of zero means the curve had
    flattened; the moving average itself lags (it keeps 0.9 of its last value per epoch), so
    its own late rise is no test. NaN where a training has fewer than 6 epochs."""
    by_training: dict[tuple[str, int, int], list[Mapping[str, Any]]] = {}
    for r in curves:
        by_training.setdefault((str(r["trainer"]), int(r["run"]), int(r["fold"])), []).append(r)
    out: list[dict[str, Any]] = []
    for (trainer, run, fold), rows in by_training.items():
        rows = sorted(rows, key=lambda r: int(r["epoch"]))
        ema = [v for v in (float(r["ema_pseudo_dice"]) for r in rows) if math.isfinite(v)]
        raw = [v for v in (float(r["pseudo_dice"]) for r in rows) if math.isfinite(v)]
        rise, se = _late_trend(raw)
        out.append(
            {
                "trainer": trainer,
                "run": run,
                "fold": fold,
                "epochs": len(rows),
                "final_ema_pseudo_dice": ema[-1] if ema else math.nan,
                "best_ema_pseudo_dice": max(ema) if ema else math.nan,
                "late_rise": rise,
                "late_rise_se": se,
            }
        )
    return out


#: (panel title, quantity) of :func:`trajectories_png`'s columns
PANELS = (
    ("mean |gamma|", "gamma_abs_mean"),
    ("max |gamma|", "gamma_abs_max"),
    ("tau [(finest voxel)^2]", "tau"),
    ("contribution ||y-x|| / ||x||", "contribution"),
)


def _figure(rows: int, cols: int):
    """A matplotlib figure of ``rows x cols`` panels (Agg canvas, no pyplot state) and its
    axes grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * cols, 2.8 * rows + 0.8))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _plot_lines(
    ax,
    rows: Sequence[Mapping[str, Any]],
    trainers: Sequence[str],
    quantity: str,
    labels: bool = True,
    **style: Any,
) -> None:
    """``quantity`` against epoch on ``ax``: one colour per trainer (in the order of
    ``trainers``), one line per (run, fold) of it; the first line of each trainer labelled
    with its short name when ``labels``."""
    for i, trainer in enumerate(trainers):
        lines: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for r in rows:
            if r["trainer"] == trainer:
                key = (int(r["run"]), int(r["fold"]))
                lines.setdefault(key, []).append((int(r["epoch"]), float(r[quantity])))
        for k, (_, points) in enumerate(sorted(lines.items())):
            points.sort()
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=f"C{i % 10}",
                label=short_trainer(trainer) if labels and k == 0 else None,
                **{"linewidth": 1.2, "alpha": 0.8, **style},
            )


def trajectories_png(rows: Sequence[Mapping[str, Any]], trainers: Sequence[str]) -> bytes:
    """PNG bytes: one row of panels per block (:data:`PANELS`), one colour per trainer and
    one line per (run, fold) of it, value against epoch."""
    blocks = sorted({str(r["block"]) for r in rows})
    present = [t for t in trainers if any(r["trainer"] == t for r in rows)]
    fig, axes = _figure(max(1, len(blocks)), len(PANELS))
    for i, block in enumerate(blocks):
        of_block = [r for r in rows if r["block"] == block]
        for j, (title, quantity) in enumerate(PANELS):
            ax = axes[i][j]
            _plot_lines(ax, of_block, present, quantity)
            ax.set_title(f"{block}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(blocks) - 1:
                ax.set_xlabel("epoch")
    if present:
        axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("PDE blocks per epoch (one line per run and fold)", fontsize=11)
    return _png(fig)


def curves_png(rows: Sequence[Mapping[str, Any]], trainers: Sequence[str]) -> bytes:
    """PNG bytes of :func:`curve_rows`: training loss, validation loss and pseudo Dice (the
    moving average solid, each epoch's value faint) against epoch; one colour per trainer,
    one line per (run, fold) of it."""
    present = [t for t in trainers if any(r["trainer"] == t for r in rows)]
    fig, axes = _figure(1, 3)
    (loss, val, dice) = axes[0]
    _plot_lines(loss, rows, present, "train_loss")
    _plot_lines(val, rows, present, "val_loss")
    _plot_lines(dice, rows, present, "pseudo_dice", labels=False, linewidth=0.8, alpha=0.3)
    _plot_lines(dice, rows, present, "ema_pseudo_dice")
    for ax, title in (
        (loss, "training loss"),
        (val, "validation loss"),
        (dice, "pseudo Dice (moving average; faint: per epoch)"),
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if present:
        dice.legend(fontsize=7, loc="best")
    fig.suptitle("nnU-Net's training curves (one line per run and fold)", fontsize=11)
    return _png(fig)
