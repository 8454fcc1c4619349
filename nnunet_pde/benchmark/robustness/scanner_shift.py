"""``benchmark robustness scanner-shift``: metric versus severity of a scanner shift."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde import formats
from nnunet_pde.benchmark.robustness.model import (
    CLEAN,
    PREDICTION_RECORD,
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
    preprocessed_dataset_json,
    train_hint,
)
from nnunet_pde.benchmark.settings import EvaluationSettings
from nnunet_pde.commands import build_predict_command, run_command
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import list_cases
from nnunet_pde.folders import (
    fold_dir,
    require_env_folder,
    resolve_dataset_name,
)
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


def _prediction_state(
    folder: Path, cases: Sequence[str], file_ending: str, expect: Mapping[str, Any]
) -> tuple[str, str]:
    """(``complete`` | ``missing`` | ``stale``, detail) of one prediction folder."""
    if not folder.is_dir():
        return "missing", "no folder"
    have = _label_cases(folder, file_ending)
    record = folder / PREDICTION_RECORD
    if record.is_file():
        try:
            rec = json.loads(record.read_text())
        except json.JSONDecodeError:
            rec = {}
        diff = [k for k, v in expect.items() if rec.get(k) != v]
        if diff:
            return "stale", ", ".join(f"{k} {rec.get(k)} (now {expect[k]})" for k in diff)
    lacking = [c for c in cases if c not in have]
    if lacking:
        return "missing", f"{len(lacking)} of {len(cases)} case(s) not predicted"
    return "complete", ""


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

    Raises
    ------
    BenchmarkError
        A bad manifest, missing image or label folders, missing predictions (without
        ``predict``), a missing trained fold or a failed ``nnUNetv2_predict``.
    FileExistsError
        ``output`` is not empty and ``overwrite`` is False (checked before predicting).
    """
    settings = EvaluationSettings.of(settings, **options)
    env = settings.env
    trainers, fold_list, metrics = common_setup(trainers, settings)
    shifted = Path(shifted).absolute()  # the printed commands must work from anywhere
    manifest = read_shift_manifest(shifted)
    results = require_env_folder("nnUNet_results", env)
    name = resolve_dataset_name(dataset, env)
    test = _TestSet.of(shifted, manifest, name, env)
    inputs = _shift_inputs(shifted, manifest, test)
    out = settings.output_folder(results / name / ROBUSTNESS_DIRNAME / "scanner-shift")
    check_output_folder(out, settings.overwrite)
    pred_root = Path(predictions).absolute() if predictions is not None else shifted / "predictions"

    predictor = _Predictor(
        name, results, fold_list, device, tuple(extra_args), tuple(predict_command),
        runner if runner is not None else run_command, settings,
    )  # fmt: skip
    todo = _missing_predictions(trainers, inputs, pred_root, test, predictor)
    if todo and not predict:
        lines = ["  " + shlex.join(predictor.command(t, i, o)) for t, _, i, o in todo]
        raise BenchmarkError(
            f"{len(todo)} prediction folder(s) are missing or incomplete under {pred_root}; "
            "rerun with --predict to make them, or run:\n" + "\n".join(lines),
            multiline=True,
        )
    if todo:
        predictor.predict_missing(todo, test.cases, test.file_ending)

    conditions = _shift_conditions(trainers, inputs, pred_root, test)
    plan = _shift_plan(predictor, shifted, manifest, inputs, test, pred_root, trainers, conditions)
    return evaluate_and_write(plan, out, metrics, settings)


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


def _missing_predictions(
    trainers: Sequence[str],
    inputs: Sequence[_Input],
    pred_root: Path,
    test: _TestSet,
    predictor: _Predictor,
) -> list[tuple[str, str, Path, Path]]:
    """(trainer, key, input, output folder) of every prediction folder still to make.

    Raises BenchmarkError listing the folders made with other settings.
    """
    s = predictor.settings
    todo: list[tuple[str, str, Path, Path]] = []
    stale: list[str] = []
    for t in trainers:
        expect = {
            "trainer": t,
            "configuration": s.configuration,
            "plans": s.plans,
            "folds": predictor.folds,
        }
        for key, _, _, folder, _ in inputs:
            target = pred_root / t / key
            state, detail = _prediction_state(target, test.cases, test.file_ending, expect)
            if state == "stale":
                stale.append(f"  {target}: made with {detail}")
            elif state == "missing":
                todo.append((t, key, folder, target))
    if stale:
        raise BenchmarkError(
            "these prediction folders were made with other settings; delete them (or use "
            "--predictions DIR) and run again:\n" + "\n".join(stale),
            multiline=True,
        )
    return todo


def _shift_conditions(
    trainers: Sequence[str], inputs: Sequence[_Input], pred_root: Path, test: _TestSet
) -> dict[tuple[str, str], Condition]:
    """One condition per (trainer, input): its prediction folder against the test labels."""
    conditions: dict[tuple[str, str], Condition] = {}
    for t in trainers:
        for key, pert, k, _, _ in inputs:
            target = pred_root / t / key
            conditions[(t, key)] = Condition(
                key=key,
                trainer=t,
                curve=CLEAN if pert == CLEAN else pert,
                level=float(k),
                label="clean" if pert == CLEAN else f"level {k}",
                sources=[(target, None)],
                reference=test.labels,
                dataset_json=test.ds_json,
                cases={c: None for c in _label_cases(target, test.file_ending)},
            )
    return conditions


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


def _shift_plan(
    predictor: _Predictor,
    shifted: Path,
    manifest: Mapping[str, Any],
    inputs: Sequence[_Input],
    test: _TestSet,
    pred_root: Path,
    trainers: list[str],
    conditions: dict[tuple[str, str], Condition],
) -> RobustnessPlan:
    """The curves and what the outputs record about the comparison."""
    perts = list(dict.fromkeys(p for _, p, _, _, _ in inputs if p != CLEAN))
    covered = {p: c for _, p, _, _, c in inputs if p != CLEAN}
    name, folds, settings = predictor.name, predictor.folds, predictor.settings
    return RobustnessPlan(
        regime="scanner-shift",
        title=f"Robustness to scanner shift: {name}",
        dataset=name,
        axis="severity level (0 = clean test images)",
        clean_level=0.0,
        trainers=trainers,
        conditions=conditions,
        curves=_shift_curves(manifest, inputs),
        meta={
            "configuration": settings.configuration,
            "plans": settings.plans,
            "folds": folds,
            "shifted": str(shifted),
            "predictions": str(pred_root),
            "manifest": json_safe(manifest),
            "covered_by_nnunet": [p for p in perts if covered[p]],
            "not_covered_by_nnunet": [p for p in perts if not covered[p]],
            "how": (
                "Each point is the test-set prediction (nnUNetv2_predict, ensemble of folds "
                f"{', '.join(map(str, folds))}) of the clean images (level 0, {test.images}) or "
                f"of one perturbation at one severity level ({shifted}/<perturbation>/"
                f"level<k>), scored against the test labels {test.labels}. 'Covered' "
                "perturbations are ones nnU-Net's training augmentation already simulates "
                "(noise, blur, gamma, low resolution); the others are not."
            ),
        },
    )


@dataclass(frozen=True)
class _Predictor:
    """How the missing test-set predictions are made: ``nnUNetv2_predict`` per folder."""

    name: str
    results: Path
    folds: list[int]
    device: str | None
    extra_args: tuple[str, ...]
    predict_command: tuple[str, ...]
    runner: Callable[[Sequence[str]], int]
    settings: EvaluationSettings

    def command(self, trainer: str, inp: Path, out: Path) -> list[str]:
        """The ``nnUNetv2_predict`` command line from ``inp`` into ``out``."""
        s = self.settings
        return build_predict_command(
            inp, out, self.name, s.configuration, s.plans, trainer, self.folds, self.device,
            self.extra_args, self.predict_command,
        )  # fmt: skip

    def _fold(self, trainer: str, k: int) -> Path:
        s = self.settings
        return fold_dir(self.results, self.name, trainer, s.plans, s.configuration, k)

    def _check_ready(self, todo: Sequence[tuple[str, str, Path, Path]]) -> None:
        """BenchmarkError if the command is not on PATH or a fold is not trained."""
        exe = self.predict_command[0] if self.predict_command else ""
        if not exe or shutil.which(exe, path=self.settings.env.get("PATH")) is None:
            raise BenchmarkError(
                f"'{exe}' is not on PATH; activate the environment where nnunetv2 is installed"
            )
        s = self.settings
        untrained = sorted(
            {
                f"  {t} fold {k}: no {self._fold(t, k)}/checkpoint_final.pth; train it with\n"
                + train_hint(self.name, t, s.configuration, s.plans, self.folds)
                for t, _, _, _ in todo
                for k in self.folds
                if not (self._fold(t, k) / "checkpoint_final.pth").is_file()
            }
        )
        if untrained:
            raise BenchmarkError(
                "cannot predict with untrained folds:\n" + "\n".join(untrained), multiline=True
            )

    def predict_missing(
        self, todo: Sequence[tuple[str, str, Path, Path]], cases: Sequence[str], file_ending: str
    ) -> None:
        """Run ``nnUNetv2_predict`` for every missing folder, into ``.<folder>.partial`` first."""
        self._check_ready(todo)
        s = self.settings
        for i, (t, key, inp, target) in enumerate(todo, 1):
            partial = target.with_name(f".{target.name}.partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.parent.mkdir(parents=True, exist_ok=True)
            cmd = self.command(t, inp, partial)
            s.print_fn(f"[{i}/{len(todo)}] predict {t} {key}: {shlex.join(cmd)}")
            rc = self.runner(cmd)
            if rc != 0:
                raise BenchmarkError(
                    f"nnUNetv2_predict failed with exit code {rc} for {t} {key}: "
                    f"{shlex.join(cmd)}; the folders finished so far are kept, run the same "
                    "command again to continue"
                )
            lacking = [c for c in cases if not (partial / f"{c}{file_ending}").is_file()]
            if lacking:
                raise BenchmarkError(
                    f"nnUNetv2_predict exited with 0 but wrote no prediction for {len(lacking)} "
                    f"case(s) into {partial} ({', '.join(lacking[:5])})"
                )
            record = {
                "trainer": t,
                "configuration": s.configuration,
                "plans": s.plans,
                "folds": self.folds,
                "dataset": self.name,
                "input": str(inp),
                "command": list(cmd),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (partial / PREDICTION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():  # an incomplete folder from an earlier, interrupted run
                shutil.rmtree(target)
            os.replace(partial, target)
