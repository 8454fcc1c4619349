"""``nnunet-pde doctor``: check the environment and say what to fix."""

from __future__ import annotations

import argparse
from typing import Any

from nnunet_pde.cli.options import add_command

__all__ = ["register_cli"]

#: How each check's status starts its line.
_TAGS = {"ok": "[ OK ]", "warn": "[WARN]", "fail": "[FAIL]"}


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nnunet_pde.env import diagnose

    checks = diagnose()
    for c in checks:
        line = f"{_TAGS[c.status]} {c.what}"
        if c.fix and c.status != "ok":
            line += f"\n       fix: {c.fix}"
        print(line)
    n_fail = sum(c.status == "fail" for c in checks)
    n_warn = sum(c.status == "warn" for c in checks)
    print(f"\n{n_fail} problem(s), {n_warn} warning(s)")
    return 1 if n_fail else 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``doctor`` subcommand to the subparsers object of ``nnunet-pde``."""
    return add_command(
        subparsers,
        "doctor",
        _cmd_doctor,
        help="check the environment and say what is missing",
        description="Check Python, nnunetv2, torch, nnUNet_extTrainer and the nnU-Net data "
        "folders, and resolve every trainer with nnU-Net's own finder. Exit code 1 on problems.",
    )
