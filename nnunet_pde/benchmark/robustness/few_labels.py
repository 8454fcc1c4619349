"""``benchmark robustness few-labels``: metric versus label fraction (``<T>_FracNN`` trainers)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.robustness.model import (
    ROBUSTNESS_DIRNAME,
    Condition,
    Curve,
    RobustnessOutcome,
    RobustnessPlan,
)
from nnunet_pde.benchmark.robustness.pipeline import (
    check_output_folder,
    common_setup,
    evaluate_and_write,
    pool_oof,
    preprocessed_dataset_json,
    train_hint,
)
from nnunet_pde.benchmark.settings import EvaluationSettings
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import read_json
from nnunet_pde.folders import (
    fold_dir,
    gt_segmentations,
    read_splits,
    require_env_folder,
    resolve_dataset_name,
    trainer_dir_name,
)
from nnunet_pde.formats import SUBSET_FILE

# ----------------------------------------------------------------------------- few labels


def _parse_fractions(fractions: Sequence[int | float | str]) -> list[int]:
    out: list[int] = []
    for f in fractions:
        try:
            v = float(f)
        except (TypeError, ValueError):
            v = float("nan")
        if not math.isfinite(v) or not v.is_integer() or not 1 <= v <= 100:
            raise BenchmarkError(
                f"label fractions are whole percentages from 1 to 100, as in the _FracNN "
                f"trainers (e.g. --fractions 5 10 25 50), got '{f}'"
            )
        if int(v) in out:
            raise BenchmarkError(f"label fraction {int(v)} is listed twice")
        out.append(int(v))
    return sorted(p for p in out if p != 100)


def few_label_trainer(trainer: str, percent: int) -> str:
    """``<trainer>_FracNN`` for a percentage below 100, ``trainer`` itself for 100."""
    return trainer if percent == 100 else f"{trainer}_Frac{percent:02d}"


def robustness_few_labels(
    dataset: str | int,
    trainers: Sequence[str],
    fractions: Sequence[int | float | str] = (5, 10, 25, 50),
    settings: EvaluationSettings | None = None,
    **options: Any,
) -> RobustnessOutcome:
    """Metric versus label fraction: ``<T>_FracNN`` for every NN, and ``<T>`` as 100 %.

    Parameters
    ----------
    dataset
        Dataset id or ``DatasetNNN_Name``.
    trainers
        Base trainers (``nnUNetTrainerPDE3D``), not the ``_FracNN`` names.
    fractions
        Percentages of the ``_FracNN`` trainers (100 % = the base trainer is always added).
    settings, **options
        :class:`~nnunet_pde.benchmark.settings.EvaluationSettings`, or its fields as keyword
        arguments (``folds=[0, 1]``, ``overwrite=True``); the default output folder is
        ``$nnUNet_results/<dataset>/nnunet_pde_robustness/few-labels``, the default metrics
        :data:`DEFAULT_METRICS`.

    Returns
    -------
    RobustnessOutcome

    Raises
    ------
    BenchmarkError
        Bad arguments, or a model without any validation prediction (the message gives the
        command that trains it).
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False (checked before any evaluation).
    """
    settings = EvaluationSettings.of(settings, **options)
    env = settings.env
    trainers, fold_list, metrics = common_setup(trainers, settings)
    percents = _parse_fractions(fractions)
    bad = [t for t in trainers if re.search(r"_Frac\d+$", t)]
    if bad:
        raise BenchmarkError(
            f"pass the base trainers, not the few-label ones ({', '.join(bad)}): the _FracNN "
            "names are made from --trainers and --fractions"
        )
    results = require_env_folder("nnUNet_results", env)
    preprocessed = require_env_folder("nnUNet_preprocessed", env)
    name = resolve_dataset_name(dataset, env)
    gt = gt_segmentations(preprocessed / name)
    ds_json = preprocessed_dataset_json(preprocessed, None, name)
    file_ending = str(read_json(ds_json, BenchmarkError).get("file_ending", ".nii.gz"))
    out = settings.output_folder(results / name / ROBUSTNESS_DIRNAME / "few-labels")
    check_output_folder(out, settings.overwrite)

    grid = _FewLabelGrid(
        results, preprocessed / name, name, gt, ds_json, file_ending, fold_list, settings
    )
    conditions, warnings = grid.conditions(trainers, percents)
    plan = grid.plan(trainers, percents, conditions, warnings)
    return evaluate_and_write(plan, out, metrics, settings)


@dataclass(frozen=True)
class _FewLabelGrid:
    """The models of one few-labels comparison: where they are and what they are scored on."""

    results: Path
    pre: Path
    name: str
    gt: Path
    ds_json: Path
    file_ending: str
    folds: list[int]
    settings: EvaluationSettings

    def conditions(
        self, trainers: Sequence[str], percents: Sequence[int]
    ) -> tuple[dict[tuple[str, str], Condition], list[str]]:
        """One condition per (trainer, fraction), and the warnings about them."""
        s = self.settings
        splits = read_splits(self.pre)
        warnings: list[str] = []
        conditions: dict[tuple[str, str], Condition] = {}
        missing: list[str] = []
        seeds: dict[tuple[int, int], dict[str, Any]] = {}
        no_record: list[str] = []
        for t in trainers:
            for pct in [*percents, 100]:
                model = few_label_trainer(t, pct)
                pooled = pool_oof(
                    self.results, self.name, model, s.plans, s.configuration, self.folds,
                    self.file_ending, splits, warnings,
                )  # fmt: skip
                if pooled is None:
                    missing.append(self._missing(model))
                    continue
                sources, cases, pool_info = pooled
                subsets: dict[str, Any] = {}
                if pct < 100:
                    for _, k in sources:
                        rec_path = self._fold(model, k) / SUBSET_FILE
                        if not rec_path.is_file():
                            no_record.append(f"{model}/fold_{k}")
                            continue
                        rec = read_json(rec_path, BenchmarkError)
                        subsets[str(k)] = _subset_record(rec, rec_path, model, pct, warnings)
                        seeds.setdefault((pct, int(k)), {})[t] = rec.get("seed")
                conditions[(t, f"frac{pct}")] = Condition(
                    key=model,
                    trainer=t,
                    curve="label-fraction",
                    level=pct / 100,
                    label=f"{pct} %",
                    sources=sources,
                    reference=self.gt,
                    dataset_json=self.ds_json,
                    cases=cases,
                    info={"pooling": pool_info, "subsets": subsets},
                )
        if missing:
            raise BenchmarkError(
                "no out-of-fold validation predictions for these models; train them first:\n"
                + "\n".join(missing),
                multiline=True,
            )
        if no_record:
            warnings.append(
                f"no {SUBSET_FILE} in {len(no_record)} few-label fold folder(s) "
                f"({', '.join(no_record[:5])}): the training subsets cannot be confirmed"
            )
        warnings.extend(_seed_warnings(seeds))
        return conditions, warnings

    def _fold(self, model: str, k: int | None) -> Path:
        s = self.settings
        return fold_dir(self.results, self.name, model, s.plans, s.configuration, k)

    def _missing(self, model: str) -> str:
        s = self.settings
        folder = self.results / self.name / trainer_dir_name(model, s.plans, s.configuration)
        return (
            f"  {model}: no predictions in {folder}/fold_*/validation for folds "
            f"{', '.join(map(str, self.folds))}; train them with\n"
            + train_hint(self.name, model, s.configuration, s.plans, self.folds)
        )

    def plan(
        self,
        trainers: list[str],
        percents: Sequence[int],
        conditions: dict[tuple[str, str], Condition],
        warnings: list[str],
    ) -> RobustnessPlan:
        """The one curve (label fraction) and what the outputs record about it."""
        name, folds = self.name, self.folds
        curve = Curve(
            id="label-fraction",
            title=f"Few labels: metric versus label fraction ({name})",
            points=[(p / 100, f"frac{p}") for p in [*percents, 100]],
        )
        return RobustnessPlan(
            regime="few-labels",
            title=f"Robustness to few labels: {name}",
            dataset=name,
            axis="label fraction (share of each fold's training cases)",
            clean_level=1.0,
            trainers=trainers,
            conditions=conditions,
            curves=[curve],
            meta={
                "configuration": self.settings.configuration,
                "plans": self.settings.plans,
                "folds": folds,
                "fractions_percent": [*percents, 100],
                "reference_folder": str(self.gt),
                "how": (
                    "Each trainer T at fraction NN % is the model T_FracNN (trained on a "
                    "nested, seeded NN % subset of each fold's training cases), 100 % is T "
                    "itself; out-of-fold validation predictions pooled over folds "
                    f"{', '.join(map(str, folds))} (every case once), scored against "
                    f"{self.gt} (nnU-Net's own validation references)."
                ),
            },
            warnings=warnings,
        )


def _subset_record(
    rec: Mapping[str, Any], rec_path: Path, model: str, pct: int, warnings: list[str]
) -> dict[str, Any]:
    """What a fold's subset record says; a warning if its fraction is not the trainer's."""
    frac = rec.get("fraction")
    if not isinstance(frac, int | float) or abs(float(frac) - pct / 100) > 1e-6:
        warnings.append(
            f"{rec_path} records fraction {frac}, not {pct / 100:g} as the "
            f"trainer name {model} says"
        )
    return {key: rec.get(key) for key in ("fraction", "seed", "n_total", "n_selected")}


def _seed_warnings(seeds: Mapping[tuple[int, int], Mapping[str, Any]]) -> list[str]:
    """A warning per (fraction, fold) whose trainers were trained with different subset seeds."""
    return [
        f"{pct} % fold {k}: the trainers used different subset seeds "
        f"({', '.join(f'{t}: {s}' for t, s in by_trainer.items())}), so they were "
        "trained on different cases"
        for (pct, k), by_trainer in sorted(seeds.items())
        if len(set(map(str, by_trainer.values()))) > 1
    ]
