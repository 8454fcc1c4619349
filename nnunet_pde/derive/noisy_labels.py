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

Size (about 670 lines, a third of it this docstring and the parameters' documentation): the
parameter checks, the source and target checks, the writing and the record of one derived
dataset; the label corruptions themselves are in :mod:`nnunet_pde.derive.label_noise`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.derive.label_noise import (
    MODES,
    LabelScheme,
    Structure,
    body_mask,
    change_stats,
    corrupt_label_map,
    corrupted_cases,
    corruption_rng,
    jitter_field,
    label_damage,
    morph_mask,
    rounded,
    select_structures,
    structures_from_dataset_json,
)
from nnunet_pde.errors import NnunetPdeError, recover_interrupted, staged_folder
from nnunet_pde.files import read_image, read_json, write_image, write_json
from nnunet_pde.folders import DATASET_FOLDER, find_raw_dataset
from nnunet_pde.formats import CLEAN_LABELS_DIR, DERIVED_JSON, read_derived_info
from nnunet_pde.formats import NOISY_LABELS_FORMAT_VERSION as FORMAT_VERSION
from nnunet_pde.formats import NOISY_LABELS_KIND as KIND

#: What a derived dataset's name (``DatasetNNN_<name>``) may be made of.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

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
# --------------------------------------------------------------------------- files


def _read_image(path: Path):
    img = read_image(path, NnunetPdeError)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise NnunetPdeError(
            f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    return img


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _label_files(folder: Path, file_ending: str) -> dict[str, Path]:
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)
    }


def _format_mm(value: float) -> str:
    text = f"{value:g}"
    return text.replace(".", "p").replace("-", "m").replace("+", "")


def default_name(source_name: str, mode: str, magnitude_mm: float) -> str:
    """``<source>Noisy<Mode><magnitude>mm``, filename-safe, e.g. ``SyntheticBraTSNoisyErode2mm``."""
    camel = "".join(part.capitalize() for part in mode.split("-"))
    name = f"{source_name}Noisy{camel}{_format_mm(magnitude_mm)}mm"
    return re.sub(r"[^A-Za-z0-9_-]", "", name)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _positive(name: str, value: object, unit: str = " mm") -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise NnunetPdeError(f"must be a finite number; got {value!r}", name)
    if value <= 0:
        raise NnunetPdeError(f"must be > 0{unit}; got {value!r}", name)
    return float(value)


def _validate_parameters(
    dataset_id, mode, magnitude_mm, fraction, seed, name, smoothness_mm, blobs, progress
) -> tuple[int, str, float, float, int, float, int]:
    if not _is_int(dataset_id) or not 1 <= dataset_id <= 999:
        raise NnunetPdeError(
            f"the dataset id must be an integer from 1 to 999 (nnU-Net uses 3 digits); "
            f"got {dataset_id!r}",
            "--id",
        )
    if mode not in MODES:
        raise NnunetPdeError(f"must be one of {', '.join(MODES)}; got {mode!r}", "--mode")
    if isinstance(magnitude_mm, Real) and not isinstance(magnitude_mm, bool) and magnitude_mm == 0:
        raise NnunetPdeError(
            "--magnitude must be > 0 mm: a 0 mm corruption is the source dataset itself (use it as "
            "the clean baseline)"
        )
    magnitude_mm = _positive("--magnitude", magnitude_mm)
    if (
        not isinstance(fraction, Real)
        or isinstance(fraction, bool)
        or math.isnan(fraction)
        or not 0 < fraction <= 1
    ):
        raise NnunetPdeError(
            f"must be in (0, 1] (the share of training cases to corrupt); got {fraction!r}",
            "--fraction",
        )
    if not _is_int(seed) or seed < 0:
        raise NnunetPdeError(f"must be an integer >= 0; got {seed!r}", "--seed")
    if name is not None and (not isinstance(name, str) or not _NAME_PATTERN.match(name)):
        raise NnunetPdeError(
            f"must be letters, digits, '_' or '-' (starting with a letter or digit); got {name!r}",
            "--name",
        )
    smoothness_mm = _positive("--smoothness", smoothness_mm)
    if not _is_int(blobs) or blobs < 1:
        raise NnunetPdeError(f"must be an integer >= 1; got {blobs!r}", "--blobs")
    if progress is not None and not callable(progress):
        raise NnunetPdeError(f"progress must be callable or None; got {progress!r}")
    return (
        int(dataset_id),
        str(mode),
        magnitude_mm,
        float(fraction),
        int(seed),
        smoothness_mm,
        int(blobs),
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


def _command_line(source: object, settings: Mapping[str, Any]) -> str:
    parts = [
        "nnunet-pde",
        "derive",
        KIND,
        str(source),
        "--id",
        str(settings["dataset_id"]),
        "--name",
        settings["name"],
        "--mode",
        settings["mode"],
        "--magnitude",
        f"{settings['magnitude_mm']:g}",
        "--fraction",
        f"{settings['fraction']:g}",
        "--seed",
        str(settings["seed"]),
    ]
    if settings["labels_given"]:
        parts += ["--labels", *settings["labels"]]
    if settings["mode"] == "jitter":
        parts += ["--smoothness", f"{settings['smoothness_mm']:g}"]
    if settings["mode"] == "add-blobs":
        parts += ["--blobs", str(settings["blobs"])]
    return shlex.join(parts)


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
    dataset_id, mode, magnitude_mm, fraction, seed, smoothness_mm, blobs = _validate_parameters(
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
    if not _NAME_PATTERN.match(name):
        raise NnunetPdeError(f"cannot make a valid dataset name from {name!r}; pass name=")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    recover_interrupted(raw_root)  # what a killed earlier run left (see docs/robustness.md)
    to_replace = _targets_to_replace(raw_root, dataset_id, folder_name, src, overwrite)
    case_ids = sorted(clean_files)
    corrupted = set(corrupted_cases(case_ids, fraction, seed))
    if mode == "add-blobs":
        _check_blob_images(src, corrupted, file_ending)

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
        _copy_images(src, tmp)
        cases, hashes, n_changed = _write_labels(
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
    clean_files = _label_files(src / "labelsTr", file_ending)
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


def _check_blob_images(src: Path, corrupted: Iterable[str], file_ending: str) -> None:
    """add-blobs reads channel 0 of every corrupted case; FileNotFoundError if one lacks it."""
    missing = [
        c for c in sorted(corrupted) if not (src / "imagesTr" / f"{c}_0000{file_ending}").is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"add-blobs needs channel 0 of each corrupted case; missing "
            f"{src / 'imagesTr'}/{missing[0]}_0000{file_ending}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )


def _copy_images(src: Path, tmp: Path) -> None:
    """imagesTr, and imagesTs / labelsTs where the source has them, unchanged."""
    shutil.copytree(src / "imagesTr", tmp / "imagesTr", copy_function=shutil.copy2)
    for sub in ("imagesTs", "labelsTs"):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, tmp / sub, copy_function=shutil.copy2)


def _write_labels(
    tmp: Path,
    src: Path,
    clean_files: Mapping[str, Path],
    corrupted: set[str],
    file_ending: str,
    scheme: LabelScheme,
    selected: Sequence[Structure],
    settings: Mapping[str, Any],
    progress: Callable[[str], None] | None,
) -> tuple[dict[str, Any], dict[str, str], int]:
    """labelsTr (corrupted where selected) and the clean copies; per case what was done,
    the clean labels' sha256 and how many cases changed."""
    (tmp / "labelsTr").mkdir()
    (tmp / CLEAN_LABELS_DIR).mkdir()
    case_ids = sorted(clean_files)
    cases: dict[str, Any] = {}
    hashes: dict[str, str] = {}
    n_changed = 0
    for n, case_id in enumerate(case_ids, start=1):
        path = clean_files[case_id]
        hashes[case_id] = _sha256(path)
        shutil.copy2(path, tmp / CLEAN_LABELS_DIR / path.name)
        if case_id not in corrupted:
            shutil.copy2(path, tmp / "labelsTr" / path.name)
            cases[case_id] = {"corrupted": False}
            message = "copied (not selected)"
        else:
            cases[case_id], changed = _corrupt_file(
                case_id,
                path,
                tmp / "labelsTr" / path.name,
                src,
                file_ending,
                scheme,
                selected,
                settings,
                settings["seed"],
            )
            n_changed += changed > 0
            message = f"{settings['mode']}: {changed} voxels changed"
        if progress is not None:
            progress(f"[{n}/{len(case_ids)}] {case_id}: {message}")
    return cases, hashes, int(n_changed)


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
            "command": _command_line(source, settings),
        },
        "cases": dict(cases),
    }


def _corrupt_file(
    case_id: str,
    path: Path,
    out_path: Path,
    src: Path,
    file_ending: str,
    scheme: LabelScheme,
    selected: Sequence[Structure],
    settings: Mapping[str, Any],
    seed: int,
) -> tuple[dict[str, Any], int]:
    import SimpleITK as sitk

    img = _read_image(path)
    seg = sitk.GetArrayFromImage(img)
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.array_equal(seg, np.round(seg)):
            raise NnunetPdeError(f"{path} is not an integer label map (dtype {seg.dtype})")
    spacing = np.asarray(img.GetSpacing()[::-1], dtype=np.float64)

    def image0() -> np.ndarray:
        ch0 = _read_image(src / "imagesTr" / f"{case_id}_0000{file_ending}")
        return sitk.GetArrayFromImage(ch0)

    noisy, params = corrupt_label_map(
        seg, spacing, scheme, selected, settings, corruption_rng(seed, case_id), image0
    )
    if np.issubdtype(seg.dtype, np.integer):
        info = np.iinfo(seg.dtype)
        if noisy.min() < info.min or noisy.max() > info.max:
            raise NnunetPdeError(f"{path}: corrupted labels do not fit its data type {seg.dtype}")
    stats = change_stats(seg, noisy, spacing, scheme)
    if stats["voxels_changed"]:
        # origin, spacing, direction of the source label
        write_image(noisy.astype(seg.dtype, copy=False), out_path, reference=img)
    else:
        shutil.copy2(path, out_path)
    record = {
        "corrupted": True,
        "shape": [int(s) for s in seg.shape],
        "spacing_mm": [rounded(s, 6) for s in spacing],
        **params,
        **stats,
    }
    return record, stats["voxels_changed"]
