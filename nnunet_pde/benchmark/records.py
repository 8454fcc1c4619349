"""Fold records: what a finished training contributes to a report, small enough to keep.

``nnunet-pde benchmark export`` evaluates every finished (run, trainer, fold) once and writes
a *record* of it: the per-case metrics of its validation predictions (``metrics_per_case.csv``,
the rows ``benchmark report`` would compute) and ``record.json`` (which fold, run and cases,
the settings the metrics were computed with, and nnU-Net's logger of ``checkpoint_final.pth``:
the per-epoch losses, pseudo Dice and PDE-block series). A record holds no image and no
weight: a few tens of kB per fold, where the fold's folder holds the checkpoints (tens to
hundreds of MB) and the predicted images.

``benchmark report --records DIR`` then builds the same report from the records alone,
without ``$nnUNet_results`` or ``$nnUNet_preprocessed``: on another machine, after the
results tree is gone, or from records exported on several machines (runs trained elsewhere).

Layout (one folder per record)::

    DIR/<trainer>__<plans>__<configuration>/run_<r>/fold_<k>/
        metrics_per_case.csv
        record.json

A record is rewritten only when the fold's ``checkpoint_final.pth`` changed since (its size
and modification time are in ``record.json``) or with ``overwrite``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.manifest import software_versions
from nnunet_pde.benchmark.pooling import PooledPredictions, pool_predictions
from nnunet_pde.benchmark.runs import run_results
from nnunet_pde.benchmark.settings import (
    EvaluationSettings,
    dataset_references,
    evaluate_fold_folder,
)
from nnunet_pde.benchmark.trajectories import FoldLog, checkpoint_logging
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.files import read_json, write_json
from nnunet_pde.folders import (
    check_trainer_names,
    dataset_id,
    fold_dir,
    parse_folds,
    read_splits,
    require_env_folder,
    resolve_dataset_name,
    trainer_dir_name,
)
from nnunet_pde.metrics.aggregate import json_safe
from nnunet_pde.metrics.per_case_csv import PER_CASE_CSV, read_per_case_csv, write_per_case_csv

__all__ = [
    "RECORD_JSON",
    "ExportOutcome",
    "LoadedRecords",
    "export_records",
    "find_record",
    "load_records",
    "record_dir",
]

RECORD_JSON = "record.json"
#: The files of a complete record; a folder lacking one of them is not read as a record.
RECORD_FILES = (PER_CASE_CSV, RECORD_JSON)
RECORD_KIND = "nnunet_pde fold record"
RECORD_VERSION = 1


def record_dir(
    root: str | os.PathLike[str], trainer: str, plans: str, configuration: str, run: int, fold: int
) -> Path:
    """``root/<trainer>__<plans>__<configuration>/run_<run>/fold_<fold>``."""
    return (
        Path(root)
        / trainer_dir_name(trainer, plans, configuration)
        / f"run_{run}"
        / (f"fold_{fold}")
    )


def find_record(
    root: str | os.PathLike[str], trainer: str, plans: str, configuration: str, run: int, fold: int
) -> Path | None:
    """The folder of the complete record (CSV and ``record.json``) of this fold, or None."""
    folder = record_dir(root, trainer, plans, configuration, run, fold)
    return None if _missing_files(folder) else folder


def _missing_files(folder: Path) -> list[str]:
    """The names of :data:`RECORD_FILES` that ``folder`` lacks (all of them if it is absent)."""
    return [n for n in RECORD_FILES if not (folder / n).is_file()]


def _why_no_record(folder: Path) -> tuple[str, bool]:
    """Why ``folder`` is not a complete record, and whether it is half-written (the folder
    exists but lacks one of its files: an export that was cut off, or a partial copy)."""
    if not folder.is_dir():
        return f"no record in {folder}", False
    return (
        f"incomplete record in {folder}: {' and '.join(_missing_files(folder))} missing (an "
        "export cut off, or a partial copy); write it again with nnunet-pde benchmark export"
    ), True


@dataclass
class ExportOutcome:
    """What ``export_records`` did: records written, records kept (up to date), and the
    (run, trainer, fold) that have nothing to export yet, with why."""

    output: Path
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [
            f"{len(self.written)} record(s) written, {len(self.kept)} up to date, "
            f"{len(self.skipped)} fold(s) not finished, in {self.output}"
        ]
        lines += [f"  wrote {p}" for p in self.written]
        lines += [f"  not exported: {s}" for s in self.skipped]
        return lines


def _checkpoint_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _is_current(folder: Path, stamp: Mapping[str, int]) -> bool:
    """Whether ``folder`` holds a complete record of the checkpoint with ``stamp``."""
    if _missing_files(folder):
        return False
    try:
        old = read_json(folder / RECORD_JSON, BenchmarkError)
    except BenchmarkError:
        return False
    return isinstance(old, dict) and old.get("checkpoint") == dict(stamp)


def export_records(
    dataset: str | int,
    trainers: Sequence[str],
    output: str | os.PathLike[str],
    runs: Sequence[int] = (1,),
    settings: EvaluationSettings | None = None,
    **options: Any,
) -> ExportOutcome:
    """Write the record of every finished (run, trainer, fold) into ``output``.

    Parameters
    ----------
    dataset
        Dataset id or ``DatasetNNN_Name`` (looked up as nnU-Net does).
    trainers, runs
        Trainers and run indices (:func:`nnunet_pde.benchmark.runs.run_results`).
    output
        Records folder (created).
    settings, **options
        :class:`~nnunet_pde.benchmark.settings.EvaluationSettings` or its fields: folds,
        plans, configuration, the NSD tolerance, workers, ``overwrite`` (rewrite every
        record), ``environ``, ``print_fn``.

    Only finished folds are exported (``checkpoint_final.pth`` and ``validation/summary.json``,
    as for ``benchmark report``); the others are listed in :attr:`ExportOutcome.skipped`.
    """
    settings = EvaluationSettings.of(settings, **options)
    env = settings.env
    trainers = check_trainer_names(trainers)
    fold_list = parse_folds(settings.folds)
    results = require_env_folder("nnUNet_results", env)
    pre = require_env_folder("nnUNet_preprocessed", env)
    name = resolve_dataset_name(dataset, env)
    gt, ds_json = dataset_references(pre / name)
    ds = read_json(ds_json, BenchmarkError)
    file_ending = str(ds.get("file_ending", ".nii.gz"))
    splits = read_splits(pre / name)
    out = ExportOutcome(Path(output))
    for run in runs:
        root = run_results(results, run)
        for t in trainers:
            for k in fold_list:
                what = f"{t} run {run} fold {k}"
                pooled = pool_predictions(
                    root, name, t, settings.plans, settings.configuration, [k], file_ending,
                    splits,
                )  # fmt: skip
                if k not in pooled.folds_found:
                    out.skipped.append(f"{what}: {pooled.missing_folds.get(k, 'no predictions')}")
                    continue
                fold = fold_dir(root, name, t, settings.plans, settings.configuration, k)
                stamp = _checkpoint_stamp(fold / "checkpoint_final.pth")
                target = record_dir(out.output, t, settings.plans, settings.configuration, run, k)
                if not settings.overwrite and _is_current(target, stamp):
                    out.kept.append(target)
                    continue
                settings.print_fn(f"exporting {what} ({fold})")
                rows = evaluate_fold_folder(fold / "validation", gt, ds_json, settings)
                logging = checkpoint_logging(fold / "checkpoint_final.pth")
                record = {
                    "kind": RECORD_KIND,
                    "version": RECORD_VERSION,
                    "dataset": name,
                    "trainer": t,
                    "plans": settings.plans,
                    "configuration": settings.configuration,
                    "run": int(run),
                    "fold": int(k),
                    "tolerance_mm": float(settings.tolerance_mm),
                    "labels": ds.get("labels"),
                    "cases": sorted(pooled.cases),
                    "missing_cases": pooled.missing_cases.get(k, []),
                    "unexpected_cases": pooled.unexpected_cases.get(k, []),
                    "source": str(fold),
                    "checkpoint": stamp,
                    "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "software": software_versions(),
                    "logging": logging,
                }
                target.mkdir(parents=True, exist_ok=True)
                # the CSV first: a record.json without its CSV is never current
                write_per_case_csv(rows, target / PER_CASE_CSV)
                write_json(target / RECORD_JSON, json_safe(record), allow_nan=False)
                out.written.append(target)
    return out


@dataclass
class LoadedRecords:
    """The records of a report: per-case rows (with ``trainer``, ``fold`` and ``run``), the
    training logs, and per (run, trainer) what the records pool."""

    dataset: str
    per_case: list[dict[str, Any]]
    logs: list[FoldLog]
    pooled: dict[int, dict[str, PooledPredictions]]


def _nan_lists(obj: Any) -> Any:
    """``None`` back to NaN inside the logger's lists (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _nan_lists(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [math.nan if v is None else _nan_lists(v) for v in obj]
    return obj


def load_records(
    root: str | os.PathLike[str],
    dataset: str | int,
    trainers: Sequence[str],
    folds: Sequence[int],
    runs: Sequence[int],
    plans: str = "nnUNetPlans",
    configuration: str = "3d_fullres",
    tolerance_mm: float = 1.0,
    print_fn: Callable[[str], None] = print,
) -> LoadedRecords:
    """Read the records of ``trainers`` x ``folds`` x ``runs`` from ``root``.

    Raises
    ------
    BenchmarkError
        ``root`` is not a folder; a trainer has no record in a run; a record belongs to
        another dataset or was computed at another NSD tolerance; a record is unreadable.
        A missing fold of a trainer that has others is named and left out, as ``benchmark
        report`` does with a results tree.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(
            f"--records {root} is not a folder; write records with nnunet-pde benchmark export"
        )
    want = str(dataset)
    per_case: list[dict[str, Any]] = []
    logs: list[FoldLog] = []
    pooled: dict[int, dict[str, PooledPredictions]] = {}
    name = None
    for run in runs:
        pooled[run] = {}
        for t in trainers:
            p = PooledPredictions(t, root / trainer_dir_name(t, plans, configuration))
            half_written: list[str] = []
            for k in folds:
                folder = find_record(root, t, plans, configuration, run, k)
                if folder is None:
                    missing = record_dir(root, t, plans, configuration, run, k)
                    p.missing_folds[k], half = _why_no_record(missing)
                    if half:
                        half_written.append(p.missing_folds[k])
                    continue
                rec = read_json(folder / RECORD_JSON, BenchmarkError)
                if not isinstance(rec, dict) or rec.get("kind") != RECORD_KIND:
                    raise BenchmarkError(f"{folder / RECORD_JSON} is not a fold record")
                ds = str(rec.get("dataset", ""))
                if want not in (ds, dataset_id(ds)):
                    raise BenchmarkError(f"{folder} is a record of {ds}, not of dataset {want}")
                name = ds
                if not math.isclose(float(rec.get("tolerance_mm", math.nan)), tolerance_mm):
                    raise BenchmarkError(
                        f"{folder}: its metrics were computed at an NSD tolerance of "
                        f"{rec.get('tolerance_mm')} mm, this report asks for {tolerance_mm} mm; "
                        f"pass --tolerance-mm {rec.get('tolerance_mm')} or export again with "
                        f"--tolerance-mm {tolerance_mm} --overwrite"
                    )
                try:
                    rows = read_per_case_csv(folder / PER_CASE_CSV)
                except (KeyError, ValueError) as exc:
                    raise BenchmarkError(
                        f"{folder / PER_CASE_CSV} does not read as per-case metrics ({exc}); "
                        "export the fold again with --overwrite"
                    ) from None
                per_case += [{"trainer": t, "fold": k, "run": run, **r} for r in rows]
                p.folds_found.append(k)
                for c in rec.get("cases", []):
                    p.cases[c] = k
                if rec.get("missing_cases"):
                    p.missing_cases[k] = list(rec["missing_cases"])
                if rec.get("unexpected_cases"):
                    p.unexpected_cases[k] = list(rec["unexpected_cases"])
                if isinstance(rec.get("logging"), dict):
                    logs.append(FoldLog(t, int(run), int(k), _nan_lists(rec["logging"])))
            if not p.folds_found:
                raise BenchmarkError(
                    f"{t}: no record of run {run} for folds {', '.join(map(str, folds))} in "
                    f"{root}; export it with nnunet-pde benchmark export"
                    + "".join(f"\n  {w}" for w in half_written)
                )
            line = f"{t} (run {run}): {len(p.cases)} cases from the records of folds "
            line += ", ".join(map(str, p.folds_found))
            if p.missing_folds:
                line += f"; MISSING folds {', '.join(map(str, p.missing_folds))}"
            print_fn(line)
            pooled[run][t] = p
    return LoadedRecords(str(name), per_case, logs, pooled)
