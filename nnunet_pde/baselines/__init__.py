"""The paper's baseline networks, sized from nnU-Net's plans: V-Net (MONAI), Swin Unet3D
and ES-UNet (own implementations), plus MONAI's SwinUNETR as an extra.

The trainers that use them are in ``trainers/nnUNetTrainerBaselines.py``; what each one
reimplements and how it differs from its paper is in docs/baselines.md. V-Net and SwinUNETR
need MONAI (``pip install 'nnunet-pde[baselines]'``); it is imported only when they are
built.
"""

from __future__ import annotations

from nnunet_pde.baselines.es_unet import ESUNet, build_es_unet
from nnunet_pde.baselines.plans import (
    StagePlan,
    UnsupportedConfigurationError,
    adapt_patch_size,
    plans_with_adapted_patch,
    stage_plan,
)
from nnunet_pde.baselines.swin_unet3d import SwinUNet3D, build_swin_unet3d
from nnunet_pde.baselines.swin_unetr import SWIN_UNETR_PATCH_DIVISOR, build_swin_unetr
from nnunet_pde.baselines.vnet import VNET_PATCH_DIVISOR, build_vnet

__all__ = [
    "ESUNet",
    "SWIN_UNETR_PATCH_DIVISOR",
    "StagePlan",
    "SwinUNet3D",
    "UnsupportedConfigurationError",
    "VNET_PATCH_DIVISOR",
    "adapt_patch_size",
    "build_es_unet",
    "build_swin_unet3d",
    "build_swin_unetr",
    "build_vnet",
    "plans_with_adapted_patch",
    "stage_plan",
]
