"""The robustness pipeline: :func:`run` takes a regime's :class:`~.study.Study` through the
same steps, in one order (output folder, predictions, pooling, evaluation, summaries, outputs).

Each step is a public function here, so that a step can be read (and tested) on its own; the
regimes only declare what they score (:mod:`~nnunet_pde.benchmark.robustness.study`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.manifest import software_versions
from nnunet_pde.benchmark.pooling import pool_predictions
from nnunet_pde.benchmark.robustness.model import (
    AUC_COLUMNS,
    AUC_CSV,
    DEFAULT_METRICS,
    PER_CASE_CSV,
    ROBUSTNESS_DIRNAME,
    ROBUSTNESS_FILES,
    ROBUSTNESS_JSON,
    SUMMARY_COLUMNS,
    SUMMARY_CSV,
    TABLES_MD,
    Condition,
    RobustnessOutcome,
    RobustnessPlan,
    drop_kind,
    relative_drop,
    severity_auc,
)
from nnunet_pde.benchmark.robustness.render import curve_png, render_markdown
from nnunet_pde.benchmark.robustness.study import Point, Study, StudyInputs
from nnunet_pde.benchmark.settings import EvaluationSettings, OutputFiles, evaluate_fold_folder
from nnunet_pde.benchmark.writers import stat_fields, write_csv
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import list_cases, write_json
from nnunet_pde.folders import (
    check_trainer_names,
    dataset_id,
    fold_dir,
    parse_folds,
    read_splits,
    require_env_folder,
    trainer_dir_name,
)
from nnunet_pde.metrics import ImputationPolicy, aggregate
from nnunet_pde.metrics.aggregate import json_safe
from nnunet_pde.metrics.info import METRIC_INFO

# --------------------------------------------------------------------------------- the run


def check_inputs(trainers: Sequence[str], settings: EvaluationSettings) -> StudyInputs:
    """The checked trainer names, fold numbers and metrics of a regime, and nnUNet_results.

    Raises
    ------
    BenchmarkError
        A bad trainer name, fold or metric, or nnUNet_results unset or missing.
    """
    return StudyInputs(
        trainers=check_trainer_names(trainers),
        folds=parse_folds(settings.folds),
        metrics=check_metrics(settings.metric_list(DEFAULT_METRICS)),
        results=require_env_folder("nnUNet_results", settings.env),
        settings=settings,
    )


def run(study: Study) -> RobustnessOutcome:
    """Score a regime and write its outputs; the steps, in this order:

    1. the output folder (``--output``, else
       ``$nnUNet_results/<dataset>/nnunet_pde_robustness/<regime>``) is checked before any
       work: FileExistsError if it is not empty and ``overwrite`` is False;
    2. the regime's warnings about its inputs (:meth:`Study.input_warnings`);
    3. the regime's predictions are made or checked (:meth:`Study.make_predictions`);
    4. every declared point becomes a condition: its out-of-fold predictions pooled over the
       folds, or its one test-set folder (:func:`collect_conditions`);
    5. the regime's checks of what was found (:meth:`Study.check_conditions`);
    6. every condition is evaluated against its references, summarised per curve and
       written (:func:`evaluate_and_write`).
    """
    inputs, s = study.inputs, study.inputs.settings
    out = s.output_folder(inputs.results / study.dataset / ROBUSTNESS_DIRNAME / study.regime)
    check_output_folder(out, s.overwrite)
    warnings = study.input_warnings()
    study.make_predictions()
    conditions = collect_conditions(study.points(), inputs, warnings)
    warnings.extend(study.check_conditions(conditions))
    plan = RobustnessPlan(
        regime=study.regime,
        title=f"{study.heading}: {study.dataset}",
        dataset=study.dataset,
        axis=study.axis,
        clean_level=study.clean_level,
        trainers=inputs.trainers,
        conditions=conditions,
        curves=study.curves(),
        meta={
            "configuration": s.configuration,
            "plans": s.plans,
            "folds": inputs.folds,
            **study.meta(),
        },
        warnings=warnings,
    )
    return evaluate_and_write(plan, out, inputs.metrics, s)


def collect_conditions(
    points: Sequence[Point], inputs: StudyInputs, warnings: list[str]
) -> dict[tuple[str, str], Condition]:
    """One condition per point, keyed ``(trainer, point)``; pooling problems go to
    ``warnings``.

    Raises
    ------
    BenchmarkError
        Out-of-fold points without any prediction, all listed with the command that trains
        them.
    """
    s = inputs.settings
    splits: dict[str, Any] = {}
    conditions: dict[tuple[str, str], Condition] = {}
    missing: list[str] = []
    for p in points:
        info: dict[str, Any] = {}
        if p.predictions is not None:
            sources: list[tuple[Path, int | None]] = [(p.predictions, None)]
            cases: dict[str, int | None] = dict.fromkeys(list_cases(p.predictions, p.file_ending))
        else:
            if p.dataset not in splits:
                pre = require_env_folder("nnUNet_preprocessed", s.env)
                splits[p.dataset] = read_splits(pre / p.dataset)
            pooled = pool_oof(
                inputs, p.dataset, p.model, p.file_ending, splits[p.dataset], warnings
            )
            if pooled is None:
                folder = (
                    inputs.results / p.dataset / trainer_dir_name(p.model, s.plans, s.configuration)
                )
                missing.append(
                    f"  {p.dataset} {p.model}: no predictions in {folder}/fold_*/validation for "
                    f"folds {', '.join(map(str, inputs.folds))}; train them with\n"
                    + train_hint(p.dataset, p.model, s.configuration, s.plans, inputs.folds)
                )
                continue
            sources, cases, info["pooling"] = pooled
        conditions[(p.trainer, p.point or p.key)] = Condition(
            key=p.key,
            trainer=p.trainer,
            curve=p.curve,
            level=p.level,
            label=p.label,
            sources=sources,
            reference=p.reference,
            dataset_json=p.dataset_json,
            cases=cases,
            info={**info, **p.info},
        )
    if missing:
        raise BenchmarkError(
            "no out-of-fold validation predictions for these models; train them first:\n"
            + "\n".join(missing),
            multiline=True,
        )
    return conditions


# --------------------------------------------------------------------------------- the steps


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """``metrics`` without repeats; BenchmarkError if none is given or one is unknown."""
    unknown = [m for m in metrics if m not in METRIC_INFO]
    if unknown or not metrics:
        raise BenchmarkError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(METRIC_INFO)}"
        )
    return list(dict.fromkeys(metrics))


def train_hint(name: str, trainer: str, configuration: str, plans: str, folds: list[int]) -> str:
    """The commands that train ``trainer`` on ``folds`` (for error messages)."""
    f = " ".join(map(str, folds))
    return (
        f"    nnunet-pde benchmark run {dataset_id(name)} --trainers {trainer} -c {configuration} "
        f"-p {plans} --folds {f}\n"
        f"    (or per fold: nnUNetv2_train {dataset_id(name)} {configuration} FOLD -tr {trainer} "
        f"-p {plans})"
    )


def check_output_folder(out: Path, overwrite: bool) -> None:
    """BenchmarkError / FileExistsError unless ``out`` may receive the outputs."""
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"--output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; pass --overwrite to replace the robustness outputs "
            "in it, or choose another folder with --output DIR"
        )


def slug(text: str) -> str:
    """``text`` as a file-name part (a curve id in ``<curve>_<metric>.png``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "curve"


def pool_oof(
    inputs: StudyInputs,
    name: str,
    model_trainer: str,
    file_ending: str,
    splits: Any,
    warnings: list[str],
) -> tuple[list[tuple[Path, int | None]], dict[str, int | None], dict[str, Any]] | None:
    """Pooled out-of-fold folders of one model, or None if it has no prediction at all."""
    results, cfg, plans = inputs.results, inputs.settings.configuration, inputs.settings.plans
    pooled = pool_predictions(
        results, name, model_trainer, plans, cfg, inputs.folds, file_ending, splits
    )
    if not pooled.cases:
        return None
    if pooled.missing_folds:
        warnings.append(
            f"{name} {model_trainer}: MISSING folds "
            + "; ".join(f"fold {k}: {why}" for k, why in pooled.missing_folds.items())
        )
    for k, cases in pooled.missing_cases.items():
        warnings.append(
            f"{name} {model_trainer} fold {k}: {len(cases)} validation case(s) without "
            f"prediction ({', '.join(cases[:10])})"
        )
    sources: list[tuple[Path, int | None]] = [
        (fold_dir(results, name, model_trainer, plans, cfg, k) / "validation", k)
        for k in pooled.folds_found
    ]
    return sources, dict(pooled.cases), pooled.as_dict()


def case_set_warnings(plan: RobustnessPlan) -> list[str]:
    """Differences in the pooled case sets (and fold assignments) between conditions."""
    out: list[str] = []
    items = list(plan.conditions.values())
    if not items:
        return out
    first = items[0]
    ref_cases = first.cases
    for c in items[1:]:
        missing = sorted(set(ref_cases) - set(c.cases))
        extra = sorted(set(c.cases) - set(ref_cases))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} case(s) ({', '.join(missing[:5])})")
            if extra:
                parts.append(f"has {len(extra)} extra case(s) ({', '.join(extra[:5])})")
            out.append(
                f"case sets differ: {c.trainer} {c.key} {' and '.join(parts)} compared with "
                f"{first.trainer} {first.key}; the levels are then not compared on the same cases"
            )
        moved = sorted(
            k
            for k in set(ref_cases) & set(c.cases)
            if ref_cases[k] is not None and c.cases[k] is not None and ref_cases[k] != c.cases[k]
        )
        if moved:
            out.append(
                f"fold assignment differs: {c.trainer} {c.key} validates {len(moved)} case(s) in "
                f"another fold than {first.trainer} {first.key} ({', '.join(moved[:5])}); the "
                "splits (splits_final.json) are not the same"
            )
    return out


def evaluate_conditions(plan: RobustnessPlan, settings: EvaluationSettings) -> list[dict[str, Any]]:
    """Per-case rows of every condition of ``plan``, with its trainer, curve and level."""
    from nnunet_pde.metrics.evaluate import EvaluationError

    per_case: list[dict[str, Any]] = []
    for c in plan.conditions.values():
        for folder, fold in c.sources:
            where = f" fold {fold}" if fold is not None else ""
            settings.print_fn(f"evaluating {c.trainer} {c.key}{where} ({folder} vs {c.reference})")
            try:
                rows = evaluate_fold_folder(folder, c.reference, c.dataset_json, settings)
            except EvaluationError as exc:
                raise BenchmarkError(f"evaluating {folder} against {c.reference}: {exc}") from None
            per_case.extend(
                {
                    "trainer": c.trainer,
                    "curve": c.curve,
                    "condition": c.key,
                    "level": c.level,
                    "level_label": c.label,
                    "fold": "" if fold is None else fold,
                    **r,
                }
                for r in rows
            )
    return per_case


def summarise(
    plan: RobustnessPlan,
    per_case: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    policy: ImputationPolicy,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Summary rows (trainer x curve x region x metric x level) and AUC rows."""
    by_cond: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    regions: list[str] = []
    for r in per_case:
        by_cond.setdefault((str(r["trainer"]), str(r["condition"])), []).append(r)
        if r["region"] not in regions:
            regions.append(str(r["region"]))
    stats = {k: aggregate(rows, policy, metrics=metrics)["regions"] for k, rows in by_cond.items()}

    summary: list[dict[str, Any]] = []
    auc_rows: list[dict[str, Any]] = []
    for curve in plan.curves:
        levels = [lv for lv, _ in curve.points]
        clean_point = next(k for lv, k in curve.points if lv == plan.clean_level)
        for t in plan.trainers:
            clean_key = plan.conditions[(t, clean_point)].key
            for region in regions:
                for m in metrics:
                    clean_st = stats[(t, clean_key)][region]["metrics"][m]
                    means = []
                    for lv, point in curve.points:
                        cond = plan.conditions[(t, point)]
                        reg = stats[(t, cond.key)][region]
                        st = reg["metrics"][m]
                        means.append(st["mean"])
                        summary.append(
                            {
                                "trainer": t,
                                "curve": curve.id,
                                "group": curve.group,
                                "level": lv,
                                "level_label": cond.label,
                                "condition": cond.key,
                                "region": region,
                                "labels": reg["labels"],
                                "metric": m,
                                **stat_fields(st),
                                "clean_mean": clean_st["mean"],
                                "drop": relative_drop(clean_st["mean"], st["mean"], m),
                                "drop_kind": drop_kind(m),
                            }
                        )
                    auc = severity_auc(levels, means)
                    auc_rows.append(
                        {
                            "trainer": t,
                            "curve": curve.id,
                            "group": curve.group,
                            "axis": plan.axis,
                            "region": region,
                            "metric": m,
                            "levels": ";".join(f"{lv:g}" for lv in levels),
                            "n_levels": len(levels),
                            "x_min": min(levels),
                            "x_max": max(levels),
                            "clean_level": plan.clean_level,
                            "clean_mean": clean_st["mean"],
                            "auc": auc,
                            "auc_drop": relative_drop(clean_st["mean"], auc, m),
                            "drop_kind": drop_kind(m),
                        }
                    )
    return summary, auc_rows


def describe_run(
    plan: RobustnessPlan, metrics: Sequence[str], settings: EvaluationSettings
) -> dict[str, Any]:
    """What ``robustness.json`` and the tables record about the run (without the results)."""
    return {
        "kind": f"nnunet_pde benchmark robustness {plan.regime}",
        "regime": plan.regime,
        "dataset": plan.dataset,
        "trainers": list(plan.trainers),
        "axis": plan.axis,
        "clean_level": plan.clean_level,
        "metrics": list(metrics),
        "tolerance_mm": float(settings.tolerance_mm),
        "imputation": settings.imputation.as_dict(),
        **plan.meta,
        "curves": [
            {
                "id": c.id,
                "title": c.title,
                "group": c.group,
                "points": [{"level": lv, "condition": k} for lv, k in c.points],
                **c.info,
            }
            for c in plan.curves
        ],
        "conditions": [c.as_dict() for c in plan.conditions.values()],
        "warnings": list(plan.warnings),
        "software": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def remove_previous_outputs(out: Path) -> None:
    """With --overwrite: remove what an earlier run recorded in robustness.json, nothing else."""
    previous = out / ROBUSTNESS_JSON
    if not previous.is_file():
        return
    try:
        old = json.loads(previous.read_text()).get("files", [])
    except (json.JSONDecodeError, AttributeError):
        old = []
    for f in [*old, *ROBUSTNESS_FILES]:
        p = out / Path(str(f)).name
        if p.is_file():
            p.unlink()


def evaluate_and_write(
    plan: RobustnessPlan, out: Path, metrics: Sequence[str], settings: EvaluationSettings
) -> RobustnessOutcome:
    """Evaluate every condition of ``plan``, summarise, and write the outputs into ``out``."""
    from nnunet_pde.metrics.evaluate import CSV_COLUMNS

    plan.warnings.extend(case_set_warnings(plan))
    for w in plan.warnings:
        settings.print_fn(f"warning: {w}")
    per_case = evaluate_conditions(plan, settings)
    summary, auc = summarise(plan, per_case, metrics, settings.imputation)
    meta = describe_run(plan, metrics, settings)

    check_output_folder(out, settings.overwrite)
    remove_previous_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    files = OutputFiles(out)
    case_cols = ("trainer", "curve", "condition", "level", "level_label", "fold", *CSV_COLUMNS)
    files.put(PER_CASE_CSV, lambda p: write_csv(p, per_case, case_cols))
    files.put(SUMMARY_CSV, lambda p: write_csv(p, summary, SUMMARY_COLUMNS))
    files.put(AUC_CSV, lambda p: write_csv(p, auc, AUC_COLUMNS))
    files.put_text(TABLES_MD, render_markdown(plan, summary, auc, metrics, meta))
    for curve in plan.curves:
        for m in metrics:
            files.put_bytes(f"{slug(curve.id)}_{m}.png", curve_png(plan, curve, m, summary))
    names = [p.name for p in files.written] + [ROBUSTNESS_JSON]
    files.put(
        ROBUSTNESS_JSON,
        lambda p: write_json(
            p,
            json_safe({**meta, "files": names, "summary": summary, "auc": auc}),
            allow_nan=False,
        ),
    )
    return RobustnessOutcome(
        output=out, files=files.written, per_case=per_case, summary=summary, meta=meta,
        regime=plan.regime, auc=auc, warnings=plan.warnings,
    )  # fmt: skip


def preprocessed_dataset_json(pre: Path, raw: Path | None, name: str) -> Path:
    """The dataset.json of ``name`` in nnUNet_preprocessed, else in nnUNet_raw."""
    for folder in (pre / name, *((raw / name,) if raw is not None else ())):
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    raise BenchmarkError(
        f"no dataset.json for {name} in {pre / name}"
        + (f" or {raw / name}" if raw is not None else "")
        + f" (nnUNetv2_plan_and_preprocess -d {dataset_id(name)} copies it)"
    )
