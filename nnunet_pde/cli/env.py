"""``nnunet-pde env``: the shell export lines nnU-Net needs to find the trainers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nnunet_pde.cli.options import add_command

__all__ = ["register_cli"]


def _cmd_env(args: argparse.Namespace) -> int:
    from nnunet_pde.env import export_lines

    print("\n".join(export_lines(data_root=args.root)))
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``env`` subcommand to the subparsers object of ``nnunet-pde``."""
    p = add_command(
        subparsers,
        "env",
        _cmd_env,
        help='print the export lines nnU-Net needs (use: eval "$(nnunet-pde env)")',
        description="Print shell export lines: nnUNet_extTrainer pointing at the nnunet-pde "
        "trainers of this install, and nnUNet_raw/nnUNet_preprocessed/nnUNet_results if unset. "
        'Example: eval "$(nnunet-pde env --root ~/nnunet_data)"',
    )
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder for the nnUNet_raw/_preprocessed/_results defaults (default: ./nnUNet_data)",
    )
    return p
