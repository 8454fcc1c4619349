"""nnunet-pde: PDE-regularised 3D segmentation networks (PDE3D-UNet) as an nnU-Net v2 plugin.

The PDE layer (:mod:`nnunet_pde.pde`) imports only torch; the glue to nnU-Net lives in
:mod:`nnunet_pde.network`, :mod:`nnunet_pde.checkpoints` and the trainer classes.

The PDE layer's public API is available here too (``from nnunet_pde import PDEBlock,
PDEConfig, moments_to_kernel, kernel_to_moments``). It is imported on first access
(PEP 562), because ``nnunet_pde.env`` and ``nnunet-pde env`` must work with the standard
library alone (``tests/test_packaging.py`` runs them without site-packages) and
``import nnunet_pde`` must not pull in torch for commands that do not need it.
"""

from __future__ import annotations

from typing import Any

from nnunet_pde._version import __version__

#: Names re-exported from :mod:`nnunet_pde.pde` (its ``__all__``).
_PDE_API = (
    "OPERATORS",
    "SOLVERS",
    "PDEBlock",
    "PDEConfig",
    "derivative_indices",
    "derivative_kernel",
    "derivative_name",
    "describe_block",
    "kernel_to_moments",
    "moments_to_kernel",
)

__all__ = ["__version__", *_PDE_API]


def __getattr__(name: str) -> Any:
    if name in _PDE_API:
        from nnunet_pde import pde

        return getattr(pde, name)
    raise AttributeError(f"module 'nnunet_pde' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PDE_API])
