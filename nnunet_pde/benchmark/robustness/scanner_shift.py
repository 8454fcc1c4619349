"""``benchmark robustness scanner-shift``: metric versus severity of a scanner shift."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.robustness.model import (
    CLEAN,
    PREDICTION_RECORD,
    ROBUSTNESS_DIRNAME,
    Condition,
    Curve,
    RobustnessOutcome,
    _Plan,
)
from nnunet_pde.benchmark.robustness.pipeline import (
    _check_output,
    _common_setup,
    _finish,
    _preprocessed_dataset_json,
    _train_hint,
)
from nnunet_pde.benchmark.settings import EvaluationSettings
from nnunet_pde.commands import build_predict_command, run_command
from nnunet_pde.derive.scanner_shift import MANIFEST as SHIFT_MANIFEST
from nnunet_pde.derive.scanner_shift import level_folder, read_manifest
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import list_cases
from nnunet_pde.folders import (
    fold_dir,
    require_env_folder,
    resolve_dataset_name,
)
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
        m = read_manifest(shifted)
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
    env, configuration, plans = settings.env, settings.configuration, settings.plans
    print_fn = settings.print_fn
    trainers, fold_list, metrics = _common_setup(trainers, settings)
    shifted = Path(shifted).absolute()  # the printed commands must work from anywhere
    manifest = read_shift_manifest(shifted)
    results = require_env_folder("nnUNet_results", env)
    name = resolve_dataset_name(dataset, env)
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
        ds_json = _preprocessed_dataset_json(
            Path(pre_env) if pre_env else images.parent.parent,
            Path(raw_env) if raw_env else None,
            name,
        )
    for what, folder in (("clean test images", images), ("test labels", labels)):
        if not folder.is_dir():
            raise BenchmarkError(f"the {what} {folder} of {shifted / SHIFT_MANIFEST} do not exist")
    cases = _image_cases(images, file_ending)
    if not cases:
        raise BenchmarkError(f"no *_XXXX{file_ending} images in {images}")
    no_label = sorted(set(cases) - _label_cases(labels, file_ending))
    if no_label:
        raise BenchmarkError(
            f"{len(no_label)} test case(s) have no label in {labels}: {', '.join(no_label[:10])}"
        )

    # Inputs: the clean images, then every perturbation and level of the manifest.
    inputs: list[tuple[str, str, int, Path, bool | None]] = [(CLEAN, CLEAN, 0, images, None)]
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
            have = _image_cases(folder, file_ending)
            if have != cases:
                raise BenchmarkError(
                    f"{folder} has {len(have)} case(s), the clean images {images} have "
                    f"{len(cases)}; derive the shifted images again"
                )
            inputs.append(
                (f"{pert}/level{k}", pert, k, folder, bool(info.get("covered_by_nnunet", False)))
            )

    out = settings.output_folder(results / name / ROBUSTNESS_DIRNAME / "scanner-shift")
    _check_output(out, settings.overwrite)
    pred_root = Path(predictions).absolute() if predictions is not None else shifted / "predictions"

    # What exists, what is missing.
    todo: list[tuple[str, str, Path, Path]] = []  # (trainer, key, input, output folder)
    stale: list[str] = []
    for t in trainers:
        expect = {
            "trainer": t,
            "configuration": configuration,
            "plans": plans,
            "folds": fold_list,
        }
        for key, _, _, folder, _ in inputs:
            target = pred_root / t / key
            state, detail = _prediction_state(target, cases, file_ending, expect)
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
    if todo and not predict:
        lines = [
            "  "
            + shlex.join(
                build_predict_command(
                    i,
                    o,
                    name,
                    configuration,
                    plans,
                    t,
                    fold_list,
                    device,
                    extra_args,
                    predict_command,
                )
            )
            for t, _, i, o in todo
        ]
        raise BenchmarkError(
            f"{len(todo)} prediction folder(s) are missing or incomplete under {pred_root}; "
            "rerun with --predict to make them, or run:\n" + "\n".join(lines),
            multiline=True,
        )
    if todo:
        _predict_missing(
            todo,
            name,
            configuration,
            plans,
            fold_list,
            device,
            extra_args,
            predict_command,
            runner if runner is not None else run_command,
            results,
            cases,
            file_ending,
            env,
            print_fn,
        )

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
                reference=labels,
                dataset_json=ds_json,
                cases={c: None for c in _label_cases(target, file_ending)},
            )
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
    plan = _Plan(
        regime="scanner-shift",
        title=f"Robustness to scanner shift: {name}",
        dataset=name,
        axis="severity level (0 = clean test images)",
        clean_level=0.0,
        trainers=trainers,
        conditions=conditions,
        curves=curves,
        meta={
            "configuration": configuration,
            "plans": plans,
            "folds": fold_list,
            "shifted": str(shifted),
            "predictions": str(pred_root),
            "manifest": json_safe(manifest),
            "covered_by_nnunet": [p for p in perts if covered[p]],
            "not_covered_by_nnunet": [p for p in perts if not covered[p]],
            "how": (
                "Each point is the test-set prediction (nnUNetv2_predict, ensemble of folds "
                f"{', '.join(map(str, fold_list))}) of the clean images (level 0, {images}) or "
                f"of one perturbation at one severity level ({shifted}/<perturbation>/"
                f"level<k>), scored against the test labels {labels}. 'Covered' perturbations "
                "are ones nnU-Net's training augmentation already simulates (noise, blur, "
                "gamma, low resolution); the others are not."
            ),
        },
    )
    return _finish(plan, out, metrics, settings)


def _predict_missing(
    todo: Sequence[tuple[str, str, Path, Path]],
    name: str,
    configuration: str,
    plans: str,
    folds: list[int],
    device: str | None,
    extra_args: Sequence[str],
    predict_command: Sequence[str],
    runner: Callable[[Sequence[str]], int],
    results: Path,
    cases: Sequence[str],
    file_ending: str,
    env: Mapping[str, str],
    print_fn: Callable[[str], None],
) -> None:
    """Run ``nnUNetv2_predict`` for every missing folder, into ``.<folder>.partial`` first."""
    exe = predict_command[0] if predict_command else ""
    if not exe or shutil.which(exe, path=env.get("PATH")) is None:
        raise BenchmarkError(
            f"'{exe}' is not on PATH; activate the environment where nnunetv2 is installed"
        )
    untrained = sorted(
        {
            f"  {t} fold {k}: no {fold_dir(results, name, t, plans, configuration, k)}"
            f"/checkpoint_final.pth; train it with\n"
            + _train_hint(name, t, configuration, plans, folds)
            for t, _, _, _ in todo
            for k in folds
            if not (
                fold_dir(results, name, t, plans, configuration, k) / "checkpoint_final.pth"
            ).is_file()
        }
    )
    if untrained:
        raise BenchmarkError(
            "cannot predict with untrained folds:\n" + "\n".join(untrained), multiline=True
        )
    for i, (t, key, inp, target) in enumerate(todo, 1):
        partial = target.with_name(f".{target.name}.partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.parent.mkdir(parents=True, exist_ok=True)
        cmd = build_predict_command(
            inp, partial, name, configuration, plans, t, folds, device, extra_args, predict_command
        )
        print_fn(f"[{i}/{len(todo)}] predict {t} {key}: {shlex.join(cmd)}")
        rc = runner(cmd)
        if rc != 0:
            raise BenchmarkError(
                f"nnUNetv2_predict failed with exit code {rc} for {t} {key}: {shlex.join(cmd)}; "
                "the folders finished so far are kept, run the same command again to continue"
            )
        lacking = [c for c in cases if not (partial / f"{c}{file_ending}").is_file()]
        if lacking:
            raise BenchmarkError(
                f"nnUNetv2_predict exited with 0 but wrote no prediction for {len(lacking)} "
                f"case(s) into {partial} ({', '.join(lacking[:5])})"
            )
        (partial / PREDICTION_RECORD).write_text(
            json.dumps(
                {
                    "trainer": t,
                    "configuration": configuration,
                    "plans": plans,
                    "folds": folds,
                    "dataset": name,
                    "input": str(inp),
                    "command": list(cmd),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        )
        if target.exists():  # an incomplete folder from an earlier, interrupted run
            shutil.rmtree(target)
        os.replace(partial, target)
