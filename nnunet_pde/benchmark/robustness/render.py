"""Markdown tables and PNG curves of the robustness report."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnunet_pde.benchmark.robustness.model import (
    Curve,
    RobustnessOutcome,
    RobustnessPlan,
)
from nnunet_pde.benchmark.writers import fmt_num, md_table, short_trainer
from nnunet_pde.metrics.info import METRIC_INFO

#: Section headings of the scanner-shift tables, by perturbation group.
_GROUP_HEADINGS = {
    "covered_by_nnunet": "Perturbations covered by nnU-Net's training augmentation",
    "not_covered_by_nnunet": "Perturbations NOT covered by nnU-Net's training augmentation",
}

# ------------------------------------------------------------------------------ rendering


def _cell(r: Mapping[str, Any], digits: int, clean_level: float) -> str:
    text = fmt_num(r["mean"], digits)
    if r["level"] == clean_level or not math.isfinite(r["drop"]):
        return text
    if r["drop_kind"] == "relative":
        return f"{text} ({-r['drop'] * 100 + 0.0:+.1f} %)"  # + 0.0: no "-0.0"
    return f"{text} ({r['drop'] + 0.0:+.{digits}f})"


def _curve_table(
    plan: RobustnessPlan,
    curve: Curve,
    metric: str,
    summary: Sequence[Mapping[str, Any]],
    auc: Sequence[Mapping[str, Any]],
) -> str:
    digits = METRIC_INFO[metric][1]
    labels = {lv: plan.conditions[(plan.trainers[0], key)].label for lv, key in curve.points}
    header = ["region", "trainer", *(labels[lv] for lv, _ in curve.points), "AUC"]
    rows = []
    regions = list(dict.fromkeys(r["region"] for r in summary))
    for region in regions:
        for t in plan.trainers:
            cells = {
                r["level"]: _cell(r, digits, plan.clean_level)
                for r in summary
                if r["curve"] == curve.id
                and r["trainer"] == t
                and r["region"] == region
                and r["metric"] == metric
            }
            a = next(
                r["auc"]
                for r in auc
                if r["curve"] == curve.id
                and r["trainer"] == t
                and r["region"] == region
                and r["metric"] == metric
            )
            rows.append(
                [region, t, *(cells.get(lv, "") for lv, _ in curve.points), fmt_num(a, digits)]
            )
    return md_table(header, rows)


def _auc_overview_table(
    plan: RobustnessPlan, curves: Sequence[Curve], metric: str, auc: Sequence[Mapping[str, Any]]
) -> str:
    digits = METRIC_INFO[metric][1]
    header = ["region", "trainer", *(c.id for c in curves)]
    rows = []
    regions = list(dict.fromkeys(r["region"] for r in auc))
    for region in regions:
        for t in plan.trainers:
            vals = {
                r["curve"]: fmt_num(r["auc"], digits)
                for r in auc
                if r["trainer"] == t and r["region"] == region and r["metric"] == metric
            }
            rows.append([region, t, *(vals.get(c.id, "") for c in curves)])
    return md_table(header, rows)


def _groups(plan: RobustnessPlan) -> list[tuple[str, list[Curve]]]:
    order: dict[str, list[Curve]] = {}
    for c in plan.curves:
        order.setdefault(c.group, []).append(c)
    return list(order.items())


def render_markdown(
    plan: RobustnessPlan,
    summary: Sequence[Mapping[str, Any]],
    auc: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
) -> str:
    """``tables.md``: per curve and metric a table (rows trainers, columns levels, then AUC)."""
    imp = meta["imputation"]
    imp_text = imp["policy"] + (
        f" ({imp['worst_value_mm']} mm)" if imp.get("worst_value_mm") is not None else ""
    )
    parts = [
        f"# {plan.title}",
        "",
        f"x axis: **{plan.axis}**; the clean point is {plan.clean_level:g}. {meta['how']}",
        "",
        "Cells: mean over cases, and in parentheses the change from the clean point: relative "
        "(%) for Dice-like metrics, absolute (mm) for distances. AUC: trapezoid area under the "
        "mean-versus-level curve over the levels shown (clean point included), divided by the "
        "span of those levels, so a flat curve has AUC = its value (same unit as the metric).",
        "",
        f"Infinite distances (one mask empty): {imp_text}; undefined values (both masks empty) "
        f"are left out. NSD tolerance {meta['tolerance_mm']:g} mm.",
        "",
    ]
    if meta["warnings"]:
        parts += ["**Warnings**", ""]
        parts += [f"- {w}" for w in meta["warnings"]]
        parts.append("")
    groups = _groups(plan)
    many = len(plan.curves) > 1
    for group, curves in groups:
        level = "##"
        if group:
            parts += [f"## {_GROUP_HEADINGS.get(group, group)}", ""]
            level = "###"
        if many:
            m = metrics[0]
            parts += [
                f"{level} AUC of {METRIC_INFO[m][0]} per curve",
                "",
                _auc_overview_table(plan, curves, m, auc),
                "",
            ]
        for curve in curves:
            parts += [f"{level} {curve.title}", ""]
            for m in metrics:
                name, _, direction = METRIC_INFO[m]
                parts += [
                    f"{level}# {name}" + (f" ({direction})" if direction else ""),
                    "",
                    _curve_table(plan, curve, m, summary, auc),
                    "",
                ]
                rows = [r for r in summary if r["curve"] == curve.id and r["metric"] == m]
                n_imp = sum(int(r["n_imputed"]) for r in rows)
                n_exc = sum(int(r["n_excluded"]) for r in rows)
                if n_imp or n_exc:
                    parts += [
                        f"Over all cells: {n_imp} infinite value(s) imputed, {n_exc} value(s) "
                        "left out (per cell: n_imputed, n_excluded in summary.csv).",
                        "",
                    ]
    return "\n".join(parts)


def curve_png(
    plan: RobustnessPlan, curve: Curve, metric: str, summary: Sequence[Mapping[str, Any]]
) -> bytes:
    """PNG bytes: mean ± SD of ``metric`` versus level, one line per trainer, one panel per region.

    Uses matplotlib's object API with the Agg canvas (no global pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in summary if r["curve"] == curve.id and r["metric"] == metric]
    regions = list(dict.fromkeys(r["region"] for r in rows))
    fig = Figure(figsize=(1.0 + 3.6 * len(regions), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(regions), squeeze=False)[0]
    name = METRIC_INFO[metric][0]
    levels = [lv for lv, _ in curve.points]
    for ax, region in zip(axes, regions, strict=True):
        for t in plan.trainers:
            rr = sorted(
                (r for r in rows if r["trainer"] == t and r["region"] == region),
                key=lambda r: r["level"],
            )
            x = [r["level"] for r in rr]
            y = np.asarray([r["mean"] for r in rr], dtype=np.float64)
            sd = np.nan_to_num(np.asarray([r["sd"] for r in rr], dtype=np.float64))
            ax.errorbar(x, y, yerr=sd, marker="o", capsize=3, label=short_trainer(t), alpha=0.9)
        if len(levels) <= 8:
            ax.set_xticks(levels)
            ax.set_xticklabels([f"{lv:g}" for lv in levels], fontsize=8)
        ax.set_title(region, fontsize=10)
        ax.set_xlabel(plan.axis, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{name} (mean ± SD)")
    axes[-1].legend(fontsize=7)
    fig.suptitle(curve.title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def format_auc_overview(outcome: RobustnessOutcome, metric: str | None = None) -> str:
    """Text lines: AUC of ``metric`` (default: the first) per curve, trainer and region."""
    metric = metric or outcome.meta["metrics"][0]
    digits = METRIC_INFO[metric][1]
    lines = [f"AUC of {METRIC_INFO[metric][0]} (x axis: {outcome.meta['axis']}):"]
    rows = [r for r in outcome.auc if r["metric"] == metric]
    width = max((len(f"{r['curve']}  {r['trainer']}  {r['region']}") for r in rows), default=0)
    for r in rows:
        head = f"{r['curve']}  {r['trainer']}  {r['region']}"
        lines.append(f"  {head.ljust(width)}  {fmt_num(r['auc'], digits)}")
    return "\n".join(lines)
