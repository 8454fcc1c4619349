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

Each subcommand is a module of this package with a ``register_cli(subparsers)``
(``env.py``, ``doctor.py``, ``list_trainers.py``, ``make_dataset.py``, ``warmstart.py``,
``derive.py`` with ``noisy_labels.py`` and ``shifted_images.py``, ``evaluate.py``,
``benchmark.py``, ``inspect.py``); what several share is in ``options.py``. This module
assembles the parser (:data:`SUBCOMMANDS`) and runs the command (:func:`main`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from nnunet_pde.cli import (
    benchmark,
    derive,
    doctor,
    env,
    evaluate,
    list_trainers,
    make_dataset,
    warmstart,
)
from nnunet_pde.cli import inspect as inspect_command
from nnunet_pde.cli.options import Register


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())} (see: {self.prog} --help)\n")


#: The subcommands, in the order ``--help`` lists them: each adds its parser (and nested
#: subcommands) to the subparsers object of ``nnunet-pde``.
SUBCOMMANDS: tuple[Register, ...] = (
    env.register_cli,
    doctor.register_cli,
    list_trainers.register_cli,
    make_dataset.register_cli,
    warmstart.register_cli,
    derive.register_cli,
    evaluate.register_cli,
    benchmark.register_cli,
    inspect_command.register_cli,
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
