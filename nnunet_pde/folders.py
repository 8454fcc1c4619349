"""nnU-Net's conventions: environment folders, dataset ids and names, fold folders, splits.

``$nnUNet_results/<DatasetNNN_Name>/<trainer>__<plans>__<configuration>/fold_<k>/`` holds a
fold's ``checkpoint_final.pth`` (written at the end of training; ``checkpoint_latest.pth`` is
then deleted), ``checkpoint_latest.pth`` / ``checkpoint_best.pth`` (during training) and
``validation/`` with the fold's out-of-fold predictions and nnU-Net's ``summary.json``.
``$nnUNet_preprocessed/<DatasetNNN_Name>/`` holds ``<plans>.json``, ``dataset.json``,
``splits_final.json`` and ``gt_segmentations/``, the reference segmentations nnU-Net's own
validation scores against.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_pde.errors import BenchmarkError, NnunetPdeError

__all__ = [
    "gt_segmentations",
    "DATASET_FOLDER",
    "DATASET_NAME",
    "FOLD_FINISHED",
    "FOLD_INTERRUPTED",
    "FOLD_NEW",
    "check_trainer_names",
    "checkpoint_problem",
    "dataset_id",
    "find_raw_dataset",
    "fold_dir",
    "fold_state",
    "parse_folds",
    "possible_folds",
    "read_splits",
    "require_env_folder",
    "resolve_dataset_name",
    "resume_checkpoint",
    "split_paths",
    "trainer_dir_name",
]

FOLD_NEW = "new"
FOLD_INTERRUPTED = "interrupted"
FOLD_FINISHED = "finished"

#: nnU-Net's dataset folder name ``DatasetNNN_Name``; group 1 is the three-digit id.
DATASET_NAME = re.compile(r"^Dataset(\d{3})_[A-Za-z0-9_\-]+$")
#: Any ``DatasetNNN_<rest>`` folder name (group 1: the id, group 2: the rest).
DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(.+)$")


def dataset_id(name: str) -> str:
    """The id of ``DatasetNNN_Name`` as nnU-Net's ``-d`` takes it: ``"501"``, ``"4"``."""
    return name[7:10].lstrip("0") or "0"


def split_paths(value: str | None) -> list[str]:
    """The non-empty entries of an ``os.pathsep``-separated variable (``nnUNet_extTrainer``)."""
    return [p for p in (value or "").split(os.pathsep) if p.strip()]


def require_env_folder(
    var: str, environ: Mapping[str, str] | None = None, create: bool = False
) -> Path:
    """The folder named by environment variable ``var``; BenchmarkError if unset or missing.

    With ``create``, a missing folder is created (as nnU-Net does for ``nnUNet_results``).
    """
    env = os.environ if environ is None else environ
    value = env.get(var)
    if not value:
        raise BenchmarkError(
            f"{var} is not set. nnU-Net needs nnUNet_raw, nnUNet_preprocessed and "
            'nnUNet_results; set them, e.g. with eval "$(nnunet-pde env)"'
        )
    path = Path(value)
    if create and not path.exists():
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise BenchmarkError(f"{var}={value} does not exist or is not a folder")
    return path


def find_raw_dataset(source: object, raw_root: str | os.PathLike[str] | None) -> Path:
    """The raw dataset folder of a dataset id (``501``, ``"501"``), a ``DatasetNNN_Name`` in
    ``raw_root``, or the path of a dataset folder.

    Raises
    ------
    FileNotFoundError
        No such dataset id, name or folder.
    NnunetPdeError (a ValueError)
        ``source`` is of the wrong type, an id outside 1-999 or found twice, or an id or name
        was given without a ``raw_root`` to look it up in.
    """
    if isinstance(source, bool) or not isinstance(source, str | int | os.PathLike):
        raise NnunetPdeError(f"source must be a dataset id, name or folder; got {source!r}")
    root = None if raw_root is None else Path(raw_root)
    text = str(source).strip()
    if not isinstance(source, os.PathLike) and re.fullmatch(r"\d+", text):
        dataset_id = int(text)
        if not 1 <= dataset_id <= 999:
            raise NnunetPdeError(f"dataset ids are 1 to 999, got {dataset_id}")
        if root is None:
            raise NnunetPdeError(
                f"cannot resolve dataset id {dataset_id}: pass --raw DIR, set "
                "nnUNet_raw, or give the path of the dataset folder"
            )
        prefix = f"Dataset{dataset_id:03d}_"
        found = (
            sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
            if root.is_dir()
            else []
        )
        if not found:
            raise FileNotFoundError(f"no dataset with id {dataset_id} ({prefix}*) in {root}")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise NnunetPdeError(f"dataset id {dataset_id} is ambiguous in {root}: {names}")
        return found[0]
    if isinstance(source, str) and root is not None and (root / text).is_dir():
        return root / text
    if Path(source).is_dir():
        return Path(source)
    where = f"a dataset in {root}" if root is not None else "a dataset (no nnUNet_raw given)"
    raise FileNotFoundError(
        f"source dataset {source} does not exist: it is neither a folder nor {where}"
    )


def resolve_dataset_name(dataset: str | int, environ: Mapping[str, str] | None = None) -> str:
    """``DatasetNNN_Name`` for a dataset id (``"501"``, ``501``) or name, as nnU-Net does.

    A name is returned as given (after a format check). An id is looked up as
    ``DatasetNNN_*`` in ``$nnUNet_preprocessed``, ``$nnUNet_raw`` and ``$nnUNet_results``
    (those that are set); exactly one distinct name must be found.
    """
    env = os.environ if environ is None else environ
    text = str(dataset).strip()
    if text.startswith("Dataset"):
        if not DATASET_NAME.match(text):
            raise BenchmarkError(
                f"'{text}' is not an nnU-Net dataset name (DatasetNNN_Name, e.g. "
                "Dataset501_SyntheticBraTS)"
            )
        return text
    try:
        dataset_id = int(text)
    except ValueError:
        raise BenchmarkError(
            f"dataset must be an id (e.g. 501) or a name (Dataset501_SyntheticBraTS), got '{text}'"
        ) from None
    if not 0 < dataset_id < 1000:
        raise BenchmarkError(f"dataset ids are 1 to 999, got {dataset_id}")
    prefix = f"Dataset{dataset_id:03d}_"
    found: set[str] = set()
    searched = []
    for var in ("nnUNet_preprocessed", "nnUNet_raw", "nnUNet_results"):
        value = env.get(var)
        if value and Path(value).is_dir():
            searched.append(f"{var}={value}")
            found.update(
                p.name for p in Path(value).iterdir() if p.is_dir() and p.name.startswith(prefix)
            )
    if not found:
        raise BenchmarkError(
            f"no dataset with id {dataset_id} ({prefix}*) in "
            f"{', '.join(searched) or 'any nnU-Net folder (none is set)'}"
        )
    if len(found) > 1:
        raise BenchmarkError(
            f"dataset id {dataset_id} is ambiguous: {', '.join(sorted(found))}; pass the full name"
        )
    return found.pop()


def trainer_dir_name(trainer: str, plans: str, configuration: str) -> str:
    """nnU-Net's model folder name ``<trainer>__<plans>__<configuration>``."""
    return f"{trainer}__{plans}__{configuration}"


def fold_dir(
    results: str | os.PathLike[str],
    dataset: str,
    trainer: str,
    plans: str,
    configuration: str,
    fold: int | str,
) -> Path:
    """``<results>/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>``."""
    return (
        Path(results) / dataset / trainer_dir_name(trainer, plans, configuration) / f"fold_{fold}"
    )


def fold_state(folder: str | os.PathLike[str]) -> str:
    """Whether a fold is :data:`FOLD_FINISHED`, :data:`FOLD_INTERRUPTED` or :data:`FOLD_NEW`.

    * finished: ``checkpoint_final.pth`` and ``validation/summary.json`` exist;
    * interrupted: some checkpoint exists (``checkpoint_latest.pth``, ``checkpoint_best.pth``,
      or ``checkpoint_final.pth`` without a finished validation) - ``nnUNetv2_train --c``
      continues from the final, else the latest, else the best checkpoint, and runs the
      validation at the end;
    * new: no checkpoint (log files of a run that died before its first checkpoint do not
      count: it starts again from scratch).
    """
    folder = Path(folder)
    final = (folder / "checkpoint_final.pth").is_file()
    if final and (folder / "validation" / "summary.json").is_file():
        return FOLD_FINISHED
    if (
        final
        or (folder / "checkpoint_latest.pth").is_file()
        or (folder / "checkpoint_best.pth").is_file()
    ):
        return FOLD_INTERRUPTED
    return FOLD_NEW


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a checkpoint file cannot be loaded (truncated, empty, not a PyTorch archive), or
    None when it is a complete archive. Reads only the zip directory, not the weights."""
    import zipfile

    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "it is empty"
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith("data.pkl") for n in archive.namelist()):
                return "it is a zip file but not a PyTorch checkpoint (no data.pkl)"
    except zipfile.BadZipFile:
        return f"it is truncated or not a PyTorch checkpoint ({size} bytes, no zip directory)"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return None


def resume_checkpoint(folder: str | os.PathLike[str], without: Sequence[str] = ()) -> Path | None:
    """The checkpoint ``nnUNetv2_train --c`` would load: final, else latest, else best;
    the file names in ``without`` count as absent (a torn one about to be set aside)."""
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if name not in without and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def possible_folds(preprocessed_dataset: Path) -> tuple[int, str]:
    """How many folds ``nnUNetv2_train`` can run for a preprocessed dataset, and why.

    ``splits_final.json`` decides when it exists; otherwise nnU-Net makes a 5-fold split,
    which needs at least 5 training cases (``numTraining`` of its ``dataset.json``).

    Raises
    ------
    BenchmarkError
        Fewer than 5 training cases and no ``splits_final.json``.
    """
    try:
        splits = read_splits(preprocessed_dataset)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(
            f"{preprocessed_dataset / 'splits_final.json'} cannot be read: {exc}"
        ) from None
    if splits is not None:
        return len(splits), f"{preprocessed_dataset / 'splits_final.json'} has {len(splits)}"
    try:
        ds = json.loads((preprocessed_dataset / "dataset.json").read_text())
        n_cases = int(ds["numTraining"])
    except (OSError, ValueError, KeyError, TypeError):
        return 5, "nnU-Net makes 5"
    if n_cases < 5:
        raise BenchmarkError(
            f"{preprocessed_dataset.name} has {n_cases} training case(s), but nnU-Net's "
            "5-fold cross-validation needs at least 5 (every fold would fail in its split); "
            "add cases or write your own splits_final.json into "
            f"{preprocessed_dataset}",
            "--folds",
        )
    return 5, f"nnU-Net makes 5 for {n_cases} training cases"


def gt_segmentations(preprocessed_dataset: Path) -> Path:
    """``<preprocessed dataset>/gt_segmentations`` (nnU-Net's validation references).

    Raises
    ------
    BenchmarkError
        It does not exist (the dataset was not preprocessed).
    """
    gt = preprocessed_dataset / "gt_segmentations"
    if not gt.is_dir():
        raise BenchmarkError(
            f"{gt} does not exist: nnU-Net writes the reference segmentations there during "
            f"nnUNetv2_plan_and_preprocess -d {dataset_id(preprocessed_dataset.name)}"
        )
    return gt


def read_splits(preprocessed_dataset: Path) -> list[dict[str, list[str]]] | None:
    """``splits_final.json`` of a preprocessed dataset (list of ``{"train", "val"}``) or None."""
    path = preprocessed_dataset / "splits_final.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path} is not valid JSON: {exc}") from None


def parse_folds(folds: Sequence[str | int]) -> list[int]:
    """Fold numbers as ints, in the given order, without duplicates; BenchmarkError otherwise."""
    out: list[int] = []
    for f in folds:
        try:
            k = int(f)
        except (TypeError, ValueError):
            raise BenchmarkError(
                f"folds are integers (0 1 2 3 4 for nnU-Net's 5-fold CV), got '{f}'"
            ) from None
        if k < 0:
            raise BenchmarkError(f"folds are >= 0, got {k}")
        if k in out:
            raise BenchmarkError(f"fold {k} is listed twice")
        out.append(k)
    if not out:
        raise BenchmarkError("no folds given")
    return out


def check_trainer_names(trainers: Sequence[str]) -> list[str]:
    """Trainer names in the given order; BenchmarkError on an empty list or duplicates."""
    if not trainers:
        raise BenchmarkError("no trainers given (--trainers T1 T2 ...)")
    seen: list[str] = []
    for t in trainers:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", t):
            raise BenchmarkError(f"'{t}' is not a trainer class name")
        if t in seen:
            raise BenchmarkError(f"trainer {t} is listed twice")
        seen.append(t)
    return seen
