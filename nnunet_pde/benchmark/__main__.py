"""``python -m nnunet_pde.benchmark run|report ...``: the same as ``nnunet-pde benchmark``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nnunet_pde.cli.benchmark import register_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-pde")
    sub = parser.add_subparsers(dest="command", required=True)
    register_cli(sub)
    args = parser.parse_args(["benchmark", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
