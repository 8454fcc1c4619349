"""``benchmark robustness noisy-labels``: metric versus label noise, against the clean labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nnunet_pde.benchmark.robustness.model import CLEAN, Curve, RobustnessOutcome
from nnunet_pde.benchmark.robustness.pipeline import check_inputs, preprocessed_dataset_json, run
from nnunet_pde.benchmark.robustness.study import Point, Study, StudyInputs
from nnunet_pde.benchmark.settings import EvaluationSettings
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import read_json
from nnunet_pde.folders import read_splits, require_env_folder, resolve_dataset_name
from nnunet_pde.formats import CLEAN_LABELS_DIR, DERIVED_JSON, read_derived_info

# --------------------------------------------------------------------------- noisy labels


#: Fields of a noisy-labels record copied into ``robustness.json`` (not the per-case lists).
_DERIVED_KEYS = ("mode", "magnitude_mm", "fraction", "seed", "labels", "num_corrupted")


def _read_derived(raw_ds: Path) -> dict[str, Any] | None:
    """The checked noisy-labels record of a raw dataset folder, or None for a clean dataset."""
    path = raw_ds / DERIVED_JSON
    try:
        info = read_derived_info(raw_ds)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from None
    if info is None:
        return None
    if info.get("kind") != "noisy-labels":
        raise BenchmarkError(
            f"{path} describes a '{info.get('kind')}' dataset, not a 'noisy-labels' one made by "
            "nnunet-pde derive noisy-labels"
        )
    for key in ("mode", "magnitude_mm", "source"):
        if key not in info:
            raise BenchmarkError(f"{path} has no '{key}' (expected from nnunet-pde derive)")
    try:
        info["magnitude_mm"] = float(info["magnitude_mm"])
    except (TypeError, ValueError):
        raise BenchmarkError(f"{path}: magnitude_mm must be a number") from None
    src = info["source"]
    info["source_name"] = str(src.get("name") if isinstance(src, Mapping) else src)
    return info


def robustness_noisy_labels(
    datasets: Sequence[str | int],
    trainers: Sequence[str],
    settings: EvaluationSettings | None = None,
    **options: Any,
) -> RobustnessOutcome:
    """Metric versus label-noise magnitude, always scored against the clean labels.

    Parameters
    ----------
    datasets
        The clean dataset (no ``nnunet_pde_derived.json``; magnitude 0) and datasets derived
        from it by ``nnunet-pde derive noisy-labels``, as ids or names, in any order. Each
        corruption mode (and fraction of corrupted cases, if not 1) is its own curve.
    trainers
        Trainers trained on every one of the datasets.
    settings, **options
        As for :func:`robustness_few_labels`; the default output folder is
        ``$nnUNet_results/<clean dataset>/nnunet_pde_robustness/noisy-labels``.

    Returns
    -------
    RobustnessOutcome
        One curve per corruption mode; ``meta["references"]`` names the clean labels each
        dataset was scored against.

    Raises
    ------
    BenchmarkError
        No clean dataset or more than one, a derived dataset of another source, two datasets
        at the same (mode, magnitude), missing clean labels, different label definitions, or
        a model without predictions (the message gives the training command).
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False.
    """
    inputs = check_inputs(trainers, EvaluationSettings.of(settings, **options))
    return run(NoisyLabelStudy.of(datasets, inputs))


def _the_clean_dataset(derived: Mapping[str, dict[str, Any] | None]) -> str:
    """The one dataset without a noisy-labels record; every other one must come from it."""
    clean = [n for n, d in derived.items() if d is None]
    if len(clean) != 1:
        sources = sorted({d["source_name"] for d in derived.values() if d is not None})
        raise BenchmarkError(
            (
                "no clean dataset in --datasets: add the source the noisy ones were derived "
                f"from ({', '.join(sources)}); it is the magnitude-0 point of every curve"
            )
            if not clean
            else f"more than one clean dataset (no {DERIVED_JSON}) in --datasets: "
            f"{', '.join(clean)}; give exactly one"
        )
    clean_name = clean[0]
    wrong = [
        f"{n} (from {d['source_name']})"
        for n, d in derived.items()
        if n != clean_name and d is not None and d["source_name"] != clean_name
    ]
    if wrong:
        raise BenchmarkError(
            f"these datasets were not derived from the clean dataset {clean_name}: "
            f"{', '.join(wrong)}"
        )
    return clean_name


def _check_same_labels(ds_jsons: Mapping[str, Path], clean_name: str, others: list[str]) -> str:
    """The clean dataset's file ending; BenchmarkError if a derived one has other labels."""
    from nnunet_pde.metrics.evaluate import regions_from_dataset_json

    clean_ds = read_json(ds_jsons[clean_name], BenchmarkError)
    file_ending = str(clean_ds.get("file_ending", ".nii.gz"))
    clean_regions = regions_from_dataset_json(clean_ds)
    for n in others:
        if regions_from_dataset_json(read_json(ds_jsons[n], BenchmarkError)) != clean_regions:
            raise BenchmarkError(
                f"{ds_jsons[n]} defines other labels or regions than {ds_jsons[clean_name]}; "
                "a derived dataset must keep the labels of its source"
            )
    return file_ending


def _clean_references(
    raw: Path, preprocessed: Path, clean_name: str, others: list[str]
) -> dict[str, Path]:
    """Per dataset, the clean labels it is scored against (never a noisy labelsTr)."""
    refs: dict[str, Path] = {}
    if (raw / clean_name / "labelsTr").is_dir():
        refs[clean_name] = raw / clean_name / "labelsTr"
    elif (preprocessed / clean_name / "gt_segmentations").is_dir():
        refs[clean_name] = preprocessed / clean_name / "gt_segmentations"
    else:
        raise BenchmarkError(
            f"no clean labels for {clean_name}: neither {raw / clean_name / 'labelsTr'} nor "
            f"{preprocessed / clean_name / 'gt_segmentations'} exists"
        )
    for n in others:
        r = raw / n / CLEAN_LABELS_DIR
        if not r.is_dir():
            raise BenchmarkError(
                f"{r} does not exist: a noisy-labels dataset keeps its clean labels there, and "
                "they are what it is scored against (never its noisy labelsTr); derive it again "
                "with nnunet-pde derive noisy-labels"
            )
        refs[n] = r
    return refs


def _noise_curves(
    derived: Mapping[str, dict[str, Any] | None], others: list[str]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The curve of each derived dataset (one per mode and fraction of corrupted cases), and
    per curve its mode, fraction and datasets with their magnitudes."""
    curve_of: dict[str, str] = {}
    curve_info: dict[str, dict[str, Any]] = {}
    for n in others:
        d = derived[n]
        assert d is not None
        frac = float(d.get("fraction", 1.0) or 1.0)
        cid = str(d["mode"]) if frac == 1.0 else f"{d['mode']}_cases{frac:g}"
        curve_of[n] = cid
        curve_info.setdefault(cid, {"mode": d["mode"], "fraction": frac, "datasets": {}})
        if d["magnitude_mm"] <= 0:
            raise BenchmarkError(
                f"{n} has magnitude_mm {d['magnitude_mm']:g}; only the clean dataset is magnitude 0"
            )
        taken = curve_info[cid]["datasets"]
        for other, mag in taken.items():
            if mag == d["magnitude_mm"]:
                raise BenchmarkError(
                    f"{other} and {n} are both {cid} at {mag:g} mm; keep one of them"
                )
        taken[n] = d["magnitude_mm"]
    return curve_of, curve_info


@dataclass(frozen=True)
class NoisyLabelStudy(Study):
    """The datasets of one noisy-labels comparison and what each is scored against: the same
    trainers on each, their pooled out-of-fold predictions against the clean labels.
    :attr:`dataset` is the clean dataset."""

    regime: ClassVar[str] = "noisy-labels"
    heading: ClassVar[str] = "Robustness to noisy training labels"
    axis: ClassVar[str] = "noise magnitude (mm)"
    clean_level: ClassVar[float] = 0.0

    preprocessed: Path
    names: list[str]
    derived: Mapping[str, dict[str, Any] | None]
    refs: Mapping[str, Path]
    ds_jsons: Mapping[str, Path]
    file_ending: str
    curve_of: Mapping[str, str]
    curve_info: Mapping[str, dict[str, Any]]

    @classmethod
    def of(cls, datasets: Sequence[str | int], inputs: StudyInputs) -> NoisyLabelStudy:
        """Read and checked: BenchmarkError as listed in :func:`robustness_noisy_labels`."""
        if not datasets:
            raise BenchmarkError("no datasets given (--datasets CLEAN NOISY1 NOISY2 ...)")
        env = inputs.settings.env
        preprocessed = require_env_folder("nnUNet_preprocessed", env)
        raw = require_env_folder("nnUNet_raw", env)
        names = [resolve_dataset_name(d, env) for d in datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BenchmarkError(f"dataset(s) listed twice: {', '.join(dup)}")
        derived = {n: _read_derived(raw / n) for n in names}
        clean_name = _the_clean_dataset(derived)
        others = [n for n in names if n != clean_name]
        ds_jsons = {n: preprocessed_dataset_json(preprocessed, raw, n) for n in names}
        file_ending = _check_same_labels(ds_jsons, clean_name, others)
        refs = _clean_references(raw, preprocessed, clean_name, others)
        curve_of, curve_info = _noise_curves(derived, others)
        return cls(
            inputs, clean_name, preprocessed, names, derived, refs, ds_jsons, file_ending,
            curve_of, curve_info,
        )  # fmt: skip

    def input_warnings(self) -> list[str]:
        """A warning per derived dataset whose splits_final.json is not the clean one's."""
        warnings: list[str] = []
        clean_splits = read_splits(self.preprocessed / self.dataset)
        for n in self.names:
            if n == self.dataset:
                continue
            s = read_splits(self.preprocessed / n)
            if s is not None and clean_splits is not None and s != clean_splits:
                warnings.append(
                    f"splits_final.json of {n} differs from {self.dataset}'s: the folds "
                    "validate different cases"
                )
        return warnings

    def points(self) -> list[Point]:
        """One point per (trainer, dataset): the trainer trained on that dataset."""
        points = []
        for t in self.inputs.trainers:
            for n in self.names:
                d = self.derived[n]
                points.append(
                    Point(
                        trainer=t,
                        key=n,
                        curve=CLEAN if d is None else self.curve_of[n],
                        level=0.0 if d is None else d["magnitude_mm"],
                        label="0 mm (clean)" if d is None else f"{d['magnitude_mm']:g} mm",
                        reference=self.refs[n],
                        dataset_json=self.ds_jsons[n],
                        file_ending=self.file_ending,
                        dataset=n,
                        model=t,
                        info={"derived": _derived_info(d)},
                    )
                )
        return points

    def curves(self) -> list[Curve]:
        """One curve per corruption mode (and fraction of corrupted cases, if not 1)."""
        curves = []
        for cid, info in self.curve_info.items():
            pts = sorted((mag, n) for n, mag in info["datasets"].items())
            title = f"Noisy labels, {info['mode']}"
            if info["fraction"] != 1.0:
                title += f" on {info['fraction'] * 100:g} % of the cases"
            curves.append(
                Curve(
                    id=cid,
                    title=title + " (x: magnitude in mm)",
                    points=[(0.0, self.dataset), *pts],
                    info=info,
                )
            )
        return curves

    def meta(self) -> dict[str, Any]:
        """The datasets, their references and how the points were made."""
        folds = ", ".join(map(str, self.inputs.folds))
        return {
            "datasets": self.names,
            "clean_dataset": self.dataset,
            "references": {n: str(p) for n, p in self.refs.items()},
            "how": (
                "Each point is the trainer trained on that dataset (the clean one at 0 mm, "
                "the noisy-labels datasets at their magnitude_mm); out-of-fold validation "
                f"predictions pooled over folds {folds}, always scored against the CLEAN "
                f"labels ({self.refs[self.dataset]} for the clean dataset, "
                f"<dataset>/{CLEAN_LABELS_DIR} for a derived one), never the noisy ones."
            ),
        }


def _derived_info(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fields of a noisy-labels record that robustness.json keeps (None when clean)."""
    if d is None:
        return None
    return {"source": d["source_name"], **{k: d[k] for k in _DERIVED_KEYS if k in d}}
