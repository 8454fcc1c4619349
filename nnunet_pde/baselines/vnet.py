"""V-Net (Milletari, Navab & Ahmadi 2016) on MONAI's implementation.

MONAI's :class:`monai.networks.nets.VNet` is used as is, with PReLU (the paper's
non-linearity) instead of MONAI's default ELU and dropout configurable. Its topology is the
paper's and does not follow the plans: an input stage at 16 channels, four down-sampling
stages (2^3 convolutions, stride 2) doubling to 256 channels, four up-sampling stages
(2^3 transposed convolutions), residual stacks of 5^3 convolutions. Consequences for
nnU-Net:

* every patch axis must be divisible by 16 (four isotropic halvings): the trainer adapts
  the planned patch size (:data:`VNET_PATCH_DIVISOR`);
* the number of input channels must divide 16 (MONAI repeats the input 16/C times for the
  input stage's residual connection): 1, 2, 4, 8 or 16 channels;
* a single output at full resolution, i.e. no deep supervision;
* MONAI adds batch normalisation after every convolution (not in the paper).

Differences from the paper are listed in docs/baselines.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from nnunet_pde.baselines.plans import UnsupportedConfigurationError, check_3d

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

#: Every patch axis must be a multiple of this (four stride-2 down-samplings).
VNET_PATCH_DIVISOR = 16
#: Channels of V-Net's first stage; the number of input channels must divide it.
VNET_BASE_CHANNELS = 16


def build_vnet(
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI's V-Net for a 3-D nnU-Net configuration.

    Parameters
    ----------
    configuration_manager:
        The configuration (only its dimensionality and patch size are checked).
    num_input_channels, num_output_channels:
        Image channels and segmentation heads (nnU-Net's label manager decides the latter).
    dropout:
        Channel dropout probability of all of MONAI's dropout layers: after the
        down-convolution of the two deepest encoder stages, before the two deepest
        up-sampling stages and on the skip input of all four up-sampling stages. MONAI fixes
        the skip dropout of the two shallowest up-sampling stages at 0.5 whatever its
        arguments say; it is set to ``dropout`` here after construction. The paper uses
        none (0.0, the default).

    Raises
    ------
    UnsupportedConfigurationError
        2-D configuration, a patch axis not divisible by 16, or an input channel count that
        does not divide 16.
    """
    from monai.networks.nets import VNet

    check_3d(configuration_manager, "V-Net")
    patch = tuple(int(p) for p in configuration_manager.patch_size)
    if any(p % VNET_PATCH_DIVISOR for p in patch):
        raise UnsupportedConfigurationError(
            f"V-Net needs every patch axis divisible by {VNET_PATCH_DIVISOR}, got {patch}; "
            "nnUNetTrainerVNet adapts the plans' patch size before building (use it, or "
            "nnunet_pde.baselines.plans_with_adapted_patch)"
        )
    if VNET_BASE_CHANNELS % num_input_channels:
        raise UnsupportedConfigurationError(
            f"V-Net (MONAI) needs the number of input channels to divide "
            f"{VNET_BASE_CHANNELS}; this dataset has {num_input_channels}"
        )
    net = VNet(
        spatial_dims=3,
        in_channels=num_input_channels,
        out_channels=num_output_channels,
        act="prelu",
        dropout_prob_down=dropout,
        dropout_prob_up=(dropout, dropout),
        dropout_dim=3,
    )
    for module in net.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = float(dropout)
    return net
