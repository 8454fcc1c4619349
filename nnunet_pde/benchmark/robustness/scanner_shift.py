"""``benchmark robustness scanner-shift``: metric versus severity of a scanner shift."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nnunet_pde import formats
from nnunet_pde.benchmark.robustness.model import CLEAN, Curve, RobustnessOutcome
from nnunet_pde.benchmark.robustness.pipeline import check_inputs, preprocessed_dataset_json, run
from nnunet_pde.benchmark.robustness.predictions import Predictor, missing_predictions
from nnunet_pde.benchmark.robustness.study import Point, Study
from nnunet_pde.benchmark.settings import EvaluationSettings
from nnunet_pde.commands import run_command
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import list_cases
from nnunet_pde.folders import resolve_dataset_name
from nnunet_pde.formats import SHIFT_MANIFEST, level_folder
from nnunet_pde.metrics.aggregate import json_safe

# -------------------------------------------------------------------------- scanner shift


def read_shift_manifest(shifted: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``nnunet_pde_shift.json`` of a ``derive shifted-images`` output folder.

    Raises
    ------
    BenchmarkError
        The file is missing, not JSON, not a ``shifted-images`` manifest, or lacks the source
        dataset, images or perturbations.
    """
    path = Path(shifted) / SHIFT_MANIFEST
    try:
        m = formats.read_shift_manifest(shifted)
    except ValueError as exc:
        raise BenchmarkError(
            f"{exc}; --shifted must be the folder written by nnunet-pde derive shifted-images "
            "SOURCE --output DIR"
        ) from None
    src = m.get("source")
    if not isinstance(src, Mapping) or not src.get("images") or not src.get("dataset"):
        raise BenchmarkError(f"{path}: 'source' must name the dataset and the clean images")
    perts = m.get("perturbations")
    if not isinstance(perts, Mapping) or not perts:
        raise BenchmarkError(f"{path} lists no perturbations")
    return m


_CHANNEL = re.compile(r"^(.+)_\d{4}$")


def _image_cases(folder: Path, file_ending: str) -> list[str]:
    """Case ids of nnU-Net raw images ``CASE_XXXX<file_ending>`` in ``folder``."""
    return sorted(
        {m.group(1) for s in _label_cases(folder, file_ending) if (m := _CHANNEL.match(s))}
    )


def _label_cases(folder: Path, file_ending: str) -> set[str]:
    return set(list_cases(folder, file_ending))


def robustness_scanner_shift(
    dataset: str | int,
    shifted: str | os.PathLike[str],
    trainers: Sequence[str],
    settings: EvaluationSettings | None = None,
    *,
    predictions: str | os.PathLike[str] | None = None,
    predict: bool = False,
    device: str | None = None,
    extra_args: Sequence[str] = (),
    predict_command: Sequence[str] = ("nnUNetv2_predict",),
    runner: Callable[[Sequence[str]], int] | None = None,
    **options: Any,
) -> RobustnessOutcome:
    """Metric versus scanner-shift severity on the test set, per perturbation.

    Parameters
    ----------
    dataset
        Dataset id or name; must be the manifest's source dataset.
    shifted
        Output folder of ``nnunet-pde derive shifted-images`` (with ``nnunet_pde_shift.json``).
    trainers
        The models: ``nnUNetv2_predict`` ensembles the folds of ``settings`` of each trainer.
    settings, **options
        As for :func:`robustness_few_labels`; the default output folder is
        ``$nnUNet_results/<dataset>/nnunet_pde_robustness/scanner-shift``.
    predictions
        Where the predictions are (default ``<shifted>/predictions``):
        ``<predictions>/<trainer>/clean/`` and ``<predictions>/<trainer>/<perturbation>/level<k>/``.
    predict
        Make the missing prediction folders with ``nnUNetv2_predict`` (into a temporary folder
        that is renamed when complete, so an interrupted run is resumed folder by folder).
        Without it, missing predictions are an error that lists the commands.
    device, extra_args, predict_command
        ``-device`` of ``nnUNetv2_predict``, more of its arguments (e.g. ``-npp 1 -nps 1``),
        and the command itself (e.g. a container wrapper).
    runner
        Runs one command and returns its exit code (default :func:`run_command`).

    Returns
    -------
    RobustnessOutcome
        One curve per perturbation, grouped as ``covered_by_nnunet`` or not
        (``meta["covered_by_nnunet"]``, ``meta["not_covered_by_nnunet"]``).

    Raises
    ------
    BenchmarkError
        A bad manifest, missing image or label folders, missing predictions (without
        ``predict``), a missing trained fold or a failed ``nnUNetv2_predict``.
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False (checked before predicting).
    """
    inputs = check_inputs(trainers, EvaluationSettings.of(settings, **options))
    shifted = Path(shifted).absolute()  # the printed commands must work from anywhere
    manifest = read_shift_manifest(shifted)
    name = resolve_dataset_name(dataset, inputs.settings.env)
    test = _TestSet.of(shifted, manifest, name, inputs.settings.env)
    predictor = Predictor(
        name, inputs.results, inputs.folds, device, tuple(extra_args), tuple(predict_command),
        runner if runner is not None else run_command, inputs.settings,
    )  # fmt: skip
    images = _shift_inputs(shifted, manifest, test)
    pred_root = Path(predictions).absolute() if predictions is not None else shifted / "predictions"
    study = ScannerShiftStudy(
        inputs, name, shifted, manifest, test, images, pred_root, predictor, predict
    )
    return run(study)


@dataclass(frozen=True)
class _TestSet:
    """The clean test images and labels a shifted-images folder was derived from."""

    images: Path
    labels: Path
    file_ending: str
    ds_json: Path
    cases: list[str]

    @classmethod
    def of(
        cls, shifted: Path, manifest: Mapping[str, Any], name: str, env: Mapping[str, str]
    ) -> _TestSet:
        """Read from the manifest; BenchmarkError if it is of another dataset or incomplete."""
        src = manifest["source"]
        if str(src["dataset"]) != name:
            raise BenchmarkError(
                f"{shifted / SHIFT_MANIFEST} was derived from {src['dataset']}, not {name}; "
                "pass the dataset the shifted images come from"
            )
        images = Path(str(src["images"]))
        if not src.get("labels"):
            raise BenchmarkError(
                f"{shifted / SHIFT_MANIFEST} records no test labels (source.labels is null), so "
                "the predictions cannot be scored; derive the shifted images from a dataset with "
                "labelsTs"
            )
        labels = Path(str(src["labels"]))
        file_ending = str(src.get("file_ending") or ".nii.gz")
        ds_json = Path(str(src.get("dataset_json") or ""))
        if not ds_json.is_file():
            raw_env = env.get("nnUNet_raw")
            pre_env = env.get("nnUNet_preprocessed")
            ds_json = preprocessed_dataset_json(
                Path(pre_env) if pre_env else images.parent.parent,
                Path(raw_env) if raw_env else None,
                name,
            )
        for what, folder in (("clean test images", images), ("test labels", labels)):
            if not folder.is_dir():
                raise BenchmarkError(
                    f"the {what} {folder} of {shifted / SHIFT_MANIFEST} do not exist"
                )
        cases = _image_cases(images, file_ending)
        if not cases:
            raise BenchmarkError(f"no *_XXXX{file_ending} images in {images}")
        no_label = sorted(set(cases) - _label_cases(labels, file_ending))
        if no_label:
            raise BenchmarkError(
                f"{len(no_label)} test case(s) have no label in {labels}: "
                f"{', '.join(no_label[:10])}"
            )
        return cls(images, labels, file_ending, ds_json, cases)


#: (key, perturbation, level, input folder, covered by nnU-Net's augmentation or None).
_Input = tuple[str, str, int, Path, "bool | None"]


def _shift_inputs(shifted: Path, manifest: Mapping[str, Any], test: _TestSet) -> list[_Input]:
    """The clean images, then every perturbation and level of the manifest (checked)."""
    inputs: list[_Input] = [(CLEAN, CLEAN, 0, test.images, None)]
    global_levels = [int(k) for k in manifest.get("levels", [])]
    for pert, info in manifest["perturbations"].items():
        info = info if isinstance(info, Mapping) else {}
        lv = sorted(int(k) for k in info.get("levels", {})) or sorted(global_levels)
        if not lv:
            raise BenchmarkError(f"{shifted / SHIFT_MANIFEST}: perturbation {pert} has no levels")
        for k in lv:
            folder = level_folder(shifted, pert, k)
            if not folder.is_dir():
                raise BenchmarkError(
                    f"{folder} does not exist although {SHIFT_MANIFEST} lists it; derive the "
                    "shifted images again (nnunet-pde derive shifted-images)"
                )
            have = _image_cases(folder, test.file_ending)
            if have != test.cases:
                raise BenchmarkError(
                    f"{folder} has {len(have)} case(s), the clean images {test.images} have "
                    f"{len(test.cases)}; derive the shifted images again"
                )
            inputs.append(
                (f"{pert}/level{k}", pert, k, folder, bool(info.get("covered_by_nnunet", False)))
            )
    return inputs


def _shift_curves(manifest: Mapping[str, Any], inputs: Sequence[_Input]) -> list[Curve]:
    """One curve per perturbation: those nnU-Net's augmentation covers first."""
    curves: list[Curve] = []
    perts = list(dict.fromkeys(p for _, p, _, _, _ in inputs if p != CLEAN))
    covered = {p: c for _, p, _, _, c in inputs if p != CLEAN}
    for group in ("covered_by_nnunet", "not_covered_by_nnunet"):
        for p in perts:
            if covered[p] != (group == "covered_by_nnunet"):
                continue
            info = manifest["perturbations"][p]
            info = info if isinstance(info, Mapping) else {}
            curves.append(
                Curve(
                    id=p,
                    title=f"Scanner shift, {p}"
                    + (f": {info['description']}" if info.get("description") else ""),
                    points=[(0.0, CLEAN)]
                    + [(float(k), key) for key, q, k, _, _ in inputs if q == p],
                    group=group,
                    info={
                        "covered_by_nnunet": covered[p],
                        "levels": info.get("levels", {}),
                    },
                )
            )
    return curves


@dataclass(frozen=True)
class ScannerShiftStudy(Study):
    """The test-set predictions of one scanner-shift comparison: every trainer on the clean
    test images and on every perturbation and level, against the test labels."""

    regime: ClassVar[str] = "scanner-shift"
    heading: ClassVar[str] = "Robustness to scanner shift"
    axis: ClassVar[str] = "severity level (0 = clean test images)"
    clean_level: ClassVar[float] = 0.0

    shifted: Path
    manifest: Mapping[str, Any]
    test: _TestSet
    images: list[_Input]
    pred_root: Path
    predictor: Predictor
    predict: bool

    def make_predictions(self) -> None:
        """With ``predict``, ``nnUNetv2_predict`` into every missing folder; without it,
        BenchmarkError listing the commands. Folders made with other settings are an error."""
        todo = missing_predictions(
            self.inputs.trainers, [(key, folder) for key, _, _, folder, _ in self.images],
            self.pred_root, self.test.cases, self.test.file_ending, self.predictor,
        )  # fmt: skip
        if todo and not self.predict:
            lines = ["  " + shlex.join(self.predictor.command(t, i, o)) for t, _, i, o in todo]
            raise BenchmarkError(
                f"{len(todo)} prediction folder(s) are missing or incomplete under "
                f"{self.pred_root}; rerun with --predict to make them, or run:\n"
                + "\n".join(lines),
                multiline=True,
            )
        if todo:
            self.predictor.predict_missing(todo, self.test.cases, self.test.file_ending)

    def points(self) -> list[Point]:
        """One point per (trainer, input): its prediction folder against the test labels."""
        return [
            Point(
                trainer=t,
                key=key,
                curve=CLEAN if pert == CLEAN else pert,
                level=float(k),
                label="clean" if pert == CLEAN else f"level {k}",
                reference=self.test.labels,
                dataset_json=self.test.ds_json,
                file_ending=self.test.file_ending,
                predictions=self.pred_root / t / key,
            )
            for t in self.inputs.trainers
            for key, pert, k, _, _ in self.images
        ]

    def curves(self) -> list[Curve]:
        """One curve per perturbation: those nnU-Net's augmentation covers first."""
        return _shift_curves(self.manifest, self.images)

    def meta(self) -> dict[str, Any]:
        """The shifted images, the predictions, the manifest and how the points were made."""
        perts = list(dict.fromkeys(p for _, p, _, _, _ in self.images if p != CLEAN))
        covered = {p: c for _, p, _, _, c in self.images if p != CLEAN}
        folds = ", ".join(map(str, self.inputs.folds))
        return {
            "shifted": str(self.shifted),
            "predictions": str(self.pred_root),
            "manifest": json_safe(self.manifest),
            "covered_by_nnunet": [p for p in perts if covered[p]],
            "not_covered_by_nnunet": [p for p in perts if not covered[p]],
            "how": (
                "Each point is the test-set prediction (nnUNetv2_predict, ensemble of folds "
                f"{folds}) of the clean images (level 0, {self.test.images}) or of one "
                f"perturbation at one severity level ({self.shifted}/<perturbation>/"
                f"level<k>), scored against the test labels {self.test.labels}. 'Covered' "
                "perturbations are ones nnU-Net's training augmentation already simulates "
                "(noise, blur, gamma, low resolution); the others are not."
            ),
        }
