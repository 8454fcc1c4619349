"""``nnunet-pde inspect``: the command line of :mod:`nnunet_pde.block_report`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from nnunet_pde.block_report import format_summary, inspect_checkpoint, plot_report
from nnunet_pde.cli.options import add_command
from nnunet_pde.errors import NnunetPdeError

# ------------------------------------------------------------------------------ CLI

_EXAMPLE = """example:
  nnunet-pde inspect $nnUNet_results/Dataset501_SyntheticBraTS/\\
nnUNetTrainerPDE3D__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth \\
      --json pde_report.json --plot pde_figures/
"""


def _writable_target(path: Path, flag: str, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if not folder and path.is_dir():
        example = path / "pde.json"
        raise NnunetPdeError(f"{path} is a folder; give a file name, e.g. {example}", flag)
    if folder and path.exists() and not path.is_dir():
        raise NnunetPdeError(f"{path} exists and is not a folder", flag)
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise NnunetPdeError(f"cannot write into {probe}; choose a writable folder", flag)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from nnunet_pde.files import atomic_write_text

    if args.json is not None:
        _writable_target(args.json, "--json")
    if args.plot is not None:
        _writable_target(args.plot, "--plot", folder=True)
    report = inspect_checkpoint(args.checkpoint)
    text = format_summary(report, top=args.top)
    written: list[Path] = []
    try:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.json, json.dumps(report, indent=1, allow_nan=True) + "\n")
            written.append(args.json)
        if args.plot is not None:
            written.extend(plot_report(report, args.plot))
    except OSError as exc:
        flag = "--plot" if written or args.json is None else "--json"
        raise NnunetPdeError(f"cannot write: {exc.strerror or exc}", flag) from None
    print(text)
    print()
    if written:
        print(f"wrote {len(written)} file(s):")
        for path in written:
            print(f"  {path}")
    else:
        print("nothing written (--json FILE for the full report, --plot DIR for figures)")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to an ``argparse`` subparsers object.

    The parser sets ``func``, which returns the exit code (0, or 2 with a one-line
    ``error: ...`` on stderr for a missing file, a file that is not an nnU-Net checkpoint
    or a trainer that is neither ours nor a subclass of ours).
    """
    p = add_command(
        subparsers,
        "inspect",
        _cmd_inspect,
        help="what the PDE blocks of a trained checkpoint learned (time step, diffusivity, "
        "edge thresholds, moment kernels, per-epoch gate and contribution)",
        description="Rebuild the network of the nnunet-pde trainer that wrote CHECKPOINT (or "
        "of a user's subclass of one, found through nnUNet_extTrainer by nnU-Net's own "
        "finder), load its weights and report for every PDE block the learned time step (and "
        "the effective per-channel step after the stability clamp), gate, diffusivity alpha "
        "and edge threshold kappa per channel and, for moment operators, the moment arrays "
        "and which derivatives the kernels effectively approximate; then the per-epoch "
        "diagnostics the training logged (|gamma| mean/max, tau, contribution "
        "||y-x||/||x||).",
        epilog=_EXAMPLE,
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        type=Path,
        help="checkpoint_final.pth / checkpoint_best.pth of a fold trained with an nnunet-pde "
        "trainer",
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="write the full report as JSON"
    )
    p.add_argument(
        "--plot", type=Path, default=None, metavar="DIR", help="write PNG figures into DIR"
    )
    p.add_argument(
        "--top",
        type=int,
        default=5,
        help="channels listed per moment block in the summary (default 5)",
    )
    return p
