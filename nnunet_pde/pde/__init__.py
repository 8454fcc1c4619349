"""The PDE layer of PDE3D-UNet: learnable ``du/dt = D_phi[u] + N_psi(u)`` blocks.

Pure torch/numpy (no nnU-Net import). The numerical contract is
``docs/pde_layer.md``; the public API is re-exported here.
"""

from __future__ import annotations

from .block import PDEBlock
from .config import OPERATORS, SOLVERS, PDEConfig
from .describe import describe_block
from .moments import (
    derivative_indices,
    derivative_kernel,
    derivative_name,
    kernel_to_moments,
    moments_to_kernel,
)

__all__ = [
    "OPERATORS",
    "SOLVERS",
    "PDEBlock",
    "PDEConfig",
    "derivative_indices",
    "describe_block",
    "derivative_kernel",
    "derivative_name",
    "kernel_to_moments",
    "moments_to_kernel",
]
