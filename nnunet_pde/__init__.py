"""nnunet-pde: PDE-regularised 3D segmentation networks (PDE3D-UNet) as an nnU-Net v2 plugin.

The PDE layer (:mod:`nnunet_pde.pde`) imports only torch; the glue to nnU-Net lives in
:mod:`nnunet_pde.network`, :mod:`nnunet_pde.checkpoints` and the trainer classes.
"""

from __future__ import annotations

__version__ = "0.1.0"
