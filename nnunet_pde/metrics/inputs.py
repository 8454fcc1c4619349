"""The inputs of a folder evaluation: the labels and regions of ``dataset.json``, and the
prediction and reference files paired by case.

nnU-Net convention: an integer label ``v`` of ``dataset.json`` gives the mask ``seg == v``,
a region ``[a, b, c]`` gives ``isin(seg, [a, b, c])`` (:class:`Region`); the ``ignore``
label is left out of every mask. Every problem with the inputs is an
:class:`EvaluationError` whose message says what to change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.files import list_cases

__all__ = [
    "EvaluationError",
    "Region",
    "find_dataset_json",
    "load_dataset_json",
    "match_cases",
    "regions_from_dataset_json",
]


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


def load_dataset_json(
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
