"""The training labels of a noisy-labels dataset, written case by case.

:func:`write_labels` fills ``labelsTr`` (corrupted where the case is selected, copied
otherwise) and ``labelsTr_clean`` (the source's labels) of the dataset being built, and
returns every case's record: the parameters drawn for it and what changed
(:func:`nnunet_pde.derive.label_noise.change_stats`). :func:`copy_images` copies the images
unchanged; :func:`check_blob_images` checks before any work that ``add-blobs`` has the
channel-0 images it reads.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.derive.label_noise import (
    change_stats,
    corrupt_label_map,
    corruption_rng,
    rounded,
)
from nnunet_pde.derive.label_structures import LabelScheme, Structure
from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.files import read_image, write_image
from nnunet_pde.formats import CLEAN_LABELS_DIR

__all__ = ["check_blob_images", "copy_images", "write_labels"]


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


def check_blob_images(src: Path, corrupted: Iterable[str], file_ending: str) -> None:
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


def copy_images(src: Path, tmp: Path) -> None:
    """imagesTr, and imagesTs / labelsTs where the source has them, unchanged."""
    shutil.copytree(src / "imagesTr", tmp / "imagesTr", copy_function=shutil.copy2)
    for sub in ("imagesTs", "labelsTs"):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, tmp / sub, copy_function=shutil.copy2)


def write_labels(
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
