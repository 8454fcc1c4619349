"""Small building blocks shared by the baseline networks (3-D only).

Convolutions follow nnU-Net's defaults for 3-D plans: convolution with bias, instance
normalisation with affine parameters, LeakyReLU(0.01). Tensors are (batch, channels, z, y,
x) unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn

#: Keyword arguments of dynamic-network-architectures blocks: nnU-Net's 3-D defaults.
CONV_KWARGS: dict = {
    "conv_op": nn.Conv3d,
    "conv_bias": True,
    "norm_op": nn.InstanceNorm3d,
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": nn.LeakyReLU,
    "nonlin_kwargs": {"inplace": True},
}


def conv_stack(
    num_convs: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int],
    stride: Sequence[int] | int = 1,
) -> StackedConvBlocks:
    """``num_convs`` x (conv -> instance norm -> LeakyReLU), the first one strided."""
    return StackedConvBlocks(
        num_convs,
        CONV_KWARGS["conv_op"],
        in_channels,
        out_channels,
        list(kernel_size),
        stride,
        CONV_KWARGS["conv_bias"],
        CONV_KWARGS["norm_op"],
        CONV_KWARGS["norm_op_kwargs"],
        CONV_KWARGS["dropout_op"],
        CONV_KWARGS["dropout_op_kwargs"],
        CONV_KWARGS["nonlin"],
        CONV_KWARGS["nonlin_kwargs"],
    )


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al. 2018).

    ``y = x * sigmoid(W2 relu(W1 mean_zyx(x)))`` with ``W1: C -> max(C // reduction, 4)``
    and ``W2`` back to ``C`` (1x1x1 convolutions with bias). The global mean is taken in
    float32 so that low-precision autocast does not lose it on large volumes.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.float().mean(dim=(2, 3, 4), keepdim=True).to(x.dtype)
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))
        return x * weights


def init_weights(module: nn.Module) -> None:
    """nnU-Net's initialisation: Kaiming-normal (a=0.01) convolutions, zero biases."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
