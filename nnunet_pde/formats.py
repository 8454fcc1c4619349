"""On-disk formats shared by the commands that write them and those that read them.

Layer 0 (imports only :mod:`nnunet_pde.errors` and :mod:`nnunet_pde.files`): the names of
the files and folders that one command writes and another one reads, and the readers of
those records, so that ``benchmark`` reads what ``derive`` and the few-label trainers write
without importing them.

``derive noisy-labels`` (a derived raw dataset)::

    <dataset>/nnunet_pde_derived.json     DERIVED_JSON: the record (kind NOISY_LABELS_KIND)
    <dataset>/labelsTr_clean/             CLEAN_LABELS_DIR: the untouched source labels

``derive shifted-images`` (an output folder)::

    OUTPUT/nnunet_pde_shift.json                    SHIFT_MANIFEST (kind SHIFT_KIND)
    OUTPUT/<perturbation>/level<k>/                 level_folder(OUTPUT, perturbation, k)
    OUTPUT/<perturbation>/level<k>/parameters.json  SHIFT_PARAMETERS_FILE

Few-label trainers (``<T>_FracNN``), in each fold's output folder::

    fold_<k>/few_label_subset.json        SUBSET_FILE: the training subset of the fold

Trainers with PDE blocks (``training.diagnostics``), in nnU-Net's logger, so in every
checkpoint's ``logging`` entry::

    pde_<block>_<quantity>                block_log_keys(block): one value per epoch
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.files import ErrorClass, read_json

__all__ = [
    "QUANTITIES",
    "CLEAN_LABELS_DIR",
    "DERIVED_JSON",
    "NOISY_LABELS_FORMAT_VERSION",
    "NOISY_LABELS_KIND",
    "SHIFT_FORMAT_VERSION",
    "SHIFT_KIND",
    "SHIFT_MANIFEST",
    "SHIFT_PARAMETERS_FILE",
    "SUBSET_FILE",
    "block_log_keys",
    "diagnostics_from_logging",
    "level_folder",
    "read_derived_info",
    "read_shift_manifest",
]

# --------------------------------------------------------------------------- noisy labels

#: Record of the derivation, written into the derived dataset's folder.
DERIVED_JSON = "nnunet_pde_derived.json"
#: Folder of the untouched source training labels in the derived dataset.
CLEAN_LABELS_DIR = "labelsTr_clean"
#: ``kind`` of a :data:`DERIVED_JSON` record.
NOISY_LABELS_KIND = "noisy-labels"
#: ``format_version`` of a :data:`DERIVED_JSON` record.
NOISY_LABELS_FORMAT_VERSION = 1


def read_derived_info(dataset_folder: str | os.PathLike[str]) -> dict | None:
    """The parsed :data:`DERIVED_JSON` of a dataset folder, or None if it has none.

    Raises
    ------
    NnunetPdeError (a ValueError)
        If the file exists but is not a JSON object.
    """
    path = Path(dataset_folder) / DERIVED_JSON
    if not path.is_file():
        return None
    content = read_json(path, NnunetPdeError)
    if not isinstance(content, dict):
        raise NnunetPdeError(f"{path} does not hold a JSON object")
    return content


# --------------------------------------------------------------------------- shifted images

#: Manifest written at the top of a ``derive shifted-images`` output folder.
SHIFT_MANIFEST = "nnunet_pde_shift.json"
#: Per-level record of what was applied to every file.
SHIFT_PARAMETERS_FILE = "parameters.json"
#: ``kind`` of a :data:`SHIFT_MANIFEST`.
SHIFT_KIND = "shifted-images"
#: ``format_version`` of a :data:`SHIFT_MANIFEST`.
SHIFT_FORMAT_VERSION = 1


def level_folder(output: str | os.PathLike[str], perturbation: str, level: int) -> Path:
    """``output/<perturbation>/level<k>``: the images of one perturbation level."""
    return Path(output) / perturbation / f"level{level}"


def read_shift_manifest(
    folder: str | os.PathLike[str], error: ErrorClass = NnunetPdeError
) -> dict[str, Any]:
    """The manifest of a ``derive shifted-images`` output folder.

    Raises
    ------
    error (default NnunetPdeError)
        ``folder/nnunet_pde_shift.json`` is missing, unreadable or not a shifted-images
        manifest.
    """
    path = Path(folder) / SHIFT_MANIFEST
    if not path.is_file():
        raise error(
            f"{folder} has no {SHIFT_MANIFEST}: not an output of `nnunet-pde derive shifted-images`"
        )
    content = read_json(path, error)
    if not isinstance(content, dict) or content.get("kind") != SHIFT_KIND:
        raise error(f"{path} is not a {SHIFT_KIND} manifest")
    return content


# --------------------------------------------------------------------------- few labels

#: Written into the fold's output folder by every few-label trainer.
SUBSET_FILE = "few_label_subset.json"

# --------------------------------------------------------------------------- PDE blocks

#: Per-block quantities, in the order of the logger keys ``pde_<block>_<quantity>``.
QUANTITIES: tuple[str, ...] = ("gamma_abs_mean", "gamma_abs_max", "tau", "contribution")


def block_log_keys(label: str) -> dict[str, str]:
    """Quantity -> logger key of one block (``pde_<label>_<quantity>``)."""
    return {q: f"pde_{label}_{q}" for q in QUANTITIES}


def diagnostics_from_logging(logging: dict | None) -> dict[str, dict[str, list[float]]]:
    """The per-epoch block diagnostics in an nnU-Net logger dict (a checkpoint's
    ``logging`` entry): label -> quantity -> values per epoch (NaN where not logged).
    Empty when there are none (older checkpoints, trainers without blocks)."""
    pattern = re.compile(r"^pde_(.+)_(" + "|".join(QUANTITIES) + r")$")
    out: dict[str, dict[str, list[float]]] = {}
    for key, values in (logging or {}).items():
        match = pattern.match(str(key))
        if match is None or not isinstance(values, list | tuple):
            continue
        series = []
        for v in values:
            try:
                series.append(float(v))
            except (TypeError, ValueError):
                series.append(float("nan"))
        out.setdefault(match.group(1), {})[match.group(2)] = series
    return {
        label: dict(sorted(q.items(), key=lambda kv: QUANTITIES.index(kv[0])))
        for label, q in sorted(out.items())
    }
