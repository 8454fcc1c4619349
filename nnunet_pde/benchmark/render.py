"""Tables (Markdown, LaTeX), box plots and the HTML page of ``benchmark report``."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnunet_pde.benchmark.pooling import metric_values
from nnunet_pde.benchmark.stats import format_p
from nnunet_pde.benchmark.writers import fmt_num, md_table, regions_in_order, short_trainer
from nnunet_pde.metrics import ImputationPolicy
from nnunet_pde.metrics.info import METRIC_INFO

# ------------------------------------------------------------------------------ tables


def _mean_sd(r: Mapping[str, Any], digits: int, pm: str = " ± ") -> str:
    text = fmt_num(r["mean"], digits)
    if math.isfinite(r["sd"]):
        text += f"{pm}{fmt_num(r['sd'], digits)}"
    return text


def _notes(r: Mapping[str, Any]) -> str:
    notes = []
    if r["n_imputed"]:
        notes.append(f"{r['n_imputed']} imputed")
    if r["n_excluded"]:
        notes.append(f"{r['n_excluded']} excluded")
    return ", ".join(notes)


TABLE_HEADER = (
    "region",
    "trainer",
    "n",
    "mean ± SD",
    "95% CI",
    "Δ vs ref",
    "p",
    "p (Holm)",
    "notes",
)


def table_rows(summary: Sequence[Mapping[str, Any]], metric: str) -> list[list[str]]:
    """The cells of one metric's table, in :data:`TABLE_HEADER` order (plain text)."""
    digits = METRIC_INFO.get(metric, (metric, 3, ""))[1]
    out = []
    for r in summary:
        if r["metric"] != metric:
            continue
        is_ref = r["trainer"] == r["reference"]
        out.append(
            [
                str(r["region"]),
                str(r["trainer"]),
                str(r["n"]),
                _mean_sd(r, digits),
                f"[{fmt_num(r['ci_low'], digits)}, {fmt_num(r['ci_high'], digits)}]",
                "reference"
                if is_ref
                else f"{r['mean_difference']:+.{digits}f}"
                if math.isfinite(r["mean_difference"])
                else "n/a",
                "" if is_ref else format_p(r["p_value"]),
                "" if is_ref else format_p(r["p_holm"]),
                _notes(r),
            ]
        )
    return out


RUN_TABLE_HEADER = (
    "region",
    "trainer",
    "runs",
    "run means",
    "mean ± between-run SD",
    "Δ vs ref ± SE (runs)",
    "p (Welch, runs)",
    "p (Holm)",
    "beyond the spread",
)


def run_spread_rows_text(runs: Sequence[Mapping[str, Any]], metric: str) -> list[list[str]]:
    """The cells of one metric's between-run table (:data:`RUN_TABLE_HEADER` order)."""
    digits = METRIC_INFO.get(metric, (metric, 3, ""))[1]
    out = []
    for r in runs:
        if r["metric"] != metric:
            continue
        is_ref = r["trainer"] == r["reference"]
        sd = f" ± {fmt_num(r['run_sd'], digits)}" if math.isfinite(r["run_sd"]) else ""
        diff = ""
        if not is_ref and math.isfinite(r["run_difference"]):
            diff = f"{r['run_difference']:+.{digits}f}"
            if math.isfinite(r["run_difference_se"]):
                diff += f" ± {fmt_num(r['run_difference_se'], digits)}"
        verdict = {True: "yes", False: "no", None: ""}[r["exceeds_spread"]]
        out.append(
            [
                str(r["region"]),
                short_trainer(str(r["trainer"])) + (" (ref)" if is_ref else ""),
                str(r["n_runs"]),
                ", ".join(fmt_num(v, digits) for v in r["run_means"]),
                fmt_num(r["run_mean"], digits) + sd,
                diff,
                "" if is_ref else format_p(r["p_runs"]),
                "" if is_ref else format_p(r["p_runs_holm"]),
                "" if is_ref else verdict,
            ]
        )
    return out


def run_spread_lines(runs: Sequence[Mapping[str, Any]] | None, metric: str) -> list[str]:
    """Plain-text lines of one metric's between-run table (nothing for a single run)."""
    if not runs or max(int(r["n_runs"]) for r in runs) < 2:
        return []
    rows = [list(RUN_TABLE_HEADER), *run_spread_rows_text(runs, metric)]
    width = [max(len(r[i]) for r in rows) for i in range(len(RUN_TABLE_HEADER))]
    name = METRIC_INFO.get(metric, (metric, 3, ""))[0]
    return [f"\n{name} over repeated runs (case means per run; spread between runs):"] + [
        "  " + "  ".join(r[i].ljust(width[i]) for i in range(len(r))) for r in rows
    ]


def _per_fold_table(
    per_fold: Sequence[Mapping[str, Any]], metrics: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    header = ["region", "trainer", "fold", "cases"] + [
        METRIC_INFO.get(m, (m, 3, ""))[0] for m in metrics
    ]
    rows = [
        [str(r["region"]), str(r["trainer"]), str(r["fold"]), str(r["n_cases"])]
        + [fmt_num(r[f"{m}_mean"], METRIC_INFO.get(m, (m, 3, ""))[1]) for m in metrics]
        for r in per_fold
    ]
    return header, rows


def _context_lines(meta: Mapping[str, Any]) -> list[str]:
    imp = meta["imputation"]
    imp_text = imp["policy"] + (
        f" ({imp['worst_value_mm']} mm)" if imp.get("worst_value_mm") is not None else ""
    )
    lines = [
        f"Dataset {meta['dataset']}, configuration {meta['configuration']}, plans "
        f"{meta['plans']}; folds {', '.join(str(f) for f in meta['folds'])}; out-of-fold "
        f"predictions pooled over folds (each case once).",
        f"Mean ± SD over cases; {meta['confidence'] * 100:g}% CI: percentile bootstrap of the mean "
        f"({meta['n_bootstrap']} case resamples, seed {meta['seed']}). Δ vs ref: mean paired "
        f"difference (trainer − {meta['reference']}); p: two-sided Wilcoxon signed-rank test vs "
        f"{meta['reference']} on the cases both have a value for; p (Holm): Holm-corrected over "
        "the trainers within each region and metric.",
        f"Infinite distances (one mask empty): {imp_text}; undefined values (both masks empty) "
        f"are left out. NSD tolerance {meta['tolerance_mm']:g} mm.",
    ]
    for t, info in meta["pooling"].items():
        if info["missing_folds"]:
            lines.append(
                f"**Missing folds** for {t}: "
                + "; ".join(f"fold {k}: {why}" for k, why in info["missing_folds"].items())
            )
        for k, cases in info["missing_cases"].items():
            lines.append(
                f"**Missing cases** for {t} fold {k}: {len(cases)} ({', '.join(cases[:10])})"
            )
    return lines


def render_markdown(
    summary: Sequence[Mapping[str, Any]],
    per_fold: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]] | None = None,
    plateau: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """``tables.md``: one table per metric, the between-run tables (``runs``, when there are
    repeated runs), the per-fold means, then (``plateau``, rows of
    :func:`nnunet_pde.benchmark.trajectories.plateau_rows`) whether each training reached a
    plateau."""
    parts = [f"# Cross-validation benchmark: {meta['dataset']}", ""]
    parts += [line + "\n" for line in _context_lines(meta)]
    if runs and max(int(r["n_runs"]) for r in runs) >= 2:
        parts += [
            f"**Repeated runs**: {len(meta.get('runs', []))} run(s) per trainer. The tables "
            "below are over cases, each case's value averaged over the runs. The "
            "*between runs* tables give each run's case mean, their mean ± SD, and the "
            "difference from the reference ± its SE from the two spreads, with Welch's t test "
            "on the run means (Holm over trainers); *beyond the spread* = p (Holm) < 0.05.",
            "",
        ]
    for m in metrics:
        name, _, direction = METRIC_INFO.get(m, (m, 3, ""))
        parts += [
            f"## {name}" + (f" ({direction})" if direction else ""),
            "",
            md_table(TABLE_HEADER, table_rows(summary, m)),
            "",
        ]
        if runs and max(int(r["n_runs"]) for r in runs) >= 2:
            parts += [
                f"### {name}: between runs",
                "",
                md_table(RUN_TABLE_HEADER, run_spread_rows_text(runs, m)),
                "",
            ]
    header, rows = _per_fold_table(per_fold, metrics)
    parts += [
        "## Per-fold means (descriptive)",
        "",
        md_table(header, rows),
        "",
    ]
    if plateau:
        table = md_table(*plateau_table(plateau))
        parts += [f"## {PLATEAU_TITLE}", "", PLATEAU_TEXT, "", table, ""]
    return "\n".join(parts)


PLATEAU_TITLE = "Training curves: did each training reach a plateau?"
PLATEAU_TEXT = (
    "nnU-Net's pseudo Dice (validation patches, foreground mean) per training, from its "
    "checkpoint: the moving average (EMA) at the end and at its best, and the trend of the "
    "per-epoch pseudo Dice over the last half of the epochs: the rise of a least-squares "
    "line across that window ± its standard error. A rise within about two standard errors "
    "of zero: the curve had flattened (the EMA lags and is no such test)."
)


def plateau_table(plateau: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the plateau table (rows of
    :func:`nnunet_pde.benchmark.trajectories.plateau_rows`)."""
    header = [
        "trainer",
        "run",
        "fold",
        "epochs",
        "pseudo Dice (EMA) final",
        "best",
        "late rise ± SE",
    ]
    rows = [
        [
            str(r["trainer"]),
            str(r["run"]),
            str(r["fold"]),
            str(r["epochs"]),
            fmt_num(r["final_ema_pseudo_dice"], 3),
            fmt_num(r["best_ema_pseudo_dice"], 3),
            f"{fmt_num(r['late_rise'], 3)} ± {fmt_num(r['late_rise_se'], 3)}",
        ]
        for r in plateau
    ]
    return header, rows


def _tex_escape(s: str) -> str:
    repl = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(repl.get(ch, ch) for ch in s)


def render_latex(
    summary: Sequence[Mapping[str, Any]],
    per_fold: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
) -> str:
    """``tables.tex``: booktabs tables (``\\usepackage{booktabs}``), one per metric."""
    out = [
        "% nnunet-pde benchmark report; needs \\usepackage{booktabs}",
        f"% dataset {_tex_escape(str(meta['dataset']))}, reference {meta['reference']}",
    ]
    for m in metrics:
        name, digits, direction = METRIC_INFO.get(m, (m, 3, ""))
        tex_name = _tex_escape(name.replace("mm³", "MM3")).replace("MM3", "mm$^3$")
        out += [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{tex_name} "
            f"({direction}) on {_tex_escape(str(meta['dataset']))}: mean $\\pm$ SD over cases, "
            f"bootstrap {meta['confidence'] * 100:g}\\% CI, two-sided Wilcoxon signed-rank test "
            f"vs {_tex_escape(str(meta['reference']))} with Holm correction.}}",
            f"\\label{{tab:benchmark-{m.replace('_', '-')}}}",
            "\\begin{tabular}{llrllrrr}",
            "\\toprule",
            "Region & Trainer & $n$ & Mean $\\pm$ SD & 95\\% CI & $\\Delta$ & $p$ & "
            "$p_\\mathrm{Holm}$ \\\\",
            "\\midrule",
        ]
        previous = None
        for r in summary:
            if r["metric"] != m:
                continue
            if previous is not None and r["region"] != previous:
                out.append("\\midrule")
            previous = r["region"]
            is_ref = r["trainer"] == r["reference"]
            ms = fmt_num(r["mean"], digits)
            if math.isfinite(r["sd"]):
                ms += f" $\\pm$ {fmt_num(r['sd'], digits)}"
            delta = (
                "ref."
                if is_ref
                else (
                    f"{r['mean_difference']:+.{digits}f}"
                    if math.isfinite(r["mean_difference"])
                    else "n/a"
                )
            )
            p = "" if is_ref else format_p(r["p_value"]).replace("<", "$<$")
            ph = "" if is_ref else format_p(r["p_holm"]).replace("<", "$<$")
            out.append(
                f"{_tex_escape(str(r['region']))} & {_tex_escape(str(r['trainer']))} & {r['n']} & "
                f"{ms} & [{fmt_num(r['ci_low'], digits)}, {fmt_num(r['ci_high'], digits)}] & "
                f"{delta} & {p} & {ph} \\\\"
            )
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    header, rows = _per_fold_table(per_fold, metrics)
    out += [
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{Per-fold means (descriptive).}",
        "\\label{tab:benchmark-per-fold}",
        "\\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
        "\\toprule",
        " & ".join(_tex_escape(h.replace("mm³", "MM3")).replace("MM3", "mm$^3$") for h in header)
        + " \\\\",
        "\\midrule",
        *(" & ".join(_tex_escape(c) for c in row) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
        "",
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------- figures


def _panel_figure(trainers: Sequence[str], n_panels: int):
    """A Figure on the Agg canvas (no global pyplot state) with ``n_panels`` axes in one row,
    sized for one tick per trainer; (figure, axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.2 + 0.9 * len(trainers)) * n_panels / 1.5 + 1, 4.2))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def boxplot_png(
    rows: Sequence[Mapping[str, Any]],
    trainers: Sequence[str],
    metric: str,
    policy: ImputationPolicy,
) -> bytes:
    """PNG bytes: one panel per region, one box per trainer (values after imputation).

    Uses matplotlib's object API with the Agg canvas, so no global pyplot state is touched.
    """
    regions = regions_in_order(rows)
    fig, axes = _panel_figure(trainers, len(regions))
    name = METRIC_INFO.get(metric, (metric, 3, ""))[0]
    for ax, region in zip(axes, regions, strict=True):
        data = []
        for t in trainers:
            rr = [r for r in rows if r["trainer"] == t and r["region"] == region]
            v = metric_values(rr, metric, policy)
            data.append(v[np.isfinite(v)])
        ax.boxplot(data, showmeans=True, widths=0.6)
        ax.set_xticks(range(1, len(trainers) + 1))
        ax.set_xticklabels(
            [short_trainer(t) for t in trainers], rotation=30, ha="right", fontsize=8
        )
        ax.set_title(region, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(name)
    fig.suptitle(f"{name} per case (triangle: mean)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def runs_png(run_rows: Sequence[Mapping[str, Any]], trainers: Sequence[str], metric: str) -> bytes:
    """PNG bytes: one panel per region; per trainer, each run's mean over cases (dots) and
    the mean of the run means with +- 1 SD between runs (bar): the run-to-run spread that
    a difference between trainers has to exceed. ``run_rows`` are ``runs.csv``'s rows."""
    rows = [r for r in run_rows if r["metric"] == metric]
    regions = regions_in_order(rows)
    fig, axes = _panel_figure(trainers, max(1, len(regions)))
    name = METRIC_INFO.get(metric, (metric, 3, ""))[0]
    for ax, region in zip(axes, regions, strict=False):
        for x, t in enumerate(trainers, start=1):
            cell = [r for r in rows if r["trainer"] == t and r["region"] == region]
            if not cell:
                continue
            means = np.asarray(cell[0]["run_means"], dtype=np.float64)
            ax.plot(np.full(means.size, x), means, "o", color="C0", alpha=0.7)
            sd = float(cell[0]["run_sd"])
            ax.errorbar(
                x + 0.15, float(cell[0]["run_mean"]), yerr=0.0 if math.isnan(sd) else sd,
                fmt="_", color="C3", capsize=4, markersize=12,
            )  # fmt: skip
        ax.set_xticks(range(1, len(trainers) + 1))
        ax.set_xticklabels(
            [short_trainer(t) for t in trainers], rotation=30, ha="right", fontsize=8
        )
        ax.set_title(region, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"{name}, mean over cases")
    fig.suptitle(f"{name} per run (dots) and mean +- SD between runs (red)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def render_html(
    summary: Sequence[Mapping[str, Any]],
    per_fold: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    meta: Mapping[str, Any],
    images: Mapping[str, bytes],
    figures: Mapping[str, bytes] | None = None,
    plateau: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """``report.html``: the tables, the box plots and the other ``figures`` (title -> PNG),
    all embedded as base64, no external files, and the plateau table (``plateau``, as for
    :func:`render_markdown`)."""

    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def para(line: str) -> str:
        text = html.escape(line)
        while "**" in text:
            text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
        return f"<p>{text}</p>"

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Benchmark {html.escape(str(meta['dataset']))}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "th,td{border-bottom:1px solid #ddd;padding:0.3em 0.6em;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}small{color:#666}</style>",
        "</head><body>",
        f"<h1>Cross-validation benchmark: {html.escape(str(meta['dataset']))}</h1>",
        *(para(line) for line in _context_lines(meta)),
    ]
    for m in metrics:
        name, _, direction = METRIC_INFO.get(m, (m, 3, ""))
        parts.append(
            f"<h2>{html.escape(name)}"
            + (f" <small>({html.escape(direction)})</small>" if direction else "")
            + "</h2>"
        )
        parts.append(table(TABLE_HEADER, table_rows(summary, m)))
    for m, png in images.items():
        name = METRIC_INFO.get(m, (m, 3, ""))[0]
        parts.append(f"<h2>Box plot: {html.escape(name)}</h2>")
        parts.append(
            f'<img alt="box plot of {html.escape(name)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        )
    for title, png in (figures or {}).items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(
            f'<img alt="{html.escape(title)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        )
    header, rows = _per_fold_table(per_fold, metrics)
    parts += ["<h2>Per-fold means (descriptive)</h2>", table(header, rows)]
    if plateau:
        parts += [f"<h2>{html.escape(PLATEAU_TITLE)}</h2>", para(PLATEAU_TEXT)]
        parts.append(table(*plateau_table(plateau)))
    parts.append(
        f"<p><small>nnunet-pde {html.escape(str(meta['software'].get('nnunet_pde')))}, "
        f"created {html.escape(str(meta['created']))}</small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
