"""The network-builder hook of the trainers: ``build_network_architecture`` written once.

nnU-Net builds a trainer's network through ``build_network_architecture(plans_manager,
configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)``.
It calls it on the trainer instance while training and **on the class** while predicting
(``nnUNetPredictor.initialize_from_trained_model_folder`` resolves the trainer by name and
calls ``trainer_class.build_network_architecture(..., enable_deep_supervision=False)``), so
the network may depend only on those arguments and class attributes.
:class:`NetworkBuilderMixin` writes that method once, as a classmethod with nnU-Net 2.8.1's
parameters, and hands the arguments as one :class:`NetworkSpec` to the hook
:meth:`NetworkBuilderMixin.build_network`, which each trainer family overrides.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn


@dataclass(frozen=True)
class NetworkSpec:
    """The plans-derived arguments nnU-Net passes to ``build_network_architecture``.

    Attributes
    ----------
    plans_manager, configuration_manager
        The plans and the configuration (``3d_fullres``) being trained or predicted.
    num_input_channels
        Image channels (modalities) of the dataset.
    num_output_channels
        Segmentation heads: classes including background, or regions.
    enable_deep_supervision
        Whether the network should return its deep-supervision outputs (nnU-Net passes
        False at inference; single-output networks ignore it).
    """

    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    num_input_channels: int
    num_output_channels: int
    enable_deep_supervision: bool

    @property
    def sizing(self) -> tuple[ConfigurationManager, int, int]:
        """``(configuration_manager, num_input_channels, num_output_channels)``: the first
        positional arguments of every network builder of nnunet-pde (the baselines' builders
        and, after ``plans_manager``, ``build_pde3d_network``)."""
        return self.configuration_manager, self.num_input_channels, self.num_output_channels


class NetworkBuilderMixin:
    """nnU-Net's ``build_network_architecture``, once, over the hook :meth:`build_network`.

    Put it before ``nnUNetTrainer`` in the bases (it replaces nnU-Net's staticmethod). A
    trainer family overrides :meth:`build_network` only, as a classmethod that reads the
    :class:`NetworkSpec` and class attributes (never the instance: ``nnUNetv2_predict`` has
    none).
    """

    # The parameters are nnU-Net 2.8.1's own: nnU-Net passes them by position and checks
    # for a ``plans_manager`` parameter (inspect.signature) before it calls. A classmethod
    # is called the same way on the class and on an instance, as nnU-Net does both.
    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        """The network of this trainer class for these plans (nnU-Net's hook)."""
        return cls.build_network(
            NetworkSpec(
                plans_manager,
                configuration_manager,
                num_input_channels,
                num_output_channels,
                enable_deep_supervision,
            )
        )

    @classmethod
    def build_network(cls, spec: NetworkSpec) -> nn.Module:
        """The network for ``spec``; override in each trainer family."""
        raise NotImplementedError(f"{cls.__name__} does not define build_network(spec)")
