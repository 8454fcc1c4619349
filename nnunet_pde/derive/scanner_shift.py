"""Scanner shift: test images under acquisition perturbations at graded severity levels.

``nnunet-pde derive shifted-images`` (:func:`derive_shifted_images`) reads the test images
(``imagesTs``) of an nnU-Net raw dataset and writes, for each perturbation and severity level,
a folder of perturbed copies with the same file names, geometry and pixel type::

    OUTPUT/nnunet_pde_shift.json                    manifest (MANIFEST)
    OUTPUT/<perturbation>/level<k>/CASE_XXXX.nii.gz every test case and channel
    OUTPUT/<perturbation>/level<k>/parameters.json  what was applied to each file

Each level folder is a valid ``nnUNetv2_predict -i`` input; the predictions are scored against
the unchanged test labels (the perturbations never move anatomy: the output grid is the input
grid). Level 0 is the clean ``imagesTs`` and is not written.

Perturbations (:data:`PERTURBATIONS`) are TorchIO 1.2 random transforms: bias field, noise,
ghosting, motion, spike, blur, gamma and anisotropy, each with five levels of increasing
strength (like ImageNet-C). Intensity strengths are relative to a per-image scale so that MR
(arbitrary units) and CT (HU) are treated alike; geometric strengths are in mm or degrees.
How one image is perturbed:

1. ``m`` = the image minimum; TorchIO sees ``(x - m) / d`` (``d`` = 1, except for gamma, where
   ``d`` = max - min maps the image to [0, 1]), so multiplicative and k-space perturbations act
   on the signal above the background level (air at -1024 HU in CT stays in place) and the
   result is mapped back with ``y * d + m``.
2. If the minimum is 0 (skull-stripped MR such as BraTS), the zero background (zero voxels
   connected to the image border: what nnU-Net's crop-to-nonzero and non-zero-mask
   normalisation use) is set back to 0 after the perturbation, so the noise, ghosts, blur,
   etc. stay inside the body and the non-zero mask nnU-Net derives is unchanged. Images
   without a zero background (CT, MR that was not skull-stripped) are perturbed everywhere,
   background included.
3. The scale ``s`` used by the noise levels is the standard deviation of the body voxels (the
   non-background voxels of 2., all voxels otherwise).
4. The result is cast back to the source pixel type: rounded and clipped for integer types.

Each (case, channel, perturbation) has its own random generator derived from the seed
(:class:`numpy.random.SeedSequence` of the seed and the CRC32 of the names), which seeds
torch's global generator around each TorchIO call: outputs do not depend on the processing
order, channels of a case (separate acquisitions) get independent parameters, and the same
seed gives identical files. The levels of one image share the generator (common random
numbers), so level k+1 is a stronger version of the same random draw (same noise field,
bias-field shape, ghost axis, spike position, motion path) and severity grows per image,
not only on average. The transforms TorchIO actually applied (its history,
``Subject.applied_transforms``) are written to ``parameters.json``, and :func:`apply_recorded`
re-applies them deterministically.

Arrays are in numpy axis order ``(z, y, x)`` as SimpleITK returns them; TorchIO tensors and
axis numbers in the TorchIO arguments are ``(x, y, z)``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.derive.perturbations import (
    DEFAULT_LEVELS,
    LEVELS,
    MARKER_COMMAND,
    PERTURBATIONS,
    PerturbationSpec,
    ShiftError,
    apply_recorded,
    cast_to_dtype,
    check_3d_scalar,
    check_level,
    image_info,
    image_rng,
    perturb_channel,
    read_image_array,
)
from nnunet_pde.files import read_image_header, read_json, write_image, write_json
from nnunet_pde.folders import find_raw_dataset
from nnunet_pde.formats import SHIFT_FORMAT_VERSION as FORMAT_VERSION
from nnunet_pde.formats import SHIFT_KIND as KIND
from nnunet_pde.formats import SHIFT_MANIFEST as MANIFEST
from nnunet_pde.formats import SHIFT_PARAMETERS_FILE as PARAMETERS_FILE
from nnunet_pde.formats import level_folder, read_shift_manifest
from nnunet_pde.staging import check_replaceable, recover_interrupted, staged_folder

#: ``CASE_XXXX`` (the file name without its ending): the case id and the channel.
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

__all__ = [
    "DEFAULT_LEVELS",
    "LEVELS",
    "MANIFEST",
    "PARAMETERS_FILE",
    "PERTURBATIONS",
    "PerturbationSpec",
    "ShiftError",
    "apply_recorded",
    "derive_shifted_images",
    "level_folder",
    "read_manifest",
]
# ------------------------------------------------------------------ files


def _resolve_source(
    source: str | int | os.PathLike[str], raw_root: str | os.PathLike[str] | None
) -> Path:
    """The raw dataset folder of an id, a ``DatasetNNN_Name`` or a path (as ShiftError)."""
    root = raw_root if raw_root is not None else os.environ.get("nnUNet_raw") or None
    if root is not None and not Path(root).is_dir():
        raise ShiftError(f"nnUNet_raw folder {root} does not exist or is not a folder")
    try:
        return find_raw_dataset(source, root)
    except (FileNotFoundError, ValueError) as exc:
        raise ShiftError(str(exc)) from None


def _read_dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not path.is_file():
        raise ShiftError(f"{folder} has no dataset.json: not an nnU-Net raw dataset folder")
    content = read_json(path, ShiftError)
    ending = content.get("file_ending")
    channels = content.get("channel_names", content.get("modality"))
    if not isinstance(ending, str) or not ending.startswith("."):
        raise ShiftError(f"{path} has no valid 'file_ending' (e.g. '.nii.gz')")
    if not isinstance(channels, Mapping) or not channels:
        raise ShiftError(f"{path} has no 'channel_names' mapping")
    return content


def _list_cases(images: Path, file_ending: str, channels: Sequence[str]) -> dict[str, list[str]]:
    """Case id -> sorted channel suffixes ('0000', ...); every case must have every channel."""
    cases: dict[str, list[str]] = {}
    for path in sorted(images.iterdir()):
        if not path.is_file() or not path.name.endswith(file_ending):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(file_ending)])
        if match is None:
            raise ShiftError(
                f"{path.name} in {images} is not named CASE_XXXX{file_ending} (XXXX = the "
                "4-digit channel number)"
            )
        cases.setdefault(match["case"], []).append(match["channel"])
    if not cases:
        raise ShiftError(f"{images} has no *{file_ending} test images")
    expected = sorted(channels)
    for case, found in cases.items():
        if sorted(found) != expected:
            raise ShiftError(
                f"test case {case} has channel files {', '.join(sorted(found))}; dataset.json "
                f"declares {', '.join(expected)}"
            )
    return cases


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _check_output(output: Path, dataset: Path, overwrite: bool) -> None:
    out, src = output.resolve(), dataset.resolve()
    if _is_within(out, src):
        raise ShiftError(
            f"output {output} is inside the source dataset {dataset}; choose a folder outside it"
        )
    if _is_within(src, out):
        raise ShiftError(
            f"output {output} contains the source dataset {dataset}; choose another folder"
        )
    # --overwrite replaces only a folder this command wrote, and only if nothing was added
    # (e.g. the predictions/ of benchmark robustness scanner-shift)
    check_replaceable(output, overwrite, MARKER_COMMAND, flag="--output")


def _check_perturbations(perturbations: str | Iterable[str] | None) -> list[str]:
    if perturbations is None:
        return list(PERTURBATIONS)
    names = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    if not names:
        raise ShiftError("no perturbation given; pass names or 'all'")
    if "all" in names:
        return list(PERTURBATIONS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ShiftError(
            f"unknown perturbation(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(PERTURBATIONS)} or 'all'"
        )
    return list(dict.fromkeys(names))


def _check_levels(levels: Iterable[int]) -> list[int]:
    values = [levels] if isinstance(levels, int) else list(levels)
    if not values:
        raise ShiftError("no severity level given; pass some of 1 2 3 4 5")
    return sorted({check_level(v) for v in values})


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a ``derive shifted-images`` output folder.

    Raises
    ------
    ShiftError
        ``folder/nnunet_pde_shift.json`` is missing, unreadable or not a shifted-images
        manifest.
    """
    return read_shift_manifest(folder, ShiftError)


def _created_by() -> str:
    import torchio

    from nnunet_pde._version import __version__

    return f"nnunet-pde {__version__} derive shifted-images (torchio {torchio.__version__})"


def derive_shifted_images(
    source: str | int | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    perturbations: str | Iterable[str] | None = None,
    levels: Iterable[int] = DEFAULT_LEVELS,
    seed: int = 0,
    raw_root: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | bool | None = None,
    workers: int = 1,
) -> Path:
    """Write scanner-shifted copies of a raw dataset's test images; return ``output``.

    Parameters
    ----------
    source
        The raw dataset: an id (``501``, ``"501"``) or folder name
        (``"Dataset501_SyntheticBraTS"``) in ``raw_root`` / ``$nnUNet_raw``, or the path of
        the dataset folder. Its ``imagesTs`` and ``dataset.json`` (``file_ending``,
        ``channel_names``) are read, never written.
    output
        Folder to create (must not be inside the dataset). Layout: ``<perturbation>/
        level<k>/`` with every test image and ``parameters.json``, and :data:`MANIFEST`.
    perturbations
        Names from :data:`PERTURBATIONS`, ``"all"`` or None (= all).
    levels
        Severity levels from 1 to 5 (default 1, 2, 3).
    seed
        Integer >= 0; the same seed gives identical files.
    raw_root
        ``nnUNet_raw`` folder for an id or name (default ``$nnUNet_raw``).
    overwrite
        Replace ``output`` if it is a previous shifted-images folder (has :data:`MANIFEST`).
    progress
        None (silent), True (a tqdm bar on stderr) or a callable given one message per image
        (per case with ``workers`` > 1).
    workers
        Processes that perturb cases in parallel (1 = this process). The files do not depend
        on it.

    Raises
    ------
    ShiftError
        An argument, the dataset or the output folder is invalid (checked before anything
        is written).
    FileExistsError
        ``output`` exists and is not empty, and ``overwrite`` is false.
    """
    names = _check_perturbations(perturbations)
    level_list = _check_levels(levels)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ShiftError(f"seed must be an integer >= 0; got {seed!r}")
    seed = int(seed)
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ShiftError(f"workers must be an integer >= 1; got {workers!r}")
    workers = int(workers)
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise ShiftError(f"progress must be None, a bool or a callable; got {progress!r}")
    dataset = _resolve_source(source, raw_root)
    file_ending, channel_keys, cases = _test_images(dataset)
    images = dataset / "imagesTs"
    output = Path(output)
    recover_interrupted(output.parent)  # what a killed earlier run left
    _check_output(output, dataset, overwrite)

    n_total = sum(len(c) for c in cases.values()) * len(names) * len(level_list)
    with contextlib.ExitStack() as stack:
        advance = _progress_reporter(progress, n_total, stack)
        tmp = stack.enter_context(staged_folder(output, command=MARKER_COMMAND))
        for name in names:
            for level in level_list:
                level_folder(tmp, name, level).mkdir(parents=True)
        jobs = [
            (images, case, found, file_ending, names, level_list, seed, tmp)
            for case, found in cases.items()
        ]
        per_case = _run_cases(jobs, workers, advance)
        for name in names:
            for level in level_list:
                document = {
                    "perturbation": name,
                    "level": level,
                    "settings": PERTURBATIONS[name].settings(level),
                    "covered_by_nnunet": PERTURBATIONS[name].covered_by_nnunet,
                    "seed": seed,
                    "file_ending": file_ending,
                    "cases": {case: per_case[case][name, level] for case in cases},
                }
                write_json(level_folder(tmp, name, level) / PARAMETERS_FILE, document, indent=1)
        manifest = _shift_manifest(
            dataset, file_ending, seed, names, level_list, list(cases), channel_keys
        )
        write_json(tmp / MANIFEST, manifest, indent=1)
    return output


def _test_images(dataset: Path) -> tuple[str, list[str], dict[str, list[str]]]:
    """File ending, channel keys (``0000`` ...) and case -> channels of ``imagesTs``; every
    header is read, so an unreadable or non-3D image fails before anything is written."""
    content = _read_dataset_json(dataset)
    file_ending: str = content["file_ending"]
    channels = content.get("channel_names", content.get("modality"))
    try:
        channel_keys = [f"{int(k):04d}" for k in channels]
    except (TypeError, ValueError):
        raise ShiftError(
            f"{dataset / 'dataset.json'}: channel_names keys must be channel numbers "
            f"('0', '1', ...); got {list(channels)}"
        ) from None
    images = dataset / "imagesTs"
    if not images.is_dir():
        raise ShiftError(f"{dataset} has no imagesTs folder: there are no test images to shift")
    cases = _list_cases(images, file_ending, channel_keys)
    for case, found in cases.items():  # headers only: fail before writing anything
        for channel in found:
            path = images / f"{case}_{channel}{file_ending}"
            check_3d_scalar(read_image_header(path, ShiftError), path)
    return file_ending, channel_keys, cases


def _progress_reporter(
    progress: Callable[[str], None] | bool | None, n_total: int, stack: contextlib.ExitStack
) -> Callable[[int, str], None]:
    """``advance(n, message)``: a tqdm bar (``progress`` True, closed by ``stack``) or one
    ``[done/total] message`` call of ``progress`` per step."""
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total, desc="shifting", unit="image", file=sys.stderr)
        stack.callback(bar.close)
    report = progress if callable(progress) else None
    done = 0

    def advance(n: int, message: str) -> None:
        nonlocal done
        done += n
        if bar is not None:
            bar.update(n)
        if report is not None:
            report(f"[{done}/{n_total}] {message}")

    return advance


def _shift_manifest(
    dataset: Path,
    file_ending: str,
    seed: int,
    names: Sequence[str],
    level_list: list[int],
    cases: list[str],
    channel_keys: list[str],
) -> dict[str, Any]:
    """The content of :data:`MANIFEST`."""
    images = dataset / "imagesTs"
    labels = dataset / "labelsTs"
    settings = {
        name: {
            "covered_by_nnunet": PERTURBATIONS[name].covered_by_nnunet,
            "nnunet_augmentation": PERTURBATIONS[name].nnunet_augmentation,
            "torchio_transform": PERTURBATIONS[name].torchio_transform,
            "description": PERTURBATIONS[name].description,
            "levels": {str(k): PERTURBATIONS[name].settings(k) for k in level_list},
        }
        for name in names
    }
    return {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "source": {
            "dataset": dataset.resolve().name,
            "images": str(images.resolve()),
            "labels": str(labels.resolve()) if labels.is_dir() else None,
            "file_ending": file_ending,
            "dataset_json": str((dataset / "dataset.json").resolve()),
        },
        "seed": seed,
        "levels": level_list,
        "cases": cases,
        "channels": channel_keys,
        "perturbations": settings,
        "folders": {n: {str(k): f"{n}/level{k}" for k in level_list} for n in names},
        "created_by": _created_by(),
    }


def _shift_case(
    images: Path,
    case: str,
    channels: Sequence[str],
    file_ending: str,
    names: Sequence[str],
    levels: Sequence[int],
    seed: int,
    folder: Path,
    advance: Callable[[int, str], None] | None = None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Perturb every channel of one case; write into ``folder``; the records per level."""
    records: dict[tuple[str, int], dict[str, Any]] = {(n, k): {} for n in names for k in levels}
    for channel in channels:
        file_name = f"{case}_{channel}{file_ending}"
        x, affine, reference = read_image_array(images / file_name)
        info = image_info(x, affine)
        for name in names:
            for level in levels:
                rng = image_rng(seed, case, channel, name)
                y, record = perturb_channel(x, affine, info, name, level, rng)
                target = level_folder(folder, name, level) / file_name
                write_image(cast_to_dtype(y, x.dtype), target, reference=reference)
                records[name, level][channel] = {
                    "file": file_name,
                    "case": case,
                    "channel": channel,
                    **record,
                }
                if advance is not None:
                    advance(1, f"{name} level {level}: {file_name}")
    return records


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; no oversubscription


def _run_cases(
    jobs: list[tuple], workers: int, advance: Callable[[int, str], None]
) -> dict[str, dict[tuple[str, int], dict[str, Any]]]:
    """Run :func:`_shift_case` for every job, in this process or in ``workers`` processes."""
    results: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results[job[1]] = _shift_case(*job, advance=advance)
        return results
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # spawn, not fork: the parent may hold threads (torch, tqdm's monitor) that fork breaks.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=context, initializer=_worker_init
    ) as executor:
        futures = {executor.submit(_shift_case, *job): job for job in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                job = futures[future]
                results[job[1]] = future.result()
                advance(len(job[2]) * len(job[4]) * len(job[5]), f"case {job[1]}")
    return results
