"""``nnunet-pde derive noisy-labels``: the command line of :mod:`nnunet_pde.derive.noisy_labels`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nnunet_pde.cli.options import add_command, overwrite_option, raw_option, seed_option
from nnunet_pde.derive.noisy_labels import (
    CLEAN_LABELS_DIR,
    DERIVED_JSON,
    MODES,
    derive_noisy_labels,
    read_derived_info,
)

# --------------------------------------------------------------------------- CLI

_EXAMPLE = """\
examples:
  nnunet-pde derive noisy-labels 501 --id 511 --mode erode --magnitude 2
  nnunet-pde derive noisy-labels Dataset501_SyntheticBraTS --id 512 --mode random-morph \\
      --magnitude 3 --fraction 0.5 --seed 1 --labels "tumor core" "enhancing tumor"
  nnunet-pde derive noisy-labels 502 --id 513 --mode add-blobs --magnitude 8 --blobs 2

writes $nnUNet_raw/Dataset511_<source>NoisyErode2mm with the corrupted labels in labelsTr,
the source's labels in labelsTr_clean (evaluate against these) and every sampled parameter
in nnunet_pde_derived.json. The source dataset is only read. See docs/robustness.md.
"""


def _cmd_noisy_labels(args: argparse.Namespace) -> int:
    def show(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    folder = derive_noisy_labels(
        args.source,
        args.id,
        mode=args.mode,
        magnitude_mm=args.magnitude,
        fraction=args.fraction,
        seed=args.seed,
        name=args.name,
        raw_root=args.raw,
        labels=args.labels,
        smoothness_mm=args.smoothness,
        blobs=args.blobs,
        overwrite=args.overwrite,
        progress=None if args.quiet else show,
    )
    info = read_derived_info(folder) or {}
    damage = info.get("label_damage") or {}
    if damage.get("warnings"):
        print(
            f"warning: --mode {args.mode} --magnitude {args.magnitude:g} destroys rather than "
            f"perturbs the labels: {'; '.join(damage['warnings'])}; see label_damage in "
            f"{DERIVED_JSON} (a smaller --magnitude, in mm, perturbs them)",
            file=sys.stderr,
        )
    print(
        f"wrote {folder}\n"
        f"  {info.get('mode')} {info.get('magnitude_mm'):g} mm on {', '.join(info['labels'])}: "
        f"{info['num_corrupted']} of {info['num_cases']} training cases corrupted "
        f"({info['num_changed']} changed)\n"
        f"  labelsTr: corrupted training labels; {CLEAN_LABELS_DIR}: the clean ones (evaluate "
        f"against these); {DERIVED_JSON}: every sampled parameter\n"
        + "".join(
            f"  {name}: {100 * d['fraction_changed']:.1f}% of its voxels changed, noisy/clean "
            f"volume {d['volume_ratio']:.3g}, emptied in {d['cases_emptied']} of "
            f"{d['cases_present']} case(s)\n"
            for name, d in (damage.get("structures") or {}).items()
        )
        + f"Next: nnUNetv2_plan_and_preprocess -d {args.id} -c 3d_fullres "
        "--verify_dataset_integrity"
    )
    return 0


def register_cli(derive_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``noisy-labels`` to the subparsers object of ``nnunet-pde derive``."""
    p = add_command(
        derive_subparsers,
        "noisy-labels",
        _cmd_noisy_labels,
        help="new dataset with corrupted training labels (clean ones kept in labelsTr_clean)",
        description=(
            "Write a new nnU-Net raw dataset from SOURCE whose training labels are corrupted: "
            "systematic erosion/dilation, random-sign erosion/dilation, smooth boundary "
            "jitter, dropped small components or spurious blobs, on a fraction of the cases. "
            "Images are copied unchanged, the clean labels are kept in labelsTr_clean and every "
            "sampled parameter goes to nnunet_pde_derived.json. Deterministic from --seed."
        ),
        epilog=_EXAMPLE,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="source dataset: id (501), name (Dataset501_SyntheticBraTS) or folder",
    )
    p.add_argument("--id", type=int, required=True, help="nnU-Net id of the new dataset")
    p.add_argument("--mode", required=True, choices=MODES, help="kind of label noise")
    p.add_argument(
        "--magnitude",
        type=float,
        required=True,
        metavar="MM",
        help="mm: boundary shift (erode, dilate, random-morph), largest displacement "
        "(jitter), largest equivalent diameter removed (drop-components), blob diameter "
        "(add-blobs)",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="share of the training cases to corrupt, in (0, 1] (default 1)",
    )
    seed_option(p)
    p.add_argument(
        "--name", default=None, help="name of the new dataset (default <source>Noisy<Mode><N>mm)"
    )
    raw_option(p, "nnUNet_raw folder to read SOURCE from and write to (default: $nnUNet_raw)")
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="labels/regions to corrupt, by name or value (default: all foreground)",
    )
    p.add_argument(
        "--smoothness",
        type=float,
        default=10.0,
        metavar="MM",
        help="jitter: standard deviation of the field's Gaussian smoothing in mm (default 10)",
    )
    p.add_argument(
        "--blobs", type=int, default=1, help="add-blobs: balls per corrupted case (default 1)"
    )
    overwrite_option(p, "replace an existing dataset with this id (never the source)")
    p.add_argument("--quiet", action="store_true", help="no per-case progress on stderr")
    return p
