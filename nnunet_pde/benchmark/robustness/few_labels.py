"""``benchmark robustness few-labels``: metric versus label fraction (``<T>_FracNN`` trainers)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nnunet_pde.benchmark.robustness.model import Condition, Curve, RobustnessOutcome
from nnunet_pde.benchmark.robustness.pipeline import check_inputs, preprocessed_dataset_json, run
from nnunet_pde.benchmark.robustness.study import Point, Study, StudyInputs
from nnunet_pde.benchmark.settings import EvaluationSettings
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import read_json
from nnunet_pde.folders import fold_dir, gt_segmentations, require_env_folder, resolve_dataset_name
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
        One curve, ``label-fraction``; each condition's ``info`` (in ``robustness.json``)
        holds its pooling and the subset record of every fold.

    Raises
    ------
    BenchmarkError
        Bad arguments, or a model without any validation prediction (the message gives the
        command that trains it).
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False (checked before any evaluation).
    """
    inputs = check_inputs(trainers, EvaluationSettings.of(settings, **options))
    return run(FewLabelStudy.of(dataset, fractions, inputs))


@dataclass(frozen=True)
class FewLabelStudy(Study):
    """The models of one few-labels comparison: ``<T>_FracNN`` at NN %, ``<T>`` at 100 %,
    their pooled out-of-fold predictions scored against ``gt_segmentations``."""

    regime: ClassVar[str] = "few-labels"
    heading: ClassVar[str] = "Robustness to few labels"
    axis: ClassVar[str] = "label fraction (share of each fold's training cases)"
    clean_level: ClassVar[float] = 1.0

    percents: list[int]  # below 100, sorted
    gt: Path
    ds_json: Path
    file_ending: str

    @classmethod
    def of(
        cls, dataset: str | int, fractions: Sequence[int | float | str], inputs: StudyInputs
    ) -> FewLabelStudy:
        """Checked: BenchmarkError for a bad fraction, a ``_FracNN`` trainer or missing
        preprocessed references."""
        percents = _parse_fractions(fractions)
        bad = [t for t in inputs.trainers if re.search(r"_Frac\d+$", t)]
        if bad:
            raise BenchmarkError(
                f"pass the base trainers, not the few-label ones ({', '.join(bad)}): the _FracNN "
                "names are made from --trainers and --fractions"
            )
        env = inputs.settings.env
        preprocessed = require_env_folder("nnUNet_preprocessed", env)
        name = resolve_dataset_name(dataset, env)
        gt = gt_segmentations(preprocessed / name)
        ds_json = preprocessed_dataset_json(preprocessed, None, name)
        file_ending = str(read_json(ds_json, BenchmarkError).get("file_ending", ".nii.gz"))
        return cls(inputs, name, percents, gt, ds_json, file_ending)

    def points(self) -> list[Point]:
        """One point per (trainer, fraction): the model ``few_label_trainer(trainer, NN)``."""
        return [
            Point(
                trainer=t,
                key=few_label_trainer(t, pct),
                curve="label-fraction",
                level=pct / 100,
                label=f"{pct} %",
                reference=self.gt,
                dataset_json=self.ds_json,
                file_ending=self.file_ending,
                dataset=self.dataset,
                model=few_label_trainer(t, pct),
                point=f"frac{pct}",
            )
            for t in self.inputs.trainers
            for pct in [*self.percents, 100]
        ]

    def check_conditions(self, conditions: Mapping[tuple[str, str], Condition]) -> list[str]:
        """The subset record of every few-label fold into ``info["subsets"]``; warnings for a
        missing record, a fraction other than the name's and differing subset seeds."""
        warnings: list[str] = []
        seeds: dict[tuple[int, int], dict[str, Any]] = {}
        no_record: list[str] = []
        for t in self.inputs.trainers:
            for pct in [*self.percents, 100]:
                c = conditions[(t, f"frac{pct}")]
                c.info["subsets"] = self._subsets(c, pct, warnings, no_record, seeds)
        if no_record:
            warnings.append(
                f"no {SUBSET_FILE} in {len(no_record)} few-label fold folder(s) "
                f"({', '.join(no_record[:5])}): the training subsets cannot be confirmed"
            )
        return warnings + _seed_warnings(seeds)

    def _subsets(
        self,
        c: Condition,
        pct: int,
        warnings: list[str],
        no_record: list[str],
        seeds: dict[tuple[int, int], dict[str, Any]],
    ) -> dict[str, Any]:
        """Per fold of a few-label condition, its subset record (none at 100 %)."""
        s = self.inputs.settings
        subsets: dict[str, Any] = {}
        for _, k in c.sources if pct < 100 else ():
            folder = fold_dir(self.inputs.results, self.dataset, c.key, s.plans, s.configuration, k)
            rec_path = folder / SUBSET_FILE
            if not rec_path.is_file():
                no_record.append(f"{c.key}/fold_{k}")
                continue
            rec = read_json(rec_path, BenchmarkError)
            subsets[str(k)] = _subset_record(rec, rec_path, c.key, pct, warnings)
            seeds.setdefault((pct, int(k)), {})[c.trainer] = rec.get("seed")
        return subsets

    def curves(self) -> list[Curve]:
        """The one curve, label fraction."""
        return [
            Curve(
                id="label-fraction",
                title=f"Few labels: metric versus label fraction ({self.dataset})",
                points=[(p / 100, f"frac{p}") for p in [*self.percents, 100]],
            )
        ]

    def meta(self) -> dict[str, Any]:
        """The fractions, the references and how the points were made."""
        folds = ", ".join(map(str, self.inputs.folds))
        return {
            "fractions_percent": [*self.percents, 100],
            "reference_folder": str(self.gt),
            "how": (
                "Each trainer T at fraction NN % is the model T_FracNN (trained on a "
                "nested, seeded NN % subset of each fold's training cases), 100 % is T "
                f"itself; out-of-fold validation predictions pooled over folds {folds} (every "
                f"case once), scored against {self.gt} (nnU-Net's own validation references)."
            ),
        }


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
