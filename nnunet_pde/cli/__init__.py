"""The ``nnunet-pde`` command.

Subcommands (each has ``--help``)::

    nnunet-pde env              print the export lines nnU-Net needs to find our trainers
    nnunet-pde doctor           check the environment and say what to fix
    nnunet-pde list-trainers    list every trainer with its one-line description
    nnunet-pde make-dataset     write a synthetic BraTS-like or LiTS-like raw dataset
    nnunet-pde warmstart        turn a stock nnUNetTrainer checkpoint into a PDE3D one
    nnunet-pde evaluate         boundary-aware metrics of a prediction folder (Dice, HD95, NSD...)
    nnunet-pde inspect          what the PDE blocks of a trained checkpoint learned
    nnunet-pde benchmark        run / report a cross-validation grid of trainers (local or SLURM),
                                and the robustness comparisons (few labels, noisy labels, shift)
    nnunet-pde derive           derive robustness data: noisy-labels, shifted-images
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from nnunet_pde.cli.options import add_command, overwrite_option, raw_option, seed_option


def _cmd_env(args: argparse.Namespace) -> int:
    from nnunet_pde.env import export_lines

    print("\n".join(export_lines(data_root=args.root)))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nnunet_pde.env import diagnose

    checks = diagnose()
    tags = {"ok": "[ OK ]", "warn": "[WARN]", "fail": "[FAIL]"}
    for c in checks:
        line = f"{tags[c.status]} {c.what}"
        if c.fix and c.status != "ok":
            line += f"\n       fix: {c.fix}"
        print(line)
    n_fail = sum(c.status == "fail" for c in checks)
    n_warn = sum(c.status == "warn" for c in checks)
    print(f"\n{n_fail} problem(s), {n_warn} warning(s)")
    return 1 if n_fail else 0


def _cmd_list_trainers(args: argparse.Namespace) -> int:
    from nnunet_pde.env import list_trainers

    trainers = list_trainers()
    width = max(len(n) for n in trainers)
    for name, cls in trainers.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<{width}}  {doc[0] if doc else ''}")
    return 0


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


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())} (see: {self.prog} --help)\n")


def _register_env(sub: Any) -> None:
    p = add_command(
        sub,
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


def _register_doctor(sub: Any) -> None:
    add_command(
        sub,
        "doctor",
        _cmd_doctor,
        help="check the environment and say what is missing",
        description="Check Python, nnunetv2, torch, nnUNet_extTrainer and the nnU-Net data "
        "folders, and resolve every trainer with nnU-Net's own finder. Exit code 1 on problems.",
    )


def _register_list_trainers(sub: Any) -> None:
    add_command(
        sub,
        "list-trainers",
        _cmd_list_trainers,
        help="list the nnunet-pde trainers",
        description="List every trainer class nnunet-pde provides, with its description.",
    )


def _register_make_dataset(sub: Any) -> None:
    p = add_command(
        sub,
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


def _register_warmstart(sub: Any) -> None:
    p = add_command(
        sub,
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


def _register_derive(sub: Any) -> None:
    from nnunet_pde.cli.noisy_labels import register_cli as register_noisy_labels
    from nnunet_pde.cli.shifted_images import register_cli as register_shifted_images

    p = sub.add_parser(
        "derive",
        help="derive robustness data from a dataset: noisy-labels, shifted-images",
        description="Derive the data of the robustness regimes from an existing nnU-Net raw "
        "dataset without touching it: `noisy-labels` writes a new dataset with corrupted "
        "training labels (clean ones kept in labelsTr_clean), `shifted-images` writes its test "
        "images under scanner-shift perturbations at graded severities. See docs/robustness.md.",
    )
    derive = p.add_subparsers(dest="derive_command", required=True, metavar="KIND")
    register_noisy_labels(derive)
    register_shifted_images(derive)


def _register_evaluate(sub: Any) -> None:
    from nnunet_pde.cli.evaluate import register_cli

    register_cli(sub)


def _register_benchmark(sub: Any) -> None:
    from nnunet_pde.cli.benchmark import register_cli

    register_cli(sub)


def _register_inspect(sub: Any) -> None:
    from nnunet_pde.cli.inspect import register_cli

    register_cli(sub)


#: The subcommands, in the order ``--help`` lists them: each adds its parser (and nested
#: subcommands) to the subparsers object of ``nnunet-pde``.
SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _register_env,
    _register_doctor,
    _register_list_trainers,
    _register_make_dataset,
    _register_warmstart,
    _register_derive,
    _register_evaluate,
    _register_benchmark,
    _register_inspect,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``nnunet-pde``: every entry of :data:`SUBCOMMANDS` under it."""
    parser = _Parser(
        prog="nnunet-pde",
        description="PDE3D-UNet for nnU-Net v2: set-up, synthetic data and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; expected failures end as one ``error:`` line and exit code 2.

    Every handler is added by :func:`~nnunet_pde.cli.options.add_command`, which runs it
    under :func:`nnunet_pde.errors.cli_command`: the one place where an
    :class:`~nnunet_pde.errors.NnunetPdeError` or ``OSError`` becomes that line. Ctrl-C and
    SIGTERM stop the command after its clean-up (temporary files are removed) with exit
    code 130 / 143 and one line on stderr.
    """
    from nnunet_pde.errors import Interrupted, interrupt_signals

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with interrupt_signals():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(
            f"error: interrupted by {signal.Signals(signum).name}; temporary files were "
            "removed and no partial output was left",
            file=sys.stderr,
            flush=True,
        )
        return 128 + int(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
