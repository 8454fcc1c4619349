"""Evaluate a folder of predicted segmentations against a folder of reference segmentations.

This is the thin layer between files and the pure metric functions: it reads label maps with
SimpleITK, turns them into one binary mask per label or region of ``dataset.json`` (nnU-Net
convention: an integer label ``v`` gives ``seg == v``, a region ``[a, b, c]`` gives
``isin(seg, [a, b, c])``; voxels with the ``ignore`` label in the reference are left out),
calls :func:`nnunet_pde.metrics.case.compute_metrics` per case in parallel, and writes

* ``metrics_per_case.csv``: one row per case and region, and
* ``metrics_summary.json``: per-region statistics over cases (see
  :func:`nnunet_pde.metrics.aggregate.aggregate`),

into the prediction folder (or ``output_dir``). nnU-Net's own ``summary.json`` is never
touched, and an existing output of ours is only replaced with ``overwrite=True``.

Arrays are in numpy axis order (z, y, x for 3-D images) and spacings in mm along those axes:
SimpleITK reports spacing in (x, y, z) order, which is reversed here once, on reading.

This module is the pipeline: per-case evaluation, the worker pool and the summary. Its
inputs (``dataset.json``'s regions, the matched case files) are read by
:mod:`nnunet_pde.metrics.inputs`, the label maps and their grids checked by
:mod:`nnunet_pde.metrics.label_maps`, and the per-case table written by
:mod:`nnunet_pde.metrics.per_case_csv`; their public names are importable from here too. The
command line is in :mod:`nnunet_pde.cli.evaluate`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.files import atomic_write_text
from nnunet_pde.metrics.aggregate import ImputationPolicy, aggregate, json_safe
from nnunet_pde.metrics.case import MaskMetrics, compute_metrics, image_diagonal_mm
from nnunet_pde.metrics.inputs import (
    EvaluationError,
    Region,
    find_dataset_json,
    load_dataset_json,
    match_cases,
    regions_from_dataset_json,
)
from nnunet_pde.metrics.label_maps import (
    check_geometry,
    checked_labels,
    geometry_problem,
    read_label_map,
    read_segmentation,
)
from nnunet_pde.metrics.per_case_csv import (
    CSV_COLUMNS,
    PER_CASE_CSV,
    read_per_case_csv,
    write_per_case_csv,
)
from nnunet_pde.metrics.surface import SURFACE_CONNECTIVITY

__all__ = [
    "CSV_COLUMNS",
    "PER_CASE_CSV",
    "SUMMARY_JSON",
    "EvaluationError",
    "Region",
    "evaluate_case",
    "evaluate_folders",
    "evaluate_segmentations",
    "find_dataset_json",
    "match_cases",
    "read_per_case_csv",
    "read_segmentation",
    "regions_from_dataset_json",
]


SUMMARY_JSON = "metrics_summary.json"
#: nnU-Net's file in the same folders; named here only to make sure we never write it.
NNUNET_SUMMARY = "summary.json"


def evaluate_segmentations(
    pred_seg: np.ndarray,
    ref_seg: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    regions: Sequence[Region],
    ignore_label: int | None = None,
    tolerance_mm: float = 1.0,
) -> list[tuple[Region, MaskMetrics]]:
    """Metrics of every region of one case, from label maps already in memory.

    Parameters
    ----------
    pred_seg, ref_seg
        Integer label maps of equal shape, numpy axis order.
    spacing
        Voxel size in mm per axis, numpy axis order.
    regions
        Labels or regions to evaluate (see :func:`regions_from_dataset_json`).
    ignore_label
        Reference voxels with this value are removed from both masks before any metric.
    tolerance_mm
        NSD tolerance in mm.
    """
    if pred_seg.shape != ref_seg.shape:
        raise EvaluationError(f"shape {pred_seg.shape} (prediction) vs {ref_seg.shape} (reference)")
    valid = None if ignore_label is None else ref_seg != ignore_label
    out = []
    for region in regions:
        p, r = region.mask(pred_seg), region.mask(ref_seg)
        if valid is not None:
            p, r = p & valid, r & valid
        out.append((region, compute_metrics(p, r, spacing, tolerance_mm)))
    return out


def evaluate_case(
    case: str,
    pred_path: Path,
    ref_path: Path,
    regions: Sequence[Region],
    ignore_label: int | None = None,
    tolerance_mm: float = 1.0,
) -> list[dict[str, Any]]:
    """Read one prediction/reference pair and return its CSV rows (one per region)."""
    allowed = {0, *(v for r in regions for v in r.values)}
    if ignore_label is not None:
        allowed.add(int(ignore_label))
    pred_seg, geo_p = read_label_map(pred_path)
    ref_seg, geo_r = read_label_map(ref_path)
    sp_r = np.asarray(geo_r.spacing, dtype=np.float64)
    pred_seg = checked_labels(pred_seg, pred_path, "prediction", allowed)
    ref_seg = checked_labels(ref_seg, ref_path, "reference", allowed)
    # evaluate_case is public and may be called on its own: check the grids it just read
    problem = geometry_problem(case, geo_p, geo_r)
    if problem:
        raise EvaluationError(f"geometry differs between prediction and reference: {problem}")
    diagonal = image_diagonal_mm(ref_seg.shape, sp_r)
    rows = []
    for region, m in evaluate_segmentations(
        pred_seg, ref_seg, sp_r, regions, ignore_label, tolerance_mm
    ):
        rows.append(
            {
                "case": case,
                "region": region.name,
                "labels": region.key,
                **m.as_dict(),
                "image_diagonal_mm": diagonal,
            }
        )
    return rows


def _evaluate_case_task(args: tuple) -> list[dict[str, Any]]:
    case = args[0]
    try:
        return evaluate_case(*args)
    except EvaluationError:
        raise
    except Exception as exc:  # report which case failed; the worker's traceback is lost anyway
        raise EvaluationError(f"case {case}: {type(exc).__name__}: {exc}") from None


def default_num_workers() -> int:
    """Processes used by default: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _run_cases(tasks: list[tuple], num_workers: int, progress: bool) -> list[list[dict[str, Any]]]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(tasks), desc="evaluating", unit="case", disable=not progress, file=sys.stderr
    )
    results: list[list[dict[str, Any]] | None] = [None] * len(tasks)
    try:
        if num_workers <= 1 or len(tasks) == 1:
            for i, t in enumerate(tasks):
                results[i] = _evaluate_case_task(t)
                bar.update()
        else:
            # spawn, not fork: the parent may hold threads (tqdm's monitor, BLAS pools) and
            # forking a threaded process can deadlock; the workers need only numpy/scipy/SimpleITK.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(num_workers, len(tasks)), mp_context=ctx
            ) as ex:
                futures = {ex.submit(_evaluate_case_task, t): i for i, t in enumerate(tasks)}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        if f.exception() is not None:
                            for p in pending:
                                p.cancel()
                            raise f.exception()  # type: ignore[misc]
                        results[futures[f]] = f.result()
                        bar.update()
    finally:
        bar.close()
    return [r for r in results if r is not None]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunet-pde")
    except Exception:  # running from a source tree without metadata
        from nnunet_pde._version import __version__

        return __version__


def _check_outputs(
    out_dir: Path, csv_path: Path, json_path: Path, overwrite: bool, ref_dir: Path
) -> None:
    """Refuse an output folder inside the reference (label) folder or that is a file, and
    existing outputs without ``overwrite``. (The prediction folder is the default output
    folder, as for nnU-Net's own ``summary.json``.)"""
    resolved, labels = out_dir.resolve(), ref_dir.resolve()
    if resolved == labels or labels in resolved.parents:
        raise EvaluationError(
            f"--output {out_dir} is inside the reference folder {ref_dir}: the outputs would "
            "be written among the labels; give another folder"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(
            f"--output: {out_dir} exists and is not a folder; give a folder for "
            f"{PER_CASE_CSV} and {SUMMARY_JSON}"
        )
    if not overwrite:
        existing = [str(p) for p in (csv_path, json_path) if p.exists()]
        if existing:
            raise FileExistsError(
                f"{' and '.join(existing)} already exist(s); pass --overwrite to "
                "replace, or --output DIR to write elsewhere"
            )


def _summary_metadata(
    pred_dir: Path,
    ref_dir: Path,
    ds_path: Path | None,
    file_ending: str,
    n_cases: int,
    regions: Sequence[Any],
    ignore_label: int | None,
    tolerance_mm: float,
) -> dict[str, Any]:
    """The ``metadata`` of ``metrics_summary.json``."""
    return {
        "prediction_folder": str(pred_dir.resolve()),
        "reference_folder": str(ref_dir.resolve()),
        "dataset_json": str(ds_path.resolve()) if ds_path is not None else None,
        "file_ending": file_ending,
        "n_cases": n_cases,
        "regions": {r.name: r.key for r in regions},
        "ignore_label": ignore_label,
        "tolerance_mm": float(tolerance_mm),
        "hd_percentile": 95.0,
        "surface_connectivity": SURFACE_CONNECTIVITY,
        "nnunet_pde_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    ref_dir: str | os.PathLike[str],
    dataset_json: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    num_workers: int | None = None,
    tolerance_mm: float = 1.0,
    progress: bool = True,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    policy: ImputationPolicy | None = None,
    allow_missing_predictions: bool = False,
    write: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate every prediction in ``pred_dir`` against its reference in ``ref_dir``.

    Parameters
    ----------
    pred_dir, ref_dir
        Folders of label maps named ``CASE<file_ending>`` (nnU-Net layout).
    dataset_json
        Path to ``dataset.json`` or its parsed content; None looks for it next to the folders
        (:func:`find_dataset_json`). Gives the labels/regions, the ignore label and the file
        ending (default ``.nii.gz``).
    num_workers
        Processes, one case each at a time; 1 runs inline; None = :func:`default_num_workers`.
    tolerance_mm
        NSD tolerance in mm.
    progress
        Show a progress bar on stderr.
    output_dir
        Where to write the outputs (default: ``pred_dir``).
    overwrite
        Replace existing ``metrics_per_case.csv`` / ``metrics_summary.json``.
    policy
        Imputation of infinite distances in the summary (default ``volume_diagonal``).
    allow_missing_predictions
        Evaluate only the cases that have a prediction instead of failing.
    write
        Write the two output files (False: only return the results).

    Returns
    -------
    (rows, summary)
        ``rows``: one dict per case and region with the keys :data:`CSV_COLUMNS`, sorted by
        case then region order; ``summary``: the content of ``metrics_summary.json``.

    Raises
    ------
    EvaluationError
        Missing folders, unmatched cases, geometry mismatches, bad ``dataset.json``,
        unreadable files.
    FileExistsError
        An output file exists and ``overwrite`` is False (checked before any work).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    policy = policy or ImputationPolicy()
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise EvaluationError(
            f"the NSD tolerance must be a finite number >= 0 mm, got {tolerance_mm}"
        )
    if num_workers is not None and num_workers < 1:
        raise EvaluationError(f"the number of workers must be >= 1, got {num_workers}")
    for what, folder in (("prediction", pred_dir), ("reference", ref_dir)):
        if not folder.is_dir():
            raise EvaluationError(f"{what} folder {folder} does not exist or is not a folder")

    ds_path, ds = load_dataset_json(dataset_json, pred_dir, ref_dir)
    regions, ignore_label = regions_from_dataset_json(ds)
    file_ending = str(ds.get("file_ending", ".nii.gz"))

    out_dir = Path(output_dir) if output_dir is not None else pred_dir
    csv_path, json_path = out_dir / PER_CASE_CSV, out_dir / SUMMARY_JSON
    if write:
        _check_outputs(out_dir, csv_path, json_path, overwrite, ref_dir)
    pairs = match_cases(pred_dir, ref_dir, file_ending, allow_missing_predictions)
    check_geometry(pairs)
    n_workers = default_num_workers() if num_workers is None else num_workers
    tasks = [(case, p, r, regions, ignore_label, float(tolerance_mm)) for case, p, r in pairs]
    rows = [row for case_rows in _run_cases(tasks, n_workers, progress) for row in case_rows]

    summary = {
        "metadata": _summary_metadata(
            pred_dir,
            ref_dir,
            ds_path,
            file_ending,
            len(pairs),
            regions,
            ignore_label,
            tolerance_mm,
        ),  # fmt: skip
        **aggregate(rows, policy),
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Our names can never be nnU-Net's, but guard against a future rename.
        assert NNUNET_SUMMARY not in (csv_path.name, json_path.name)
        write_per_case_csv(rows, csv_path)
        atomic_write_text(json_path, json.dumps(json_safe(summary), indent=2, allow_nan=False))
    return rows, summary
