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

from pathlib import Path
from typing import Any

import torch

from nnunet_pde.errors import CheckpointError, NnunetPdeError, atomic_save
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
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors come in many types
        why = " ".join(str(exc).split()) or "empty file"
        raise CheckpointError(
            f"{path} cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {why}); "
            "it may be truncated (copy it again) or not a checkpoint",
            flag,
        ) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError(
            f"{path} has no 'network_weights': not an nnU-Net checkpoint (expected "
            "checkpoint_final.pth, checkpoint_best.pth or checkpoint_latest.pth of a fold)",
            flag,
        )
    if need_trainer_name and not checkpoint.get("trainer_name"):
        raise CheckpointError(
            f"{path} has no 'trainer_name': cannot tell which network to build", flag
        )
    return checkpoint


def build_network_for_checkpoint(trainer_class: type, checkpoint: dict) -> torch.nn.Module:
    """Build ``trainer_class``'s network for the plans/configuration/dataset stored in an
    nnU-Net checkpoint's ``init_args`` (on CPU, deep supervision on)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    init_args = checkpoint.get("init_args") or {}
    missing = [k for k in ("plans", "configuration", "dataset_json") if k not in init_args]
    if missing:
        raise CheckpointError(
            f"the checkpoint has no init_args[{', '.join(missing)}]: it was not written by "
            "nnU-Net's trainer (expected checkpoint_final.pth or checkpoint_best.pth of a fold)"
        )
    plans_manager = PlansManager(init_args["plans"])
    configuration_manager = plans_manager.get_configuration(init_args["configuration"])
    dataset_json = init_args["dataset_json"]
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_class.build_network_architecture(
        plans_manager, configuration_manager, num_inputs, num_outputs, True
    )


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
    network = build_network_for_checkpoint(trainer_class, checkpoint)
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
