"""``python -m nnunet_pde.cli ...``: the same as ``nnunet-pde ...``."""

import sys

from nnunet_pde.cli import main

sys.exit(main())
