"""Every combination of empty and non-empty masks gives its documented values and status."""

from __future__ import annotations

import math

import numpy as np
import pytest
from metric_fixtures import cube

from nnunet_pde.metrics import (
    assd,
    compute_metrics,
    dice,
    hausdorff,
    hd95,
    nsd,
    precision,
    recall,
)

SP = (2.0, 1.0, 0.5)
FULL = cube((10, 10, 10), (2, 2, 2), 4)
EMPTY = np.zeros((10, 10, 10), dtype=bool)
NAN = math.nan
INF = math.inf

# pred, ref, status, dice, distance (hd95/hd/assd), nsd, precision, recall
CASES = {
    "empty_pred": (EMPTY, FULL, "empty_pred", 0.0, INF, 0.0, NAN, 0.0),
    "empty_ref": (FULL, EMPTY, "empty_ref", 0.0, INF, 0.0, 0.0, NAN),
    "both_empty": (EMPTY, EMPTY, "both_empty", NAN, NAN, NAN, NAN, NAN),
}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_metric_functions(name):
    pred, ref, _, d, dist, s, p, r = CASES[name]
    assert same(dice(pred, ref), d)
    for f in (hd95, hausdorff, assd):
        assert same(f(pred, ref, SP), dist), f.__name__
    assert same(nsd(pred, ref, SP, 1.0), s)
    assert same(precision(pred, ref), p)
    assert same(recall(pred, ref), r)


@pytest.mark.parametrize("name", sorted(CASES))
def test_compute_metrics_status_and_values(name):
    pred, ref, status, d, dist, s, p, r = CASES[name]
    m = compute_metrics(pred, ref, SP, 1.0)
    assert m.status == status
    assert same(m.dice, d)
    assert same(m.hd95_mm, dist) and same(m.hausdorff_mm, dist) and same(m.assd_mm, dist)
    assert same(m.nsd, s) and same(m.precision, p) and same(m.recall, r)
    assert m.pred_volume_mm3 == pred.sum() * 1.0 and m.ref_volume_mm3 == ref.sum() * 1.0


def test_disjoint_masks_are_ok_with_dice_zero_and_finite_distances():
    pred = cube((10, 10, 10), (0, 0, 0), 2)
    m = compute_metrics(pred, FULL, SP, 1.0)
    assert m.status == "ok" and m.dice == 0.0 and m.precision == 0.0 and m.recall == 0.0
    assert math.isfinite(m.hd95_mm) and m.hd95_mm > 0


def test_non_binary_input_counts_non_zero_as_foreground():
    labels = FULL.astype(np.uint8) * 3
    assert dice(labels, FULL) == 1.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="tolerance_mm"):
        nsd(FULL, FULL, SP, -1.0)
    with pytest.raises(ValueError, match="spacing"):
        hd95(FULL, FULL, (1.0, 1.0))
