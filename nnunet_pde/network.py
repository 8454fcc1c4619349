"""Build PDE3D-UNet from nnU-Net plans: the planned backbone plus PDE blocks in its encoder.

This is glue between nnU-Net's plans and the pure PDE layer in :mod:`nnunet_pde.pde`.
The backbone is exactly the network nnU-Net planned (``PlainConvUNet`` for the default
plans, ``ResidualEncoderUNet`` for ``nnUNetResEncUNet{M,L,XL}Plans``), built by nnU-Net's
own :func:`get_network_from_plans`. A PDE block is then appended, under the child name
``pde``, to the ``nn.Sequential`` that a selected encoder stage runs (the stage itself for
PlainConvUNet, the stage's ``blocks`` for ResidualEncoderUNet), so

* every backbone parameter keeps the name it has in the stock network
  (``encoder.stages.4.0.convs.0.conv.weight`` ...) and the PDE parameters are new keys
  (``encoder.stages.<s>.pde.*``, ``encoder.stages.<s>.blocks.pde.*`` for ResEnc);
* the block's output is both the skip connection of that stage and the input of the next
  stage, i.e. the encoder is interleaved with PDE layers;
* a freshly built block is the identity (zero-initialised gate), so the network computes
  what the backbone computes until training moves the gate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks
from torch import nn

from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.pde import PDEBlock, PDEConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nnunetv2.utilities.plans_handling.plans_handler import (
        ConfigurationManager,
        PlansManager,
    )

#: Backbones a PDE block can be inserted into (fully qualified class names as in the plans).
SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
)

#: Name of the child module that holds the PDE block inside an encoder stage.
PDE_CHILD_NAME = "pde"


class UnsupportedPlansError(NnunetPdeError):
    """The plans ask for a network that PDE3D-UNet cannot be built on."""


def stage_spacings(
    spacing: Sequence[float], strides: Sequence[Sequence[int] | int]
) -> list[tuple[float, ...]]:
    """Physical voxel spacing of every encoder stage's output.

    Parameters
    ----------
    spacing:
        Target spacing of the configuration in mm, numpy axis order (z, y, x), as in
        ``configuration_manager.spacing``.
    strides:
        Per-stage strides from the plans' ``arch_kwargs["strides"]``, same axis order; an
        int means the same stride on every axis.

    Returns
    -------
    list of tuples
        ``spacing * prod(strides[0..s])`` for each stage ``s``, in mm, numpy axis order.
    """
    dim = len(spacing)
    current = np.asarray(spacing, dtype=np.float64)
    out: list[tuple[float, ...]] = []
    for stride in strides:
        stride_arr = np.full(dim, stride) if np.isscalar(stride) else np.asarray(stride)
        if stride_arr.shape != (dim,):
            raise UnsupportedPlansError(
                f"stride {stride!r} does not match the {dim}-D spacing {tuple(spacing)}"
            )
        current = current * stride_arr
        out.append(tuple(float(v) for v in current))
    return out


def check_supported(configuration_manager: ConfigurationManager) -> None:
    """Raise :class:`UnsupportedPlansError` with a helpful message if the configuration's
    network is not a 3-D PlainConvUNet / ResidualEncoderUNet."""
    arch = configuration_manager.network_arch_class_name
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedPlansError(
            f"PDE3D-UNet cannot be built on the architecture '{arch}'. Supported backbones: "
            + ", ".join(SUPPORTED_ARCHITECTURES)
            + " (nnU-Net's default plans and the nnUNetResEncUNet{M,L,XL}Plans presets)."
        )
    conv_op = str(configuration_manager.network_arch_init_kwargs.get("conv_op", ""))
    if len(configuration_manager.patch_size) != 3 or not conv_op.endswith("Conv3d"):
        raise UnsupportedPlansError(
            f"PDE3D-UNet needs a 3-D configuration (3d_fullres, 3d_lowres or "
            f"3d_cascade_fullres); this configuration has patch size "
            f"{tuple(configuration_manager.patch_size)} and conv_op '{conv_op}'. "
            "Train the 2d configuration with a stock nnU-Net trainer instead."
        )


def _stage_sequential(stage: nn.Module, index: int) -> nn.Sequential:
    """The ``nn.Sequential`` whose output is the stage's output, to append a block to."""
    if isinstance(stage, nn.Sequential):
        return stage
    # ResidualEncoder stages (without pooling) are StackedResidualBlocks, whose forward is
    # exactly ``self.blocks(x)``.
    if isinstance(stage, StackedResidualBlocks) and isinstance(stage.blocks, nn.Sequential):
        return stage.blocks
    raise UnsupportedPlansError(
        f"encoder stage {index} is a {type(stage).__name__}; a PDE block can only be appended "
        "to an nn.Sequential stage or a StackedResidualBlocks"
    )


def insert_pde_blocks(
    network: nn.Module, spacing: Sequence[float], strides: Sequence, config: PDEConfig
) -> dict[int, PDEBlock]:
    """Append a :class:`PDEBlock` to every configured encoder stage of ``network`` in place.

    Parameters
    ----------
    network:
        A dynamic-network-architectures U-Net with ``encoder.stages`` (``nn.Sequential``
        per resolution stage, the last one the bottleneck) and ``encoder.output_channels``.
    spacing:
        Target spacing of the configuration in mm, numpy axis order.
    strides:
        The plans' per-stage strides.
    config:
        Which stages get a block (``config.stages``) and how each block integrates.

    Returns
    -------
    dict
        Encoder stage index -> the inserted block.
    """
    stages = network.encoder.stages
    channels = network.encoder.output_channels
    spacings = stage_spacings(spacing, strides)
    inserted: dict[int, PDEBlock] = {}
    try:
        selected = config.resolve_stages(len(stages))
    except ValueError as exc:
        raise UnsupportedPlansError(
            f"{exc} (-1 is the bottleneck, -2 the stage feeding it)"
        ) from exc
    for s in selected:
        stage = _stage_sequential(stages[s], s)
        if PDE_CHILD_NAME in stage._modules:
            raise ValueError(f"encoder stage {s} already has a PDE block")
        block = PDEBlock(int(channels[s]), spacings[s], config)
        stage.add_module(PDE_CHILD_NAME, block)
        inserted[s] = block
    return inserted


def build_pde3d_network(
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
    config: PDEConfig | None = None,
    all_stages: bool = False,
) -> nn.Module:
    """Build the planned backbone and insert PDE blocks as ``config`` says.

    With ``config=None`` no block is inserted and the result is the stock network
    (the backbone-only ablation). ``all_stages=True`` puts a block after every encoder
    stage, bottleneck included, whatever ``config.stages`` says (the number of stages
    depends on the plans).

    Raises
    ------
    UnsupportedPlansError
        For a 2-D configuration or a backbone other than PlainConvUNet / ResidualEncoderUNet.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    check_supported(configuration_manager)
    network = get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=enable_deep_supervision,
    )
    if config is not None:
        if all_stages:
            config = dataclasses.replace(config, stages=tuple(range(len(network.encoder.stages))))
        insert_pde_blocks(
            network,
            configuration_manager.spacing,
            configuration_manager.network_arch_init_kwargs["strides"],
            config,
        )
    return network


def pde_blocks(network: nn.Module) -> dict[str, PDEBlock]:
    """All PDE blocks of a network by qualified module name (unwraps DDP / torch.compile)."""
    module = getattr(network, "module", network)
    module = getattr(module, "_orig_mod", module)
    return {name: m for name, m in module.named_modules() if isinstance(m, PDEBlock)}
