"""The paper's baselines as nnU-Net trainers: V-Net, Swin Unet3D, ES-UNet (and MONAI's
SwinUNETR as an extra).

nnU-Net's 3D U-Net baseline is nnU-Net's own ``nnUNetTrainer`` (stock SGD/poly) and
``nnUNetTrainerPDE3D_Backbone`` (the same network with the PDE3D optimiser). The trainers
here change only the network (and, for V-Net and SwinUNETR, the patch size the network
needs); data loading, augmentation, loss, validation and inference are nnU-Net's. By
default they train with the optimiser and schedule of ``nnUNetTrainerPDE3D_Backbone``
(AdamW, warm-up + cosine, no regulariser), so that the comparison differs only in the
network; ``_PaperOptim`` variants use a paper's own optimiser where it differs.

Every class is listed in the "Baselines" table of docs/trainers.md; the networks, their
sources and their differences from the papers are in docs/baselines.md.
Each network is built by the hook ``build_network`` of
:class:`~nnunet_pde.training.network_hook.NetworkBuilderMixin`, which reads only the plans
and class attributes, because ``nnUNetv2_predict`` builds the network on the class.
"""

from __future__ import annotations

from typing import ClassVar

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_pde.baselines.es_unet import build_es_unet
from nnunet_pde.baselines.integration import (
    NoDeepSupervisionMixin,
    PatchAdaptationMixin,
    StepDecaySGDMixin,
)
from nnunet_pde.baselines.swin_unet3d import build_swin_unet3d
from nnunet_pde.baselines.swin_unetr import SWIN_UNETR_PATCH_DIVISOR, build_swin_unetr
from nnunet_pde.baselines.vnet import VNET_PATCH_DIVISOR, build_vnet
from nnunet_pde.training.length import SmokeLengthMixin, TrainingLengthMixin
from nnunet_pde.training.network_hook import NetworkBuilderMixin, NetworkSpec
from nnunet_pde.training.optimizers import AdamWCosineMixin

# --------------------------------------------------------------------------------- V-Net


class nnUNetTrainerVNet(
    NetworkBuilderMixin,
    PatchAdaptationMixin,
    NoDeepSupervisionMixin,
    AdamWCosineMixin,
    TrainingLengthMixin,
    nnUNetTrainer,
):
    """V-Net (Milletari et al. 2016) via MONAI: PReLU, no dropout, no deep supervision;
    patch axes adapted to multiples of 16; AdamW + warm-up/cosine."""

    patch_divisor = VNET_PATCH_DIVISOR
    #: channel-dropout probability of every MONAI dropout layer (the paper: none)
    vnet_dropout: ClassVar[float] = 0.0

    @classmethod
    def build_network(cls, spec: NetworkSpec) -> nn.Module:
        # single-output network: enable_deep_supervision is ignored
        return build_vnet(*spec.sizing, cls.vnet_dropout)


class nnUNetTrainerVNet_PaperOptim(StepDecaySGDMixin, nnUNetTrainerVNet):
    """V-Net with the paper's optimiser: SGD (lr 1e-4, momentum 0.99), lr / 10 every 100
    epochs (25,000 iterations)."""


class nnUNetTrainerVNet_2epochs_4iters(SmokeLengthMixin, nnUNetTrainerVNet):
    """Smoke test of V-Net (2 epochs x 4 iterations)."""


# --------------------------------------------------------------------------- Swin Unet3D


class nnUNetTrainerSwinUNet3D(
    NetworkBuilderMixin, AdamWCosineMixin, TrainingLengthMixin, nnUNetTrainer
):
    """Swin Unet3D (Cai et al. 2023), own implementation sized from the plans; deep
    supervision as nnU-Net's; AdamW + warm-up/cosine."""

    #: attention window in voxels per axis (capped per stage by the planned feature size)
    swin_window: ClassVar[int] = 4

    @classmethod
    def build_network(cls, spec: NetworkSpec) -> nn.Module:
        return build_swin_unet3d(*spec.sizing, spec.enable_deep_supervision, window=cls.swin_window)


class nnUNetTrainerSwinUNet3D_2epochs_4iters(SmokeLengthMixin, nnUNetTrainerSwinUNet3D):
    """Smoke test of Swin Unet3D (2 epochs x 4 iterations)."""


# ------------------------------------------------------------------------------- ES-UNet


class nnUNetTrainerESUNet(
    NetworkBuilderMixin, AdamWCosineMixin, TrainingLengthMixin, nnUNetTrainer
):
    """ES-UNet (Park et al. 2025), own implementation sized from the plans: full-scale skip
    connections with channel attention, deep supervision of every decoder scale; AdamW +
    warm-up/cosine."""

    #: channels of every full-scale path (None: max(features[0] // 2, 8))
    es_cat_channels: ClassVar[int | None] = None

    @classmethod
    def build_network(cls, spec: NetworkSpec) -> nn.Module:
        return build_es_unet(
            *spec.sizing, spec.enable_deep_supervision, cat_channels=cls.es_cat_channels
        )


class nnUNetTrainerESUNet_2epochs_4iters(SmokeLengthMixin, nnUNetTrainerESUNet):
    """Smoke test of ES-UNet (2 epochs x 4 iterations)."""


# -------------------------------------------------------------------- SwinUNETR (extra)


class nnUNetTrainerSwinUNETR(
    NetworkBuilderMixin,
    PatchAdaptationMixin,
    NoDeepSupervisionMixin,
    AdamWCosineMixin,
    TrainingLengthMixin,
    nnUNetTrainer,
):
    """MONAI's SwinUNETR (Hatamizadeh et al. 2022, feature size 48) - an extra baseline,
    not Swin Unet3D; patch axes adapted to multiples of 32; no deep supervision."""

    patch_divisor = SWIN_UNETR_PATCH_DIVISOR

    @classmethod
    def build_network(cls, spec: NetworkSpec) -> nn.Module:
        # single-output network: enable_deep_supervision is ignored
        return build_swin_unetr(*spec.sizing)


class nnUNetTrainerSwinUNETR_2epochs_4iters(SmokeLengthMixin, nnUNetTrainerSwinUNETR):
    """Smoke test of SwinUNETR (2 epochs x 4 iterations)."""
