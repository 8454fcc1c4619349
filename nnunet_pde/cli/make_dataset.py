"""``nnunet-pde make-dataset``: the command line of :mod:`nnunet_pde.data.synthetic`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nnunet_pde.cli.options import add_command, overwrite_option, raw_option, seed_option

__all__ = ["register_cli"]


def _parse_size(text: str) -> int | tuple[int, int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size must be N or Z,Y,X (voxels), e.g. 64 or 32,64,64; got '{text}'"
        ) from None
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return (values[0], values[1], values[2])
    raise argparse.ArgumentTypeError(f"--size must have 1 or 3 entries, got '{text}'")


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from nnunet_pde.data.synthetic import (
        MIN_CV_CASES,
        check_size_fits_memory,
        make_synthetic_dataset,
    )
    from nnunet_pde.errors import NnunetPdeError

    raw_root = args.raw or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise NnunetPdeError(
            'no output folder: pass --raw DIR or set nnUNet_raw (eval "$(nnunet-pde env)")',
            "--raw",
        )
    raw_flag = "--raw" if args.raw else "nnUNet_raw"
    kwargs = {}
    if args.size is not None:
        kwargs["size"] = args.size
    if args.noise is not None:
        kwargs["noise"] = args.noise
    check_size_fits_memory(args.kind, kwargs.get("size"))
    if isinstance(args.num_train, int) and 1 <= args.num_train < MIN_CV_CASES:
        print(
            f"warning: --num-train {args.num_train}: nnU-Net's 5-fold cross-validation "
            f"(folds 0-4) needs at least {MIN_CV_CASES} training cases; with fewer, "
            "nnUNetv2_train fails unless you write your own splits_final.json",
            file=sys.stderr,
            flush=True,
        )
    try:
        folder = make_synthetic_dataset(
            args.kind,
            raw_root,
            args.id,
            name=args.name,
            num_train=args.num_train,
            num_test=args.num_test,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=lambda msg: print(msg, flush=True),
            **kwargs,
        )
    except (NnunetPdeError, FileExistsError):
        raise  # FileExistsError: the dataset or its id exists (the message says what to do)
    except OSError as exc:
        raise NnunetPdeError(
            f"cannot write the dataset into {raw_root}: {exc.strerror or exc}; choose a "
            "writable folder",
            raw_flag,
        ) from None
    print(
        f"wrote {args.kind} dataset {folder} ({args.num_train} training, {args.num_test} test "
        f"cases). Next: nnUNetv2_plan_and_preprocess -d {args.id} -c 3d_fullres "
        "--verify_dataset_integrity"
    )
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``make-dataset`` subcommand to the subparsers object of ``nnunet-pde``."""
    p = add_command(
        subparsers,
        "make-dataset",
        _cmd_make_dataset,
        help="write a synthetic BraTS-like or LiTS-like dataset in nnU-Net raw format",
        description="Write a synthetic dataset (imagesTr, labelsTr, imagesTs, labelsTs, "
        "dataset.json) into nnUNet_raw. Deterministic from --seed. Example: "
        "nnunet-pde make-dataset brats-like --id 501 --num-train 8 --num-test 2",
    )
    p.add_argument("kind", choices=["brats-like", "lits-like"])
    p.add_argument("--id", type=int, required=True, help="dataset id (1-999)")
    p.add_argument(
        "--name", default=None, help="dataset name (default: SyntheticBraTS / SyntheticLiTS)"
    )
    p.add_argument("--num-train", type=int, default=8, help="training cases (default 8)")
    p.add_argument("--num-test", type=int, default=2, help="test cases (default 2)")
    p.add_argument(
        "--size", type=_parse_size, default=None, help="image size in voxels: N or Z,Y,X"
    )
    p.add_argument("--noise", type=float, default=None, help="noise level (see docs/datasets.md)")
    seed_option(p)
    raw_option(p)
    overwrite_option(p, "replace an existing dataset folder")
    return p
