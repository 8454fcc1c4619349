"""``nnunet-pde list-trainers``: every trainer with the first line of its docstring."""

from __future__ import annotations

import argparse
from typing import Any

from nnunet_pde.cli.options import add_command

__all__ = ["register_cli"]


def _cmd_list_trainers(args: argparse.Namespace) -> int:
    from nnunet_pde.env import list_trainers

    trainers = list_trainers()
    width = max(len(n) for n in trainers)
    for name, cls in trainers.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<{width}}  {doc[0] if doc else ''}")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``list-trainers`` subcommand to the subparsers object of ``nnunet-pde``."""
    return add_command(
        subparsers,
        "list-trainers",
        _cmd_list_trainers,
        help="list the nnunet-pde trainers",
        description="List every trainer class nnunet-pde provides, with its description.",
    )
