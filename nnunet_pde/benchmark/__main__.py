"""``python -m nnunet_pde.benchmark run|report ...``: the same as ``nnunet-pde benchmark``."""

import sys

from nnunet_pde.cli import main

sys.exit(main(["benchmark", *sys.argv[1:]]))
