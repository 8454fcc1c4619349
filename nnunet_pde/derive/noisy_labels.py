"""Noisy training labels: ``nnunet-pde derive noisy-labels``.

:func:`derive_noisy_labels` writes a NEW nnU-Net v2 raw dataset from an existing one whose
training labels (``labelsTr``) are corrupted in a controlled, recorded way, while the clean
labels are kept beside them in ``labelsTr_clean`` for evaluation. Images, test images and
test labels are copied unchanged; the source dataset is only read.

Modes (``magnitude_mm`` is in mm everywhere):

``erode`` / ``dilate``
    Systematic (biased) error: the boundary of each selected structure moves inward /
    outward by ``magnitude_mm`` (Euclidean, spacing-aware; see :func:`morph_mask`).
``random-morph``
    Unbiased error: per case, erosion or dilation (sign drawn 50/50) by ``magnitude_mm``.
``jitter``
    Smooth boundary jitter: a random displacement field (white noise per axis, Gaussian
    smoothed with a standard deviation of ``smoothness_mm``, scaled so that its longest
    displacement near the selected structures, within ``magnitude_mm`` + one voxel of their
    boundaries, is ``magnitude_mm``) warps the label map (nearest-neighbour).
``drop-components``
    Connected components (full connectivity, 26 in 3-D) of each selected structure whose
    equivalent-sphere diameter ``(6 V / pi) ** (1/3)`` is <= ``magnitude_mm`` are removed.
``add-blobs``
    ``blobs`` spurious balls of diameter ``magnitude_mm`` per case, each painted with a
    randomly chosen selected label / region, centred on a random voxel of the body
    (:func:`body_mask`).

Multi-label maps:

* **label datasets** (``dataset.json`` labels are integers, e.g. LiTS liver 1, tumour 2):
  each selected label's mask is transformed. Voxels a label loses take the label of the
  nearest voxel outside that label's clean mask (so eroding the liver next to a tumour
  leaves no background gap); the losses are applied label by label from the last label of
  ``dataset.json`` to the first, reading the map as corrected so far, so that eroding
  liver *and* tumour shrinks the tumour into the liver instead of swapping a shell of the
  two. Voxels a label gains then overwrite what was there, in ``dataset.json`` order (a
  later label wins).
* **region datasets** (list values and ``regions_class_order``, e.g. BraTS whole tumour /
  tumour core / enhancing tumour): every selected region mask gets the same transformation
  (same sign, same field), each region is intersected with every region that contains it
  (containment of the label-value sets: WT >= TC >= ET for BraTS), and the label map is
  recomposed as nnU-Net does for predictions (regions painted in order with the values of
  ``regions_class_order``); voxels whose region membership did not change keep their
  value.
* The ``ignore`` label is never changed, and no structure grows into it.

Randomness: the corrupted cases are the first ``round(fraction * n)`` (at least 1) of a
permutation of the sorted case ids drawn from ``seed`` (so the subsets for growing
fractions are nested); each case's own draws (sign, field seed, blob centres) come from a
generator seeded with ``(seed, crc32(case id))``. They do not depend on the case order, the
fraction or the magnitude, so a magnitude sweep with one seed scales the same fields and
keeps the same signs. The same arguments give a byte-identical dataset.

Arrays are in numpy axis order (z, y, x for 3-D), spacings in mm along those axes
(SimpleITK's (x, y, z) order is reversed once, on reading).

This module checks the source and the target and writes the record of one derived dataset;
the parameter checks are in :mod:`nnunet_pde.derive.noisy_label_settings`, the writing of
the labels case by case in :mod:`nnunet_pde.derive.noisy_label_cases`, the corruptions in
:mod:`nnunet_pde.derive.label_noise` (on the structures of
:mod:`nnunet_pde.derive.label_structures`, with :mod:`nnunet_pde.derive.mask_transforms`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from nnunet_pde.derive.label_noise import MODES, corrupted_cases, label_damage
from nnunet_pde.derive.label_structures import (
    LabelScheme,
    Structure,
    select_structures,
    structures_from_dataset_json,
)
from nnunet_pde.derive.mask_transforms import body_mask, jitter_field, morph_mask
from nnunet_pde.derive.noisy_label_cases import check_blob_images, copy_images, write_labels
from nnunet_pde.derive.noisy_label_settings import (
    NAME_PATTERN,
    command_line,
    default_name,
    validate_parameters,
)
from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.files import list_cases, read_json, write_json
from nnunet_pde.folders import DATASET_FOLDER, find_raw_dataset
from nnunet_pde.formats import CLEAN_LABELS_DIR, DERIVED_JSON, read_derived_info
from nnunet_pde.formats import NOISY_LABELS_FORMAT_VERSION as FORMAT_VERSION
from nnunet_pde.formats import NOISY_LABELS_KIND as KIND
from nnunet_pde.staging import recover_interrupted, staged_folder

__all__ = [
    "CLEAN_LABELS_DIR",
    "DERIVED_JSON",
    "MODES",
    "Structure",
    "body_mask",
    "default_name",
    "derive_noisy_labels",
    "jitter_field",
    "morph_mask",
    "read_derived_info",
    "structures_from_dataset_json",
]


def _resolve_raw_root(raw_root: str | os.PathLike[str] | None, source: object) -> Path:
    if raw_root is not None:
        return Path(raw_root)
    env = os.environ.get("nnUNet_raw")
    if env:
        return Path(env)
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        return Path(source).resolve().parent
    raise NnunetPdeError(
        'no nnUNet_raw folder: pass --raw DIR or set nnUNet_raw (eval "$(nnunet-pde env)")'
    )


def _targets_to_replace(
    raw_root: Path, dataset_id: int, folder_name: str, source: Path, overwrite: bool
) -> list[Path]:
    """Existing folders with the target id; refuse unless ``overwrite`` (and never the source)."""
    if raw_root.exists() and not raw_root.is_dir():
        raise NnunetPdeError(f"{raw_root} exists and is not a folder", "--raw")
    if not raw_root.is_dir():
        return []
    prefix = f"Dataset{dataset_id:03d}_"
    existing = sorted(
        p for p in raw_root.iterdir() if p.name.startswith(prefix) or p.name == folder_name
    )
    if not existing:
        return []
    names = ", ".join(p.name for p in existing)
    if not overwrite:
        raise FileExistsError(
            f"dataset id {dataset_id} is already used in {raw_root} ({names}); pass "
            "--overwrite to replace it, or choose another --id"
        )
    src = source.resolve()
    for p in existing:
        r = p.resolve()
        if r == src or r in src.parents or src in r.parents:
            raise NnunetPdeError(f"refusing to overwrite {p}: it is (or holds) the source dataset")
        if not p.is_dir():
            raise FileExistsError(f"{p} exists and is not a folder; remove it yourself")
        if p.name != folder_name and not (p / DERIVED_JSON).is_file():
            raise FileExistsError(
                f"dataset id {dataset_id} is used by {p.name}, which was not derived by "
                f"nnunet-pde; overwrite only replaces {folder_name} or derived datasets, so "
                "choose another id"
            )
    return existing


def derive_noisy_labels(
    source: int | str | os.PathLike[str],
    dataset_id: int,
    *,
    mode: str,
    magnitude_mm: float,
    fraction: float = 1.0,
    seed: int = 0,
    name: str | None = None,
    raw_root: str | os.PathLike[str] | None = None,
    labels: str | int | Iterable[str | int] | None = None,
    smoothness_mm: float = 10.0,
    blobs: int = 1,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a copy of an nnU-Net raw dataset whose training labels are corrupted.

    Parameters
    ----------
    source
        The source dataset: an id (``501`` or ``"501"``), a folder name
        (``"Dataset501_SyntheticBraTS"``) in ``raw_root``, or the path of a raw dataset
        folder. Only read.
    dataset_id
        nnU-Net id of the new dataset, 1 to 999, different from the source's.
    mode
        One of :data:`MODES` (see the module docstring).
    magnitude_mm
        > 0, in mm: boundary displacement (``erode``, ``dilate``, ``random-morph``), largest
        displacement (``jitter``), largest equivalent-sphere diameter removed
        (``drop-components``), blob diameter (``add-blobs``).
    fraction
        Share of the training cases to corrupt, in (0, 1]; ``round(fraction * n)`` cases,
        at least one, chosen by ``seed``. The others are copied unchanged.
    seed
        >= 0; the same arguments give a byte-identical dataset.
    name
        Name of the new dataset; default ``<source name>Noisy<Mode><magnitude>mm``, e.g.
        ``SyntheticBraTSNoisyErode2mm``.
    raw_root
        The ``nnUNet_raw`` folder the source id / name is looked up in and the new dataset
        is written to; default ``$nnUNet_raw`` (or, for a source given as a path, its parent).
    labels
        Labels / regions to corrupt, by name (``"liver"``, ``"tumor core"``) or value (a
        label value; for regions the ``regions_class_order`` value); default every
        foreground label or region. Never the ignore label.
    smoothness_mm
        ``jitter``: standard deviation (mm) of the Gaussian that smooths the field.
    blobs
        ``add-blobs``: balls per corrupted case.
    overwrite
        Replace an existing dataset with ``dataset_id`` (the folder of the same name, or one
        that was itself derived by nnunet-pde). The source is never replaced.
    progress
        Called with a short message after each training case.

    Returns
    -------
    pathlib.Path
        ``raw_root / f"Dataset{dataset_id:03d}_{name}"``, holding ``imagesTr``,
        ``imagesTs`` and ``labelsTs`` (copied if present), ``labelsTr`` (corrupted),
        :data:`CLEAN_LABELS_DIR` (the source's labels), the source's ``dataset.json`` and
        :data:`DERIVED_JSON` (all settings and every case's sampled parameters and volume
        changes).

    Raises
    ------
    NnunetPdeError (a ValueError)
        A parameter is invalid (nothing is written).
    FileNotFoundError
        The source, its ``dataset.json``, ``labelsTr`` or ``imagesTr`` is missing.
    FileExistsError
        The target id is in use and ``overwrite`` is false.
    """
    dataset_id, mode, magnitude_mm, fraction, seed, smoothness_mm, blobs = validate_parameters(
        dataset_id, mode, magnitude_mm, fraction, seed, name, smoothness_mm, blobs, progress
    )
    raw_root = _resolve_raw_root(raw_root, source)
    src = find_raw_dataset(source, raw_root)
    dj_path, dataset_json, file_ending = _read_source_dataset_json(src)
    structures, regions, ignore = structures_from_dataset_json(dataset_json)
    scheme = LabelScheme(tuple(structures), regions, ignore)
    selected = select_structures(scheme, labels)
    clean_files = _clean_label_files(src, file_ending)
    source_id, source_name = _source_identity(src, dataset_id)
    name = default_name(source_name or "Dataset", mode, magnitude_mm) if name is None else name
    if not NAME_PATTERN.match(name):
        raise NnunetPdeError(f"cannot make a valid dataset name from {name!r}; pass name=")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    recover_interrupted(raw_root)  # what a killed earlier run left (see docs/robustness.md)
    to_replace = _targets_to_replace(raw_root, dataset_id, folder_name, src, overwrite)
    case_ids = sorted(clean_files)
    corrupted = set(corrupted_cases(case_ids, fraction, seed))
    if mode == "add-blobs":
        check_blob_images(src, corrupted, file_ending)

    settings: dict[str, Any] = {
        "dataset_id": dataset_id,
        "name": name,
        "mode": mode,
        "magnitude_mm": magnitude_mm,
        "fraction": fraction,
        "seed": seed,
        "labels": [s.name for s in selected],
        "labels_given": labels is not None,
        "smoothness_mm": smoothness_mm,
        "blobs": blobs,
    }

    def fill(tmp: Path) -> None:
        copy_images(src, tmp)
        cases, hashes, n_changed = write_labels(
            tmp, src, clean_files, corrupted, file_ending, scheme, selected, settings, progress
        )
        shutil.copy2(dj_path, tmp / "dataset.json")
        source_info = {
            "name": src.name,
            "dataset_id": source_id,
            "path": str(src.resolve()),
            "labelsTr_sha256": hashes,
        }
        record = _derived_record(
            source, source_info, settings, regions, cases, corrupted, n_changed
        )
        write_json(tmp / DERIVED_JSON, record, indent=1)

    target = raw_root / folder_name
    with staged_folder(target, also_replace=to_replace) as tmp:
        fill(tmp)
    return target


def _read_source_dataset_json(src: Path) -> tuple[Path, dict[str, Any], str]:
    """The source's dataset.json path, content and file ending (checked)."""
    dj_path = src / "dataset.json"
    if not dj_path.is_file():
        raise FileNotFoundError(f"{src} has no dataset.json; is it an nnU-Net raw dataset?")
    dataset_json = read_json(dj_path, NnunetPdeError)
    if "dataset" in dataset_json:
        raise NnunetPdeError(
            f"{dj_path} lists its files explicitly (the 'dataset' key); only datasets with "
            "imagesTr/labelsTr folders are supported"
        )
    file_ending = dataset_json.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending:
        raise NnunetPdeError(f"{dj_path} has no 'file_ending'")
    return dj_path, dataset_json, file_ending


def _clean_label_files(src: Path, file_ending: str) -> dict[str, Path]:
    """Case id -> training label file of the source; refuses a noisy-labels source."""
    for sub in ("imagesTr", "labelsTr"):
        if not (src / sub).is_dir():
            raise FileNotFoundError(f"{src} has no {sub} folder")
    clean_files = list_cases(src / "labelsTr", file_ending)
    if not clean_files:
        raise FileNotFoundError(f"no *{file_ending} training labels in {src / 'labelsTr'}")
    info = read_derived_info(src)
    if info is not None and info.get("kind") == KIND:
        raise NnunetPdeError(
            f"{src} is itself a noisy-labels dataset; derive from the original dataset, or "
            f"its {CLEAN_LABELS_DIR} would hold noisy labels"
        )
    return clean_files


def _source_identity(src: Path, dataset_id: int) -> tuple[int | None, str]:
    """The source's dataset id (None for a folder not named DatasetNNN_) and name."""
    match = DATASET_FOLDER.match(src.name)
    source_id = int(match.group(1)) if match else None
    source_name = match.group(2) if match else re.sub(r"[^A-Za-z0-9_-]", "", src.name)
    if source_id == dataset_id:
        raise NnunetPdeError(
            f"the new dataset needs its own id; {dataset_id} is the source's ({src.name})"
        )
    return source_id, source_name


def _derived_record(
    source: int | str | os.PathLike[str],
    source_info: Mapping[str, Any],
    settings: Mapping[str, Any],
    regions: bool,
    cases: Mapping[str, Any],
    corrupted: set[str],
    n_changed: int,
) -> dict[str, Any]:
    """The content of :data:`DERIVED_JSON`."""
    from nnunet_pde._version import __version__

    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "dataset_id": settings["dataset_id"],
        "name": settings["name"],
        "source": dict(source_info),
        "mode": settings["mode"],
        "magnitude_mm": settings["magnitude_mm"],
        "fraction": settings["fraction"],
        "seed": settings["seed"],
        "labels": settings["labels"],
        "label_type": "regions" if regions else "labels",
        "smoothness_mm": settings["smoothness_mm"],
        "blobs": settings["blobs"],
        "clean_labels": CLEAN_LABELS_DIR,
        "num_cases": len(cases),
        "num_corrupted": len(corrupted),
        "num_changed": int(n_changed),
        "corrupted_cases": sorted(corrupted),
        "label_damage": label_damage({c: cases[c] for c in sorted(corrupted)}),
        "created_by": {
            "tool": f"nnunet-pde {KIND}",
            "version": __version__,
            "command": command_line(source, settings),
        },
        "cases": dict(cases),
    }
