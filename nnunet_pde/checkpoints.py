"""Warm-starting a PDE3D training from a stock nnU-Net checkpoint.

nnU-Net's ``-pretrained_weights`` (``run/load_pretrained_weights.py``) asserts that every
key of the new network except ``.seg_layers.`` exists in the checkpoint with the same
shape, so a stock checkpoint, which lacks the PDE keys, is rejected. Because PDE blocks
start as the identity and keep every backbone name, the stock weights plus freshly
initialised PDE entries describe a PDE3D network that computes exactly what the stock
network computes. :func:`warmstart_checkpoint` writes such a checkpoint, which
``-pretrained_weights`` then accepts unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nnunet_pde.errors import CheckpointError, NnunetPdeError
from nnunet_pde.files import atomic_save
from nnunet_pde.network import PDE_CHILD_NAME

PDE_KEY_MARKER = f".{PDE_CHILD_NAME}."


def load_checkpoint(
    path: str | Path, flag: str = "CHECKPOINT", need_trainer_name: bool = True
) -> dict[str, Any]:
    """Read an nnU-Net checkpoint (``checkpoint_final.pth`` ...) on CPU.

    The file is unpickled in full (``weights_only=False``, as nnU-Net itself does, because
    ``init_args`` holds the plans and a ``torch.device``): only read files you trust.

    Raises
    ------
    CheckpointError
        If ``path`` is missing or a folder, cannot be read (truncated, empty, not PyTorch),
        or lacks ``network_weights`` (or ``trainer_name`` with ``need_trainer_name``); the
        message starts with ``flag``.
    """
    path = Path(path)
    if path.is_dir():
        names = ("checkpoint_final.pth", "checkpoint_best.pth")
        inside = [n for n in names if (path / n).is_file()]
        hint = f"e.g. {path / inside[0]}" if inside else "e.g. .../fold_0/checkpoint_final.pth"
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file, {hint}", flag)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", flag)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except OSError as exc:  # permissions, an I/O error: the file may be fine
        raise CheckpointError(
            f"cannot read {path}: {exc.strerror or exc}; check that the file is readable",
            flag,
        ) from None
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors come in many types
        why = " ".join(str(exc).split()) or "empty file"
        raise CheckpointError(
            f"{path} cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {why}); "
            "it may be truncated (copy it again) or not a checkpoint",
            flag,
        ) from None
    check_checkpoint(checkpoint, path, flag, need_trainer_name=need_trainer_name)
    return checkpoint


def _kind(value: Any) -> str:
    """``a dict``, ``None``, ``a torch.nn.Module (PlainConvUNet)``: what a value is, in words."""
    if value is None:
        return "None"
    if isinstance(value, torch.nn.Module):
        return f"a whole torch.nn.Module ({type(value).__name__})"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def check_checkpoint(
    checkpoint: Any, path: str | Path, flag: str = "CHECKPOINT", need_trainer_name: bool = True
) -> None:
    """Check that an unpickled file has the structure of an nnU-Net checkpoint.

    That is a dict with ``network_weights`` (a state dict: parameter name -> tensor),
    ``trainer_name`` (with ``need_trainer_name``) and ``init_args`` holding the plans (a
    dict), a configuration that the plans define and the dataset.json (a dict with
    ``labels``): everything :func:`build_network_for_checkpoint` reads.

    Raises
    ------
    CheckpointError
        Naming what is wrong (a whole ``torch.nn.Module`` saved instead of a checkpoint or
        as its weights, ``network_weights`` None, a configuration missing from the plans,
        ...) and what to pass instead; the message starts with ``flag``.
    """
    fold_files = "checkpoint_final.pth or checkpoint_best.pth of a fold"
    if isinstance(checkpoint, torch.nn.Module):
        raise CheckpointError(
            f"{path} holds {_kind(checkpoint)} saved with torch.save(model), not an nnU-Net "
            f"checkpoint (no plans to rebuild it from); pass the {fold_files} that "
            "nnUNetv2_train wrote",
            flag,
        )
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path} holds {_kind(checkpoint)}, not an nnU-Net checkpoint (a dict with "
            f"network_weights, init_args and trainer_name); pass the {fold_files}",
            flag,
        )
    if "network_weights" not in checkpoint:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError(
                f"{path} holds a bare state dict (torch.save(model.state_dict())), not an "
                "nnU-Net checkpoint: the plans and configuration to build the network from are "
                f"missing; pass the {fold_files} that nnUNetv2_train wrote",
                flag,
            )
        raise CheckpointError(
            f"{path} has no 'network_weights': not an nnU-Net checkpoint (expected "
            "checkpoint_final.pth, checkpoint_best.pth or checkpoint_latest.pth of a fold)",
            flag,
        )
    weights = checkpoint["network_weights"]
    if isinstance(weights, torch.nn.Module):
        raise CheckpointError(
            f"{path}: 'network_weights' is {_kind(weights)}, not its state dict (the model "
            "object was saved instead of model.state_dict()); save it again with "
            "network_weights=model.state_dict(), or pass the checkpoint nnUNetv2_train wrote",
            flag,
        )
    if not isinstance(weights, Mapping) or not weights:
        what = "empty" if isinstance(weights, Mapping) else _kind(weights)
        raise CheckpointError(
            f"{path}: 'network_weights' is {what}, not a state dict of the network's "
            f"tensors: the checkpoint holds no weights; pass the {fold_files} of a training "
            "that ran",
            flag,
        )
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{path}: 'network_weights' entry '{bad[0]}'{more} is {_kind(weights[bad[0]])}, "
            f"not a tensor: the state dict is damaged; pass the {fold_files} as "
            "nnUNetv2_train wrote it",
            flag,
        )
    if need_trainer_name:
        name = checkpoint.get("trainer_name")
        if not name or not isinstance(name, str):
            got = "no 'trainer_name'" if not name else f"a 'trainer_name' that is {_kind(name)}"
            raise CheckpointError(
                f"{path} has {got}: cannot tell which network to build; pass the "
                f"{fold_files} as nnUNetv2_train wrote it",
                flag,
            )
    check_init_args(checkpoint.get("init_args"), path, flag)


def check_init_args(init_args: Any, path: str | Path, flag: str = "CHECKPOINT") -> None:
    """Check a checkpoint's ``init_args``: the plans (a dict whose ``configurations`` hold
    ``init_args['configuration']``) and the dataset.json (a dict with ``labels``).

    Raises
    ------
    CheckpointError
        Naming the entry that is missing or malformed; the message starts with ``flag``.
    """
    advice = (
        "the checkpoint was not written by nnU-Net's trainer or was edited; pass the "
        "checkpoint_final.pth or checkpoint_best.pth of a fold as nnUNetv2_train wrote it"
    )
    if not isinstance(init_args, dict):
        raise CheckpointError(
            f"{path} has no init_args (plans, configuration, dataset.json) to build the "
            f"network from: {advice}",
            flag,
        )
    missing = [k for k in ("plans", "configuration", "dataset_json") if k not in init_args]
    if missing:
        raise CheckpointError(f"{path} has no init_args[{', '.join(missing)}]: {advice}", flag)
    plans, configuration = init_args["plans"], init_args["configuration"]
    dataset_json = init_args["dataset_json"]
    if not isinstance(plans, dict):
        raise CheckpointError(
            f"{path}: init_args['plans'] is {_kind(plans)}, not the plans dictionary: {advice}",
            flag,
        )
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise CheckpointError(
            f"{path}: the plans in init_args define no configurations: {advice}", flag
        )
    if not isinstance(configuration, str) or configuration not in configurations:
        raise CheckpointError(
            f"{path}: its configuration {configuration!r} is not in its plans "
            f"({plans.get('plans_name', 'unnamed')}, which define "
            f"{', '.join(map(str, configurations))}); init_args['configuration'] and "
            "init_args['plans'] come from different trainings or were edited: pass the "
            "checkpoint as nnUNetv2_train wrote it, or set init_args['configuration'] to the "
            "configuration it was trained with",
            flag,
        )
    if not isinstance(dataset_json, dict) or not isinstance(dataset_json.get("labels"), dict):
        what = "has no 'labels'" if isinstance(dataset_json, dict) else f"is {_kind(dataset_json)}"
        raise CheckpointError(
            f"{path}: init_args['dataset_json'] {what}, so the output channels are unknown: "
            f"{advice}",
            flag,
        )


def build_network_for_checkpoint(
    trainer_class: type,
    checkpoint: dict,
    path: str | Path = "the checkpoint",
    flag: str | None = None,
) -> torch.nn.Module:
    """Build ``trainer_class``'s network for the plans/configuration/dataset stored in an
    nnU-Net checkpoint's ``init_args`` (on CPU, deep supervision on).

    Raises
    ------
    CheckpointError
        If ``init_args`` lacks what nnU-Net needs (:func:`check_init_args`) or nnU-Net's
        plans handling cannot read it; the message names ``path`` and starts with ``flag``.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    init_args = checkpoint.get("init_args")
    check_init_args(init_args, path, flag)
    try:
        plans_manager = PlansManager(init_args["plans"])
        configuration_manager = plans_manager.get_configuration(init_args["configuration"])
        dataset_json = init_args["dataset_json"]
        num_inputs = determine_num_input_channels(
            plans_manager, configuration_manager, dataset_json
        )
        num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        return trainer_class.build_network_architecture(
            plans_manager, configuration_manager, num_inputs, num_outputs, True
        )
    except (KeyError, TypeError, AttributeError, AssertionError, RuntimeError) as exc:
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(
            f"the plans or dataset.json stored in {path} are incomplete or malformed, so "
            f"nnU-Net cannot build its network ({type(exc).__name__}: {why}); pass the "
            "checkpoint as nnUNetv2_train wrote it",
            flag,
        ) from None


def merge_stock_weights(
    target_state: dict[str, torch.Tensor], stock_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Stock weights for every backbone key, the target's own values for the PDE keys.

    Raises
    ------
    ValueError
        If a stock key is missing from the target or has another shape (different plans
        or architecture), or the target has a non-PDE key that the stock weights lack.
    """
    problems = []
    for key, value in stock_state.items():
        if key not in target_state:
            problems.append(f"stock key '{key}' does not exist in the PDE3D network")
        elif tuple(target_state[key].shape) != tuple(value.shape):
            problems.append(
                f"'{key}': stock shape {tuple(value.shape)} != PDE3D shape "
                f"{tuple(target_state[key].shape)}"
            )
    for key in target_state:
        if key not in stock_state and PDE_KEY_MARKER not in key:
            problems.append(f"backbone key '{key}' is missing from the stock checkpoint")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... ({len(problems)} problems)" if len(problems) > 5 else ""
        )
        raise NnunetPdeError(
            "the stock checkpoint does not match the PDE3D network built from its own plans "
            f"(was it trained with the same plans identifier and configuration?): {shown}"
        )
    merged = dict(target_state)
    merged.update(stock_state)
    return merged


def warmstart_checkpoint(
    stock_checkpoint: str | Path,
    output: str | Path,
    trainer_class: type,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint that ``nnUNetv2_train ... -tr <trainer> -pretrained_weights``
    accepts, from a checkpoint of nnU-Net's stock ``nnUNetTrainer`` (same plans).

    The PDE blocks get their identity initialisation, so the written weights compute what
    the stock network computes. The input file is only read.

    Returns
    -------
    Path
        The written file.
    """
    src, dst = check_warmstart_paths(stock_checkpoint, output, overwrite)
    checkpoint = load_checkpoint(src, "STOCK_CHECKPOINT", need_trainer_name=False)
    if any(PDE_KEY_MARKER in key for key in checkpoint["network_weights"]):
        raise NnunetPdeError(
            f"{src} already has PDE block weights (trainer "
            f"{checkpoint.get('trainer_name') or 'unknown'}); warmstart only converts stock "
            "nnUNetTrainer checkpoints. Pass it to -pretrained_weights directly (its trained "
            "PDE weights are then kept), or warm-start from the stock checkpoint (PDE blocks "
            "reset to the identity)",
            "STOCK_CHECKPOINT",
        )
    network = build_network_for_checkpoint(trainer_class, checkpoint, src, "STOCK_CHECKPOINT")
    merged = merge_stock_weights(network.state_dict(), checkpoint["network_weights"])
    out = {
        "network_weights": merged,
        "init_args": checkpoint["init_args"],
        "trainer_name": trainer_class.__name__,
        "warmstarted_from": {
            "path": str(src.resolve()),
            "trainer_name": checkpoint.get("trainer_name"),
        },
    }
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(dst, lambda tmp: torch.save(out, tmp))
    except (OSError, RuntimeError) as exc:  # torch.save reports write errors as RuntimeError
        why = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        raise NnunetPdeError(
            f"cannot write {dst}: {why}; choose a writable folder", "OUTPUT"
        ) from None
    return dst


def check_warmstart_paths(
    stock_checkpoint: str | Path, output: str | Path, overwrite: bool = False
) -> tuple[Path, Path]:
    """The checks of :func:`warmstart_checkpoint` that need no file to be read: the output
    is not a folder, not the input, and exists only with ``overwrite``; the input is a file.
    """
    src = Path(stock_checkpoint)
    dst = Path(output)
    if dst.is_dir():
        raise NnunetPdeError(
            f"{dst} is a folder; give the file to write, e.g. {dst / 'pde_init.pth'}", "OUTPUT"
        )
    if dst.exists() and not overwrite:
        raise FileExistsError(
            f"OUTPUT: {dst} exists; pass --overwrite to replace it or choose another path"
        )
    if src.exists() and dst.resolve() == src.resolve():
        raise NnunetPdeError("must differ from STOCK_CHECKPOINT (which is only read)", "OUTPUT")
    if src.is_dir() or not src.is_file():
        load_checkpoint(src, "STOCK_CHECKPOINT")  # says what is wrong with it
    return src, dst
