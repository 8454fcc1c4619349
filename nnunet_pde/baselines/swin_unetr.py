"""MONAI's SwinUNETR (Hatamizadeh et al. 2022) as a further, clearly separate baseline.

Not Swin Unet3D: SwinUNETR has a pure Swin-transformer encoder (patch size 2, window 7,
depths 2-2-2-2) and a convolutional decoder. Used exactly as MONAI ships it with the BraTS
paper's ``feature_size=48``; it ignores the plans' stages and features. Constraints: every
patch axis divisible by 32 (five halvings), one full-resolution output (no deep
supervision).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from nnunet_pde.baselines.plans import UnsupportedConfigurationError, check_3d

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

#: Every patch axis must be a multiple of this (patch embedding 2 and four merges).
SWIN_UNETR_PATCH_DIVISOR = 32


def build_swin_unetr(
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    feature_size: int = 48,
) -> nn.Module:
    """MONAI's SwinUNETR for a 3-D nnU-Net configuration (no deep supervision).

    Raises
    ------
    UnsupportedConfigurationError
        2-D configuration or a patch axis not divisible by 32.
    """
    from monai.networks.nets import SwinUNETR

    check_3d(configuration_manager, "SwinUNETR")
    patch = tuple(int(p) for p in configuration_manager.patch_size)
    if any(p % SWIN_UNETR_PATCH_DIVISOR for p in patch):
        raise UnsupportedConfigurationError(
            f"SwinUNETR needs every patch axis divisible by {SWIN_UNETR_PATCH_DIVISOR}, got "
            f"{patch}; nnUNetTrainerSwinUNETR adapts the plans' patch size before building"
        )
    return SwinUNETR(
        in_channels=num_input_channels,
        out_channels=num_output_channels,
        feature_size=feature_size,
        spatial_dims=3,
    )
