"""What the baseline networks read from nnU-Net's plans, and patch-size adaptation.

The baselines are sized from the configuration nnU-Net planned for the dataset: the number
of resolution stages, the features per stage and the per-stage strides (which already
encode anisotropy: nnU-Net does not down-sample an axis whose spacing is much coarser than
the others). They ignore the planned *architecture class* (PlainConvUNet or
ResidualEncoderUNet): a ResEnc plans file yields the same baseline as the default one.

Some baselines need a patch size divisible by a fixed number (V-Net: 16 per axis) that the
planner did not know about. :func:`adapt_patch_size` states the rule and
:func:`plans_with_adapted_patch` writes the adapted size into a copy of the plans, which the
trainer then holds and saves as the results folder's ``plans.json`` - so
``nnUNetv2_predict`` runs its sliding window with the same patch as training.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nnunet_pde.errors import NnunetPdeError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager


class UnsupportedConfigurationError(NnunetPdeError):
    """The plans' configuration cannot be used by a baseline (2-D, or input constraints)."""


@dataclass(frozen=True)
class StagePlan:
    """Stage layout of a 3-D configuration, as the baselines use it.

    All per-axis tuples are in numpy axis order (z, y, x), like nnU-Net's plans.

    Attributes
    ----------
    features:
        Output channels of every resolution stage (stage 0 = full resolution, last =
        bottleneck).
    strides:
        Down-sampling factor *into* every stage (``strides[0]`` is (1, 1, 1)).
    kernel_sizes:
        Planned convolution kernel sizes per stage (1 on axes nnU-Net keeps thin).
    patch_size:
        Patch size in voxels.
    spacing:
        Target spacing in mm.
    """

    features: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def n_stages(self) -> int:
        return len(self.features)

    def cumulative_strides(self) -> list[tuple[int, int, int]]:
        """Total down-sampling factor of every stage relative to the input."""
        cum = np.cumprod(np.asarray(self.strides, dtype=int), axis=0)
        return [tuple(int(v) for v in row) for row in cum]

    def relative_stride(self, src: int, dst: int) -> tuple[int, int, int]:
        """Per-axis factor between stage ``src`` and a *coarser or equal* stage ``dst``."""
        cum = self.cumulative_strides()
        return tuple(cum[dst][a] // cum[src][a] for a in range(3))


def _as_triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    t = tuple(int(v) for v in value)
    if len(t) != 3:
        raise UnsupportedConfigurationError(f"expected a 3-D value, got {value!r}")
    return t  # type: ignore[return-value]


def check_3d(configuration_manager: ConfigurationManager, network: str) -> None:
    """Raise :class:`UnsupportedConfigurationError` unless the configuration is 3-D."""
    conv_op = str(configuration_manager.network_arch_init_kwargs.get("conv_op", ""))
    if len(configuration_manager.patch_size) != 3 or not conv_op.endswith("Conv3d"):
        raise UnsupportedConfigurationError(
            f"{network} is a 3-D network; this configuration has patch size "
            f"{tuple(configuration_manager.patch_size)} and conv_op '{conv_op}'. Use a 3-D "
            "configuration (3d_fullres, 3d_lowres, 3d_cascade_fullres); for 2d use a stock "
            "nnU-Net trainer."
        )


def stage_plan(configuration_manager: ConfigurationManager, network: str) -> StagePlan:
    """Read the stage layout of a 3-D configuration (default or ResEnc plans)."""
    check_3d(configuration_manager, network)
    kw = configuration_manager.network_arch_init_kwargs
    n = int(kw["n_stages"])
    features = kw["features_per_stage"]
    features = [features] * n if isinstance(features, int) else list(features)
    strides = kw["strides"]
    strides = [strides] * n if isinstance(strides, int) else list(strides)
    kernels = kw["kernel_sizes"]
    kernels = [kernels] * n if isinstance(kernels, int) else list(kernels)
    return StagePlan(
        features=tuple(int(f) for f in features),
        strides=tuple(_as_triple(s) for s in strides),
        kernel_sizes=tuple(_as_triple(k) for k in kernels),
        patch_size=_as_triple(list(configuration_manager.patch_size)),
        spacing=tuple(float(s) for s in configuration_manager.spacing),  # type: ignore[arg-type]
    )


def adapt_patch_size(patch_size: Sequence[int], divisor: int | Sequence[int]) -> tuple[int, ...]:
    """The valid patch size nearest to ``patch_size`` for a network that needs every axis
    divisible by ``divisor``.

    Rule, per axis: round to the nearest multiple of the divisor; an exact tie (e.g. 40 for
    16: 32 or 48) goes *down*, so the adapted patch never needs more memory than the tie's
    upper neighbour and stays within what nnU-Net's planner budgeted in most cases; never
    below one multiple. An axis that is already divisible is unchanged.

    Parameters
    ----------
    patch_size:
        Patch size in voxels, numpy axis order.
    divisor:
        One number for every axis, or one per axis.

    Returns
    -------
    tuple of int
        The adapted patch size, same axis order.
    """
    divisors = [int(divisor)] * len(patch_size) if isinstance(divisor, int) else list(divisor)
    if len(divisors) != len(patch_size) or any(d < 1 for d in divisors):
        raise ValueError(f"divisor {divisor!r} does not fit patch size {tuple(patch_size)}")
    out = []
    for p, d in zip(patch_size, divisors, strict=True):
        lower = (int(p) // d) * d
        upper = lower + d
        best = lower if (p - lower) <= (upper - p) else upper
        out.append(max(best, d))
    return tuple(out)


def plans_with_adapted_patch(
    plans: dict, configuration: str, divisor: int | Sequence[int] | None
) -> dict:
    """A deep copy of ``plans`` whose ``configuration`` has the patch size adapted by
    :func:`adapt_patch_size` (``divisor=None``: an unchanged copy).

    The adapted size is written into ``plans["configurations"][configuration]["patch_size"]``
    even where the configuration inherits its patch size from another one, so the
    inheritance source is never changed. Keys other than the patch size are untouched
    (nnU-Net's ``continue_training`` included).
    """
    out = copy.deepcopy(plans)
    if divisor is None:
        return out
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    clean = {k: v for k, v in out.items() if k != "continue_training"}
    current = list(PlansManager(clean).get_configuration(configuration).patch_size)
    adapted = list(adapt_patch_size(current, divisor))
    if adapted != current:
        out["configurations"][configuration]["patch_size"] = adapted
    return out
