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

Size (about 650 lines): matching, reading, per-case evaluation, the worker pool and the
summary writers form one pipeline; the command line is in :mod:`nnunet_pde.cli.evaluate`.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.errors import NnunetPdeError, atomic_save
from nnunet_pde.files import list_cases, read_image, read_image_header
from nnunet_pde.metrics.aggregate import (
    ImputationPolicy,
    aggregate,
    json_safe,
)
from nnunet_pde.metrics.case import MaskMetrics, compute_metrics, image_diagonal_mm
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

PER_CASE_CSV = "metrics_per_case.csv"
SUMMARY_JSON = "metrics_summary.json"
#: nnU-Net's file in the same folders; named here only to make sure we never write it.
NNUNET_SUMMARY = "summary.json"

#: Columns of ``metrics_per_case.csv``, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "case",
    "region",
    "labels",
    *MaskMetrics.field_names(),
    "image_diagonal_mm",
)

#: Relative tolerance when comparing prediction and reference spacing: nnU-Net copies the
#: reference geometry into its exports, so anything beyond rounding is a real mismatch.
SPACING_RTOL = 1e-4
#: Tolerances for origin (mm) and direction cosines: ``np.allclose(a, b, rtol, atol)``. nnU-Net's
#: ``verify_dataset_integrity`` compares them with allclose's defaults (rtol 1e-5, atol 1e-8)
#: and only warns; here a mismatch is refused, and atol 1e-5 absorbs the float32 storage of
#: values near zero in NIfTI headers.
GEOMETRY_RTOL = 1e-5
GEOMETRY_ATOL = 1e-5


class EvaluationError(NnunetPdeError):
    """The input folders cannot be evaluated as given; the message says what to change."""


@dataclass(frozen=True)
class Region:
    """A label or region of ``dataset.json``.

    Attributes
    ----------
    name
        Its key in ``dataset.json["labels"]``, e.g. ``"whole tumor"``.
    values
        Label values whose union is the mask, e.g. ``(1, 2, 3)``.
    key
        nnU-Net's key for it in ``summary.json``: ``"1"`` for a label, ``"(1, 2, 3)"`` for a
        region, so rows can be matched with nnU-Net's own numbers.
    """

    name: str
    values: tuple[int, ...]
    key: str

    def mask(self, seg: np.ndarray) -> np.ndarray:
        """Binary mask of this label or region in a label map."""
        if len(self.values) == 1:
            return seg == self.values[0]
        return np.isin(seg, self.values)


def regions_from_dataset_json(dataset_json: Mapping[str, Any]) -> tuple[list[Region], int | None]:
    """Foreground labels or regions of a ``dataset.json`` and its ignore label.

    Parameters
    ----------
    dataset_json
        The parsed ``dataset.json`` of an nnU-Net dataset.

    Returns
    -------
    (regions, ignore_label)
        Every entry of ``labels`` except ``background`` (value 0) and ``ignore``, in file order;
        ``ignore_label`` is the value of ``labels["ignore"]`` or None.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise EvaluationError(
            "dataset.json has no 'labels' mapping (name -> value or list of values)"
        )
    regions: list[Region] = []
    ignore: int | None = None
    for name, value in labels.items():
        if name == "ignore":
            ignore = int(value)
            continue
        if isinstance(value, list | tuple):
            values = tuple(int(v) for v in value)
            key = str(values)
        else:
            values = (int(value),)
            key = str(values[0])
        if name == "background" or values == (0,):
            continue
        if not values:
            raise EvaluationError(f"dataset.json label '{name}' has an empty list of values")
        regions.append(Region(name=str(name), values=values, key=key))
    if not regions:
        raise EvaluationError("dataset.json declares no foreground label or region to evaluate")
    return regions, ignore


def find_dataset_json(pred_dir: Path, ref_dir: Path) -> Path | None:
    """The ``dataset.json`` nnU-Net keeps next to these folders, or None.

    Looked for in this order: the prediction folder (``nnUNetv2_predict`` copies it there),
    its parent and grandparent (``fold_X/validation`` -> trainer folder), and the parent of
    the reference folder (``labelsTr`` -> raw dataset folder).
    """
    for folder in (pred_dir, pred_dir.parent, pred_dir.parent.parent, ref_dir.parent):
        candidate = folder / "dataset.json"
        if candidate.is_file():
            return candidate
    return None


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def match_cases(
    pred_dir: Path,
    ref_dir: Path,
    file_ending: str = ".nii.gz",
    allow_missing_predictions: bool = False,
) -> list[tuple[str, Path, Path]]:
    """Pair prediction and reference files by case id (file name without ``file_ending``).

    Raises
    ------
    EvaluationError
        If a folder is missing or has no ``*file_ending`` file, if a prediction has no
        reference, or if a reference has no prediction (unless ``allow_missing_predictions``,
        which evaluates only the predicted cases, e.g. one fold's validation folder against
        all training labels). The message lists the unmatched case ids.
    """
    for what, folder in (("prediction", pred_dir), ("reference", ref_dir)):
        if not folder.is_dir():
            raise EvaluationError(f"{what} folder {folder} does not exist or is not a folder")
    preds = list_cases(pred_dir, file_ending)
    refs = list_cases(ref_dir, file_ending)
    if not preds:
        raise EvaluationError(f"no *{file_ending} files in the prediction folder {pred_dir}")
    if not refs:
        raise EvaluationError(f"no *{file_ending} files in the reference folder {ref_dir}")
    no_ref = sorted(set(preds) - set(refs))
    if no_ref:
        raise EvaluationError(
            f"{len(no_ref)} prediction(s) in {pred_dir} have no reference in {ref_dir}: "
            f"{_preview(no_ref)}"
        )
    no_pred = sorted(set(refs) - set(preds))
    if no_pred and not allow_missing_predictions:
        raise EvaluationError(
            f"{len(no_pred)} reference case(s) in {ref_dir} have no prediction in {pred_dir}: "
            f"{_preview(no_pred)}. Evaluating only the predicted cases would hide them; pass "
            "--allow-missing (allow_missing_predictions=True) if that is intended, e.g. for one "
            "fold's validation folder"
        )
    return [(case, preds[case], refs[case]) for case in sorted(preds)]


@dataclass(frozen=True)
class _Geometry:
    """An image's grid: shape and spacing in numpy order (z, y, x); origin (mm) and the
    direction matrix (row-major 3x3 for 3-D) in SimpleITK's physical order (x, y, z, LPS)."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def _geometry(image: Any) -> _Geometry:
    """The grid of a SimpleITK image or of an ``ImageFileReader`` after its header read."""
    return _Geometry(
        tuple(reversed(image.GetSize())),
        tuple(reversed(image.GetSpacing())),
        tuple(image.GetOrigin()),
        tuple(image.GetDirection()),
    )


def _read_header(path: Path) -> _Geometry:
    return _geometry(read_image_header(path, EvaluationError))


def _read_label_map(path: Path) -> tuple[np.ndarray, _Geometry]:
    """A label map (numpy order) and its grid, from one read of ``path``."""
    import SimpleITK as sitk

    img = read_image(path, EvaluationError)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(
            f"{path} has {img.GetNumberOfComponentsPerPixel()} components per "
            "voxel; a segmentation must be a single-component label map"
        )
    return sitk.GetArrayFromImage(img), _geometry(img)


def read_segmentation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label map and its spacing, both in numpy axis order.

    Returns
    -------
    (seg, spacing)
        ``seg``: integer array (z, y, x for 3-D); ``spacing``: mm per axis, same order.
    """
    seg, geometry = _read_label_map(path)
    return seg, np.asarray(geometry.spacing, dtype=np.float64)


def _checked_labels(seg: np.ndarray, path: Path, what: str, allowed: set[int]) -> np.ndarray:
    """``seg`` as integers; EvaluationError for non-integer values or undeclared labels.

    An undeclared value would silently count as background in every region, and a map of
    probabilities or a resampled float image would score as an empty prediction.
    """
    if not np.issubdtype(seg.dtype, np.integer):
        if seg.dtype == bool:
            seg = seg.astype(np.uint8)
        else:
            finite = np.isfinite(seg)
            if not finite.all() or not np.array_equal(seg, np.round(seg)):
                bad = np.unique(seg[~finite | (seg != np.round(seg))])[:3]
                raise EvaluationError(
                    f"the {what} {path} is not an integer label map ({seg.dtype} values such "
                    f"as {', '.join(f'{v:g}' for v in bad)}); write label values (e.g. "
                    "nnUNetv2_predict output, or argmax of probabilities), not probabilities"
                )
            seg = seg.astype(np.int64)
    values = np.unique(seg)
    unknown = sorted(int(v) for v in values if int(v) not in allowed)
    if unknown:
        raise EvaluationError(
            f"the {what} {path} contains label value(s) {', '.join(map(str, unknown))} that "
            f"dataset.json does not declare (it declares {', '.join(map(str, sorted(allowed)))});"
            " fix the file or pass the dataset.json it belongs to (--dataset-json)"
        )
    return seg


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _geometry_problem(case: str, p: _Geometry, r: _Geometry) -> str | None:
    if p.shape != r.shape:
        return f"{case}: shape {p.shape} (prediction) vs {r.shape} (reference)"
    if not np.allclose(p.spacing, r.spacing, rtol=SPACING_RTOL, atol=0.0):
        return (
            f"{case}: spacing {_fmt(p.spacing)} mm (prediction) vs {_fmt(r.spacing)} mm (reference)"
        )
    if len(p.origin) != len(r.origin) or not np.allclose(
        p.origin, r.origin, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL
    ):
        return (
            f"{case}: origin {_fmt(p.origin)} mm (prediction) vs {_fmt(r.origin)} mm "
            "(reference; physical x, y, z): the prediction is shifted"
        )
    if len(p.direction) != len(r.direction) or not np.allclose(
        p.direction, r.direction, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL
    ):
        return (
            f"{case}: direction {_fmt(p.direction)} (prediction) vs {_fmt(r.direction)} "
            "(reference): the axes are flipped or rotated (a re-export in another "
            "orientation, e.g. RAS vs LPS?)"
        )
    return None


def _check_geometry(pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """Compare all headers before any metric is computed, so every mismatch is listed at once."""
    problems = []
    for case, p, r in pairs:
        problem = _geometry_problem(case, _read_header(p), _read_header(r))
        if problem:
            problems.append(problem)
    if problems:
        raise EvaluationError(
            f"{len(problems)} case(s) differ in geometry between prediction and reference "
            "(shape and spacing in numpy order z, y, x): "
            + "; ".join(problems[:10])
            + (f"; ... ({len(problems) - 10} more)" if len(problems) > 10 else "")
            + ". Scoring would compare voxels that are not at the same place; resample or "
            "re-export the predictions on the reference's grid (nnUNetv2_predict does)"
        )


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
    pred_seg, geo_p = _read_label_map(pred_path)
    ref_seg, geo_r = _read_label_map(ref_path)
    sp_r = np.asarray(geo_r.spacing, dtype=np.float64)
    pred_seg = _checked_labels(pred_seg, pred_path, "prediction", allowed)
    ref_seg = _checked_labels(ref_seg, ref_path, "reference", allowed)
    # evaluate_case is public and may be called on its own: check the grids it just read
    problem = _geometry_problem(case, geo_p, geo_r)
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


def _atomic_write(path: Path, write: Callable[[Any], None], newline: str | None = None) -> None:
    """Write through a temporary file in the same folder so a crash leaves no half file."""

    def save(tmp: Path) -> None:
        with open(tmp, "w", newline=newline, encoding="utf-8") as fh:
            write(fh)

    atomic_save(path, save)


def _format_cell(value: Any) -> Any:
    # repr keeps full float precision; inf/nan come out as "inf"/"nan", which
    # float(), numpy and pandas all read back.
    return repr(value) if isinstance(value, float) else value


def write_per_case_csv(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    """Write per-case rows with the columns :data:`CSV_COLUMNS`."""

    def write(fh: Any) -> None:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _format_cell(row[k]) for k in CSV_COLUMNS})

    _atomic_write(path, write, newline="")


def read_per_case_csv(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics_per_case.csv`` back with numbers as int/float (inf and nan included)."""
    ints = {"pred_voxels", "ref_voxels", "tp", "fp", "fn"}
    text = {"case", "region", "labels", "status"}
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: v if k in text else (int(v) if k in ints else float(v)) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunet-pde")
    except Exception:  # running from a source tree without metadata
        from nnunet_pde._version import __version__

        return __version__


def _load_dataset_json(
    dataset_json: str | os.PathLike[str] | Mapping[str, Any] | None, pred_dir: Path, ref_dir: Path
) -> tuple[Path | None, Mapping[str, Any]]:
    """The dataset.json file (None when given as a mapping) and its content."""
    ds_path: Path | None = None
    if dataset_json is None:
        ds_path = find_dataset_json(pred_dir, ref_dir)
        if ds_path is None:
            raise EvaluationError(
                f"no dataset.json found in or next to {pred_dir} or {ref_dir}; pass --dataset-json "
                "(the dataset.json of the raw dataset, which lists the labels or regions)"
            )
    elif not isinstance(dataset_json, Mapping):
        ds_path = Path(dataset_json)
    if ds_path is None:
        return None, dataset_json  # type: ignore[return-value]
    if not ds_path.is_file():
        raise EvaluationError(f"dataset.json {ds_path} does not exist")
    try:
        return ds_path, json.loads(ds_path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{ds_path} is not valid JSON: {exc}") from None


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

    ds_path, ds = _load_dataset_json(dataset_json, pred_dir, ref_dir)
    regions, ignore_label = regions_from_dataset_json(ds)
    file_ending = str(ds.get("file_ending", ".nii.gz"))

    out_dir = Path(output_dir) if output_dir is not None else pred_dir
    csv_path, json_path = out_dir / PER_CASE_CSV, out_dir / SUMMARY_JSON
    if write:
        _check_outputs(out_dir, csv_path, json_path, overwrite, ref_dir)
    pairs = match_cases(pred_dir, ref_dir, file_ending, allow_missing_predictions)
    _check_geometry(pairs)
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
        _atomic_write(
            json_path,
            lambda fh: json.dump(json_safe(summary), fh, indent=2, allow_nan=False),
        )
    return rows, summary
