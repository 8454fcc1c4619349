"""Synthetic datasets in nnU-Net v2 raw format (see ``docs/datasets.md``)."""

from __future__ import annotations

from nnunet_pde.data.synthetic import DATASET_KINDS, KINDS, make_synthetic_dataset

__all__ = ["DATASET_KINDS", "KINDS", "make_synthetic_dataset"]
