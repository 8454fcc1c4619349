"""What the subcommands of ``nnunet-pde`` share: how one is added, and the options of several.

:func:`add_command` adds a subcommand whose handler runs under
:func:`nnunet_pde.errors.cli_command`, the one place where an expected failure
(:class:`~nnunet_pde.errors.NnunetPdeError` or ``OSError``) becomes one ``error:`` line on
stderr and exit code 2. :func:`add_group` adds a subcommand that only holds subcommands
(``derive``). The ``*_option(s)`` functions declare an option that more than one
subcommand takes, once; the subcommand passes only what its help says differently.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nnunet_pde.errors import cli_command

__all__ = [
    "Register",
    "add_command",
    "add_group",
    "command_option",
    "device_option",
    "evaluation_options",
    "extra_args_option",
    "imputation_options",
    "imputation_policy",
    "no_progress_option",
    "overwrite_option",
    "positive_int",
    "raw_option",
    "seed_option",
    "tolerance_option",
    "trainer_grid_options",
]

Handler = Callable[[argparse.Namespace], int]
#: A subcommand module's ``register_cli``: adds its parser to a subparsers object.
Register = Callable[[Any], argparse.ArgumentParser]


def add_command(
    subparsers: Any,
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Add subcommand ``name``; ``args.func`` runs ``handler`` with the failures reported.

    ``args.func(args)`` returns the handler's exit code, or 2 after one ``error: ...`` line on
    stderr for bad input. With an ``epilog`` (the examples) the help keeps its line breaks.
    """
    extra: dict[str, Any] = {}
    if epilog is not None:
        extra = {"epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}
    p = subparsers.add_parser(name, help=help, description=description, **extra)
    p.set_defaults(func=cli_command(handler))
    return p


def add_group(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str,
    dest: str,
    metavar: str,
    children: Sequence[Register],
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` whose own subcommands (one required, stored in ``args.dest``,
    shown as ``metavar`` in the usage) are added by ``children``, in the order ``--help``
    lists them."""
    p = subparsers.add_parser(name, help=help, description=description)
    sub = p.add_subparsers(dest=dest, required=True, metavar=metavar)
    for register in children:
        register(sub)
    return p


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def overwrite_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--overwrite``: replace what an earlier run of this command wrote."""
    p.add_argument("--overwrite", action="store_true", help=help)


def no_progress_option(p: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    """``--no-progress``."""
    p.add_argument("--no-progress", action="store_true", help=help)


def seed_option(p: argparse.ArgumentParser, help: str = "random seed (default 0)") -> None:
    """``--seed`` (default 0)."""
    p.add_argument("--seed", type=int, default=0, help=help)


def raw_option(
    p: argparse.ArgumentParser, help: str = "nnUNet_raw folder (default: $nnUNet_raw)"
) -> None:
    """``--raw DIR``: the nnUNet_raw folder, default ``$nnUNet_raw``."""
    p.add_argument("--raw", type=Path, default=None, help=help)


def tolerance_option(p: argparse.ArgumentParser) -> None:
    """``--tolerance-mm``: the NSD tolerance."""
    p.add_argument(
        "--tolerance-mm", type=float, default=1.0, help="NSD tolerance in mm (default 1.0)"
    )


def imputation_options(p: argparse.ArgumentParser, where: str = "") -> None:
    """``--impute`` and ``--worst-value``; ``where`` says where the imputed values count."""
    from nnunet_pde.metrics.aggregate import IMPUTATION_POLICIES

    p.add_argument(
        "--impute",
        choices=IMPUTATION_POLICIES,
        default="volume_diagonal",
        help=f"what infinite distances (one mask empty) count as{where}: left out, "
        "--worst-value mm, or the image diagonal (default volume_diagonal)",
    )
    p.add_argument(
        "--worst-value",
        type=float,
        default=None,
        metavar="MM",
        help="the value in mm for --impute worst (BraTS uses 373.13)",
    )


def imputation_policy(args: argparse.Namespace, error: Callable[[str], Exception]) -> Any:
    """The :class:`~nnunet_pde.metrics.ImputationPolicy` of ``--impute`` / ``--worst-value``.

    Raises ``error(message)`` when the two do not go together.
    """
    from nnunet_pde.metrics.aggregate import ImputationPolicy

    if args.worst_value is not None and args.impute != "worst":
        raise error("--worst-value only applies to --impute worst")
    if args.impute == "worst" and args.worst_value is None:
        raise error("--impute worst needs --worst-value MM (e.g. 373.13 as in BraTS)")
    return ImputationPolicy(args.impute, args.worst_value)


def trainer_grid_options(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    """DATASET (optional), -c/--configuration, -p/--plans, --trainers and --folds."""
    if dataset:
        p.add_argument("dataset", help="dataset id (e.g. 501) or name (Dataset501_SyntheticBraTS)")
    p.add_argument(
        "-c",
        "--configuration",
        default="3d_fullres",
        help="nnU-Net configuration (default 3d_fullres)",
    )
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans (default nnUNetPlans)")
    p.add_argument(
        "--trainers",
        nargs="+",
        required=True,
        metavar="TRAINER",
        help="trainer class names, as for nnUNetv2_train -tr",
    )
    p.add_argument(
        "--folds",
        nargs="+",
        default=["0", "1", "2", "3", "4"],
        metavar="FOLD",
        help="folds (default 0 1 2 3 4)",
    )


def workers_option(p: argparse.ArgumentParser) -> None:
    """``-j/--workers`` (evaluation processes) and ``--no-progress``."""
    p.add_argument(
        "-j",
        "--workers",
        type=positive_int,
        default=None,
        help="evaluation processes (default: CPUs, at most 8)",
    )
    no_progress_option(p, "no progress bars")


def evaluation_options(
    p: argparse.ArgumentParser, output_default: str, metrics_default: tuple[str, ...]
) -> None:
    """Output, metric and imputation options of ``benchmark report`` and ``robustness``."""
    from nnunet_pde.metrics.info import METRIC_INFO

    others = " ".join(m for m in METRIC_INFO if m not in metrics_default)
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"output folder (default {output_default})",
    )
    overwrite_option(p, "replace existing report files")
    tolerance_option(p)
    imputation_options(p)
    p.add_argument(
        "--metrics",
        nargs="+",
        default=list(metrics_default),
        metavar="METRIC",
        help=f"metrics in the tables (default {' '.join(metrics_default)}; also {others})",
    )
    workers_option(p)


def device_option(p: argparse.ArgumentParser, tool: str) -> None:
    """``--device``: the ``-device`` of nnU-Net's ``tool``."""
    p.add_argument(
        "--device",
        default=None,
        help=f"{tool} -device (cuda, cpu, mps; default: nnU-Net's, cuda)",
    )


def extra_args_option(p: argparse.ArgumentParser, tool: str, example: str) -> None:
    """``--extra-args 'ARGS'``: more arguments of ``tool`` in one quoted string."""
    p.add_argument(
        "--extra-args",
        default="",
        metavar="'ARGS'",
        help=f"more {tool} arguments, one quoted string, e.g. {example}",
    )


def command_option(p: argparse.ArgumentParser, flag: str, tool: str, what: str) -> None:
    """``flag 'CMD'``: the command that runs ``tool`` (e.g. inside a container)."""
    p.add_argument(
        flag,
        default=tool,
        metavar="'CMD'",
        help=f"the {what} command, e.g. 'apptainer exec nnunet.sif {tool}' (default {tool})",
    )
