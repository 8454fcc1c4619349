"""``nnunet-pde derive shifted-images``: the command line of the scanner-shift derivation."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from nnunet_pde.cli.options import (
    add_command,
    no_progress_option,
    overwrite_option,
    raw_option,
    seed_option,
)
from nnunet_pde.derive.scanner_shift import (
    DEFAULT_LEVELS,
    LEVELS,
    MANIFEST,
    PARAMETERS_FILE,
    PERTURBATIONS,
    ShiftError,
    derive_shifted_images,
    level_folder,
    read_manifest,
)
from nnunet_pde.folders import DATASET_FOLDER
from nnunet_pde.folders import dataset_id as folder_dataset_id

# ------------------------------------------------------------------ command line

_EXAMPLE = """\
example:
  nnunet-pde derive shifted-images 501 --output shift501 --levels 1 3 5
  for d in shift501/*/level*; do
    nnUNetv2_predict -i "$d" -o "pred_shift/${d#shift501/}" -d 501 -c 3d_fullres -f 0 \\
        -tr nnUNetTrainerPDE3D
  done
  nnunet-pde derive shifted-images --list      # the perturbations and their levels
"""


def format_table() -> str:
    """The perturbations, whether nnU-Net's augmentation covers them, and the level settings."""
    lines = [
        "Scanner-shift perturbations (TorchIO); s = std of the body intensities of each image.",
        "Level 0 = the clean imagesTs (not written).",
        "",
    ]
    for spec in PERTURBATIONS.values():
        covered = (
            f"covered by nnU-Net augmentation ({spec.nnunet_augmentation})"
            if spec.covered_by_nnunet
            else "NOT covered by nnU-Net augmentation"
        )
        lines.append(f"{spec.name}  [{spec.torchio_transform}; {covered}]")
        lines.append(f"  {spec.description}")
        for level in LEVELS:
            lines.append(f"  level {level}: {spec.summary(level)}")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _cmd_shifted_images(args: argparse.Namespace) -> int:
    if args.list:
        print(format_table())
        return 0
    if args.source is None:
        raise ShiftError("give the SOURCE dataset (id, name or path)")
    if args.output is None:
        raise ShiftError("--output DIR is required")
    output = derive_shifted_images(
        args.source,
        args.output,
        perturbations=args.perturbations,
        levels=args.levels,
        seed=args.seed,
        raw_root=args.raw,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        workers=args.workers,
    )
    manifest = read_manifest(output)
    src = manifest["source"]
    names, level_list = list(manifest["perturbations"]), manifest["levels"]
    n_cases, n_channels = len(manifest["cases"]), len(manifest["channels"])
    n_images = n_cases * n_channels * len(names) * len(level_list)
    print(
        f"Wrote {n_images} images ({n_cases} test case(s) x {n_channels} channel(s) x "
        f"{len(names)} perturbation(s) x {len(level_list)} level(s)) to {output}:"
    )
    for name in names:
        levels_text = ", ".join(f"level{k}" for k in level_list)
        print(f"  {output / name}/{{{levels_text}}}/  (+ {PARAMETERS_FILE})")
    print(f"  {output / MANIFEST}  (manifest)")
    named = DATASET_FOLDER.match(src["dataset"])
    dataset_id = folder_dataset_id(src["dataset"]) if named else src["dataset"]
    first = level_folder(output, names[0], level_list[0])
    print(
        "\nNext: predict every level folder with each trained model (level 0 = the clean "
        f"images in {src['images']}), e.g.\n"
        f"  nnUNetv2_predict -i {first} -o PRED/{names[0]}/level{level_list[0]} "
        f"-d {dataset_id} -c 3d_fullres -f 0 -tr nnUNetTrainerPDE3D\n"
        f"then score against the unchanged test labels ({src['labels'] or 'labelsTs'}):\n"
        f"  nnunet-pde evaluate PRED/{names[0]}/level{level_list[0]} "
        f"{src['labels'] or 'LABELS_TS'} --dataset-json {src['dataset_json']}\n"
        "or compare trainers over all levels: nnunet-pde benchmark robustness scanner-shift "
        "--help"
    )
    return 0


def register_cli(derive_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``shifted-images`` to the sub-parsers of ``nnunet-pde derive``."""
    p = add_command(
        derive_subparsers,
        "shifted-images",
        _cmd_shifted_images,
        help="test images under scanner-shift perturbations (bias field, noise, ghosting, "
        "motion, spike, blur, gamma, anisotropy) at severity levels 1-5",
        description=textwrap.fill(
            "Write perturbed copies of a raw dataset's test images (imagesTs) for each "
            "perturbation and severity level, with the same file names, geometry and pixel "
            "type, plus parameters.json (the TorchIO transforms applied to every file) and "
            f"{MANIFEST}. Each OUTPUT/<perturbation>/level<k> folder is an nnUNetv2_predict "
            "input; score the predictions against the unchanged labelsTs. The dataset is only "
            "read. See docs/robustness.md.",
            width=88,
        ),
        epilog=_EXAMPLE,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        nargs="?",
        help="dataset id (501), name (Dataset501_SyntheticBraTS) or path of a raw dataset folder",
    )
    p.add_argument(
        "--output", "-o", metavar="DIR", type=Path, default=None, help="folder to write (required)"
    )
    p.add_argument(
        "--perturbations",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help=f"perturbations to apply: {', '.join(PERTURBATIONS)} or all (default all)",
    )
    p.add_argument(
        "--levels",
        nargs="+",
        type=int,
        default=list(DEFAULT_LEVELS),
        metavar="K",
        help="severity levels 1-5 (default 1 2 3)",
    )
    seed_option(p)
    raw_option(p)
    overwrite_option(p, "replace OUTPUT if it is a previous shifted-images folder")
    p.add_argument(
        "--list",
        action="store_true",
        help="print the perturbations, whether nnU-Net's augmentation covers them and their "
        "level settings, then exit",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes perturbing cases in parallel (default 1); the files do not depend on it",
    )
    no_progress_option(p)
    return p
