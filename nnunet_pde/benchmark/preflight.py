"""What ``benchmark run`` checks before anything starts: environment, dataset, device, trainers.

Each check raises :class:`~nnunet_pde.errors.BenchmarkError` with what is wrong and how to
fix it, so that a grid of trainings never starts on a setting that would fail every fold.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_pde.commands import DEFAULT_TRAIN_COMMAND
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.folders import (
    dataset_id,
    require_env_folder,
    resolve_dataset_name,
    split_paths,
)

__all__ = ["DEVICES", "check_device", "check_run_environment", "resolve_trainers"]


def check_run_environment(
    dataset: str | int,
    configuration: str,
    plans: str,
    environ: Mapping[str, str] | None = None,
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
    require_ext_trainer: bool = True,
) -> tuple[str, Path, Path]:
    """Check what ``nnUNetv2_train`` will need before anything starts.

    Checks that ``nnUNet_results`` and ``nnUNet_preprocessed`` are existing folders, that
    ``nnUNet_extTrainer`` is set and lists the nnunet-pde trainers folder, that the dataset
    resolves to one name, that it was planned and preprocessed with ``plans`` for
    ``configuration``, and that the training command is on ``PATH``.

    Returns
    -------
    (dataset_name, results, preprocessed_dataset_folder)

    Raises
    ------
    BenchmarkError
        With what is wrong and how to fix it.
    """
    env = os.environ if environ is None else environ
    results = require_env_folder("nnUNet_results", env, create=True)
    preprocessed = require_env_folder("nnUNet_preprocessed", env)
    if require_ext_trainer:
        from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir

        ext = split_paths(env.get(EXT_TRAINER_VAR))
        tdir = trainer_dir()
        if not ext:
            raise BenchmarkError(
                f"{EXT_TRAINER_VAR} is not set, so nnUNetv2_train cannot find the nnunet-pde "
                f'trainers; run: eval "$(nnunet-pde env)"'
            )
        if not any(Path(p).resolve() == tdir for p in ext if Path(p).exists()):
            raise BenchmarkError(
                f"{EXT_TRAINER_VAR}={env.get(EXT_TRAINER_VAR)} does not list this install's "
                f'trainers folder {tdir}; run: eval "$(nnunet-pde env)"'
            )
    name = resolve_dataset_name(dataset, env)
    pre = preprocessed / name
    plans_file = pre / f"{plans}.json"
    if not plans_file.is_file():
        raise BenchmarkError(
            f"{plans_file} does not exist: plan and preprocess first, e.g. "
            f"nnUNetv2_plan_and_preprocess -d {dataset_id(name)} -c {configuration}"
            + ("" if plans == "nnUNetPlans" else f" (with the planner that writes {plans})")
        )
    try:
        configurations = json.loads(plans_file.read_text()).get("configurations", {})
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{plans_file} is not valid JSON: {exc}") from None
    if configuration not in configurations:
        raise BenchmarkError(
            f"configuration '{configuration}' is not in {plans_file} "
            f"(it has: {', '.join(configurations) or 'none'})"
        )
    exe = train_command[0] if train_command else ""
    if not exe or shutil.which(exe, path=env.get("PATH")) is None:
        raise BenchmarkError(
            f"'{exe}' is not on PATH; activate the environment where nnunetv2 is installed"
        )
    return name, results, pre


#: the values of nnUNetv2_train -device
DEVICES = ("cuda", "cpu", "mps")


def check_device(device: str | None) -> None:
    """``--device`` must be one of nnU-Net's (:data:`DEVICES`); BenchmarkError otherwise."""
    if device is not None and device not in DEVICES:
        raise BenchmarkError(
            f"'{device}' is not an nnUNetv2_train device; use one of {', '.join(DEVICES)}",
            "--device",
        )


def resolve_trainers(trainers: Sequence[str], environ: Mapping[str, str]) -> dict[str, type]:
    """Trainer classes by name, found by nnU-Net's own finder as ``nnUNetv2_train -tr`` will.

    Returns an empty dict when nnunetv2 is not importable here (the training command runs
    elsewhere, e.g. in a container). Raises BenchmarkError naming the unknown trainers.
    """
    try:
        from nnunet_pde.env import find_trainer_with_nnunet

        found, problems = find_trainer_with_nnunet(trainers, environ)
    except ImportError:
        return {}
    if problems:
        raise BenchmarkError(
            f"unknown trainer(s) {', '.join(problems)}: nnU-Net's finder does not find them "
            "in nnunetv2 or in nnUNet_extTrainer; check the spelling (nnunet-pde "
            "list-trainers lists ours)",
            "--trainers",
        )
    return found
