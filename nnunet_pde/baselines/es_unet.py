"""ES-UNet (Park et al. 2025): a 3-D U-Net with enhanced (full-scale) skip connections.

Reimplemented from the paper's description (BMC Medical Imaging 25, 2025, doi
10.1186/s12880-025-01857-0): the full-scale skip connections of UNet 3+ (Huang et al. 2020)
in 3-D, a channel-attention module on every encoder-to-decoder path, and deep supervision
of every decoder scale.

Layout, sized from the plans (``S`` stages, features ``f_s``, strides and kernel sizes as
planned; ``c`` = ``cat_channels``, ``max(features[0] // 2, 8)`` by default - UNet 3+ uses
``features[0]``, which costs about twice the activation memory at full resolution, where
``S * c`` channels are fused; the paper's widths are not reproduced, see docs/baselines.md):

* encoder: nnU-Net's ``PlainConvEncoder`` (2 conv-IN-LeakyReLU per stage, strided first
  convolution), exactly the plain plans' encoder;
* decoder node ``d`` (``d = S-2 .. 0``) receives ``S`` paths, each resampled to the scale of
  ``d``, convolved to ``c`` channels (conv-IN-LeakyReLU) and re-weighted by squeeze-and-
  excitation channel attention: encoder stages ``e < d`` max-pooled by the planned stride
  between ``e`` and ``d``; encoder stage ``d`` as is; decoder nodes ``d+1 .. S-2`` and the
  bottleneck convolved at their own scale, then up-sampled (trilinear). The ``S * c``
  concatenated channels are fused by one more conv-IN-LeakyReLU;
* one 1x1x1 segmentation head per decoder node. With deep supervision the outputs are
  returned in nnU-Net's order (full resolution first, then each coarser decoder scale,
  ``S - 1`` outputs, matching ``nnUNetTrainer._get_deep_supervision_scales``); without, the
  full-resolution output alone. The heads exist either way, so the state_dict does not
  depend on deep supervision.

Differences from the paper: the bottleneck is not supervised (nnU-Net has no target at that
scale); UNet 3+ up-samples every side output to full resolution before its loss, whereas
nnU-Net down-samples the target instead; normalisation is instance norm (nnU-Net's) rather
than batch norm; no classification-guided module; deeper sources are convolved before,
not after, their up-sampling (see :class:`_Path`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from torch import nn

from nnunet_pde.baselines.blocks import CONV_KWARGS, ChannelAttention, conv_stack, init_weights
from nnunet_pde.baselines.plans import StagePlan, stage_plan

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager


class _Path(nn.Module):
    """One encoder-to-decoder path to ``c`` channels with channel attention.

    Finer sources are max-pooled by ``pool`` (per-axis factor) and then convolved; coarser
    sources (``upsample``) are convolved at their own scale and then up-sampled
    (trilinear) to the target's size - UNet 3+ up-samples first, which runs the
    convolution on up to ``features[-1]`` channels at full resolution; convolving first is
    the same linear map family at a fraction of the cost and activation memory.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        pool: tuple[int, int, int] | None,
        upsample: bool,
        reduction: int,
    ) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(pool, pool) if pool is not None and max(pool) > 1 else None
        self.upsample = upsample
        self.conv = conv_stack(1, in_channels, out_channels, kernel_size)
        self.attention = ChannelAttention(out_channels, reduction)

    def forward(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        x = self.conv(x)
        if self.upsample and tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return self.attention(x)


class FullScaleDecoder(nn.Module):
    """UNet 3+ decoder with channel attention on every path; ``deep_supervision`` is the
    switch nnU-Net's ``set_deep_supervision_enabled`` flips."""

    def __init__(
        self,
        plan: StagePlan,
        num_classes: int,
        cat_channels: int,
        reduction: int,
        deep_supervision: bool,
    ) -> None:
        super().__init__()
        s_total = plan.n_stages
        up_channels = cat_channels * s_total
        self.deep_supervision = deep_supervision
        self.n_stages = s_total
        self.paths = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for d in range(s_total - 2, -1, -1):  # deepest decoder node first, as computed
            paths = nn.ModuleList()
            for src in range(s_total):
                if src < d:
                    in_ch, pool, up = plan.features[src], plan.relative_stride(src, d), False
                elif src == d:
                    in_ch, pool, up = plan.features[src], None, False
                elif src == s_total - 1:
                    in_ch, pool, up = plan.features[src], None, True
                else:
                    in_ch, pool, up = up_channels, None, True
                paths.append(_Path(in_ch, cat_channels, plan.kernel_sizes[d], pool, up, reduction))
            self.paths.append(paths)
            self.fuse.append(conv_stack(1, up_channels, up_channels, plan.kernel_sizes[d]))
        # seg_layers[i] is the head of decoder node i (0 = full resolution)
        for _ in range(s_total - 1):
            self.seg_layers.append(nn.Conv3d(up_channels, num_classes, 1))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        s_total = self.n_stages
        nodes: dict[int, torch.Tensor] = {s_total - 1: skips[-1]}
        for i, d in enumerate(range(s_total - 2, -1, -1)):
            size = tuple(skips[d].shape[2:])
            parts = []
            for src, path in enumerate(self.paths[i]):
                source = skips[src] if src <= d else nodes[src]
                parts.append(path(source, size))
            nodes[d] = self.fuse[i](torch.cat(parts, dim=1))
        if not self.deep_supervision:
            return self.seg_layers[0](nodes[0])
        return [self.seg_layers[d](nodes[d]) for d in range(s_total - 1)]


class ESUNet(nn.Module):
    """ES-UNet for (batch, channels, z, y, x) input; see the module docstring."""

    def __init__(
        self,
        plan: StagePlan,
        num_input_channels: int,
        num_classes: int,
        cat_channels: int | None = None,
        reduction: int = 4,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if plan.n_stages < 2:
            raise ValueError("ES-UNet needs at least 2 resolution stages")
        cat = int(cat_channels or max(plan.features[0] // 2, 8))
        self.encoder = PlainConvEncoder(
            num_input_channels,
            plan.n_stages,
            list(plan.features),
            CONV_KWARGS["conv_op"],
            [list(k) for k in plan.kernel_sizes],
            [list(s) for s in plan.strides],
            2,
            CONV_KWARGS["conv_bias"],
            CONV_KWARGS["norm_op"],
            CONV_KWARGS["norm_op_kwargs"],
            None,
            None,
            CONV_KWARGS["nonlin"],
            CONV_KWARGS["nonlin_kwargs"],
            return_skips=True,
        )
        self.decoder = FullScaleDecoder(plan, num_classes, cat, reduction, deep_supervision)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))


def build_es_unet(
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
    cat_channels: int | None = None,
) -> ESUNet:
    """ES-UNet sized from a 3-D configuration of nnU-Net's plans (default or ResEnc)."""
    plan = stage_plan(configuration_manager, "ES-UNet")
    return ESUNet(
        plan,
        num_input_channels,
        num_output_channels,
        cat_channels=cat_channels,
        deep_supervision=enable_deep_supervision,
    )
