"""``nnunet-pde warmstart``: the command line of
:func:`nnunet_pde.checkpoints.warmstart_checkpoint`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nnunet_pde.cli.options import add_command, overwrite_option

__all__ = ["register_cli"]


def _cmd_warmstart(args: argparse.Namespace) -> int:
    from nnunet_pde.checkpoints import check_warmstart_paths, warmstart_checkpoint
    from nnunet_pde.env import find_trainer
    from nnunet_pde.errors import NnunetPdeError

    check_warmstart_paths(args.stock_checkpoint, args.output, args.overwrite)  # fast first
    try:
        trainer = find_trainer(args.trainer)
    except ValueError as exc:
        raise NnunetPdeError(str(exc), "--trainer") from None
    out = warmstart_checkpoint(
        args.stock_checkpoint, args.output, trainer, overwrite=args.overwrite
    )
    print(
        f"wrote {out}. Train from it with:\n  nnUNetv2_train DATASET CONFIGURATION FOLD "
        f"-tr {args.trainer} -pretrained_weights {out}"
    )
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``warmstart`` subcommand to the subparsers object of ``nnunet-pde``."""
    p = add_command(
        subparsers,
        "warmstart",
        _cmd_warmstart,
        help="make a PDE3D checkpoint from a stock nnUNetTrainer checkpoint",
        description="Write a checkpoint that `nnUNetv2_train ... -tr TRAINER -pretrained_weights "
        "OUT` accepts: the stock weights plus identity-initialised PDE blocks. Example: "
        "nnunet-pde warmstart $nnUNet_results/Dataset501_SyntheticBraTS/"
        "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth pde_init.pth",
    )
    p.add_argument(
        "stock_checkpoint", type=Path, help="checkpoint_final.pth of a stock nnU-Net fold"
    )
    p.add_argument("output", type=Path, help="where to write the PDE3D checkpoint")
    p.add_argument(
        "--trainer",
        default="nnUNetTrainerPDE3D",
        help="PDE3D trainer to build (default nnUNetTrainerPDE3D)",
    )
    overwrite_option(p, "replace OUTPUT if it exists")
    return p
