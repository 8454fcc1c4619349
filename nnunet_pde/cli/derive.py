"""``nnunet-pde derive``: the robustness data, ``noisy-labels`` and ``shifted-images``."""

from __future__ import annotations

import argparse
from typing import Any

from nnunet_pde.cli import noisy_labels, shifted_images
from nnunet_pde.cli.options import add_group

__all__ = ["register_cli"]


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``derive`` and its subcommands to the subparsers object of ``nnunet-pde``."""
    return add_group(
        subparsers,
        "derive",
        help="derive robustness data from a dataset: noisy-labels, shifted-images",
        description="Derive the data of the robustness regimes from an existing nnU-Net raw "
        "dataset without touching it: `noisy-labels` writes a new dataset with corrupted "
        "training labels (clean ones kept in labelsTr_clean), `shifted-images` writes its test "
        "images under scanner-shift perturbations at graded severities. See docs/robustness.md.",
        dest="derive_command",
        metavar="KIND",
        children=(noisy_labels.register_cli, shifted_images.register_cli),
    )
