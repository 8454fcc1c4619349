"""Metric values on shapes whose answer is known exactly or within a voxel."""

from __future__ import annotations

import math

import numpy as np
import pytest
from metric_fixtures import ball, brute_force_directed, cube

from nnunet_pde.metrics import (
    assd,
    compute_metrics,
    dice,
    hausdorff,
    hd95,
    nsd,
    precision,
    recall,
    volume_mm3,
)

SPACING = (3.0, 0.5, 0.7)  # deliberately anisotropic, numpy axis order, mm


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_cube_shifted_along_one_axis_has_hausdorff_k_times_that_spacing(axis, k):
    shape, start, n = (20, 20, 20), [5, 5, 5], 8
    ref = cube(shape, start, n)
    shifted = list(start)
    shifted[axis] += k
    pred = cube(shape, shifted, n)

    expected = k * SPACING[axis]
    assert hausdorff(pred, ref, SPACING) == pytest.approx(expected, rel=1e-12)
    # The shift is the largest distance in both directions and the side faces that still
    # overlap are at distance 0, so HD95 lies in [0, HD].
    h95 = hd95(pred, ref, SPACING)
    assert 0.0 <= h95 <= expected + 1e-12
    # Dice of two equal cubes overlapping in n-k of n slices.
    assert dice(pred, ref) == pytest.approx((n - k) / n)
    assert precision(pred, ref) == pytest.approx((n - k) / n)
    assert recall(pred, ref) == pytest.approx((n - k) / n)


def test_cube_shift_against_brute_force_distances():
    ref = cube((16, 16, 16), (4, 4, 4), 6)
    pred = cube((16, 16, 16), (6, 4, 5), 6)
    d_pr, d_rp = brute_force_directed(pred, ref, SPACING)
    assert hausdorff(pred, ref, SPACING) == pytest.approx(max(d_pr.max(), d_rp.max()))
    assert hd95(pred, ref, SPACING) == pytest.approx(
        max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    )
    assert assd(pred, ref, SPACING) == pytest.approx(
        (d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)
    )
    tol = 1.2
    assert nsd(pred, ref, SPACING, tol) == pytest.approx(
        ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (d_pr.size + d_rp.size)
    )


def test_two_single_voxels_are_at_their_euclidean_distance_in_mm():
    p = np.zeros((6, 6, 6), dtype=bool)
    r = np.zeros_like(p)
    p[1, 1, 1] = True
    r[2, 3, 4] = True
    expected = math.sqrt((1 * 3.0) ** 2 + (2 * 0.5) ** 2 + (3 * 0.7) ** 2)
    for f in (hd95, hausdorff, assd):
        assert f(p, r, SPACING) == pytest.approx(expected, rel=1e-12)
    assert nsd(p, r, SPACING, expected - 1e-6) == 0.0
    assert nsd(p, r, SPACING, expected + 1e-6) == 1.0


def test_hd95_is_the_max_of_directed_percentiles_not_the_pooled_one():
    # A prediction with a small far-away island: its few voxels are a large share of the
    # prediction's surface but a small share of the pooled surfaces, so the two definitions
    # differ; ours must equal the directed one.
    spacing = (1.0, 1.0, 1.0)
    ref = cube((40, 24, 24), (2, 4, 4), 14)
    pred = ref.copy()
    pred[24:34, 6:16, 6:16] = True  # a 10^3 island past an 8-voxel gap
    d_pr, d_rp = brute_force_directed(pred, ref, spacing)
    directed = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    pooled = np.percentile(np.concatenate([d_pr, d_rp]), 95)
    assert directed != pytest.approx(pooled)
    assert hd95(pred, ref, spacing) == pytest.approx(directed)


def test_concentric_spheres_are_r2_minus_r1_apart_within_a_voxel():
    spacing = (1.5, 1.0, 1.25)
    shape = (22, 32, 26)
    r1, r2 = 7.0, 12.0
    inner, outer = ball(shape, spacing, r1), ball(shape, spacing, r2)
    tol = max(spacing)
    for f in (hd95, hausdorff, assd):
        assert abs(f(inner, outer, spacing) - (r2 - r1)) <= tol, f.__name__
    assert nsd(inner, outer, spacing, 0.5) < 0.05
    assert nsd(inner, outer, spacing, r2 - r1 + tol) == 1.0
    # Dice of nested balls ~ 2 r1^3 / (r1^3 + r2^3), up to discretisation.
    assert dice(inner, outer) == pytest.approx(2 * r1**3 / (r1**3 + r2**3), abs=0.03)
    assert precision(inner, outer) == 1.0
    # Volumes: voxel count times voxel volume, close to the analytic ball volume.
    assert volume_mm3(outer, spacing) == pytest.approx(4 / 3 * math.pi * r2**3, rel=0.03)


def test_identical_masks_are_perfect():
    spacing = (1.5, 1.0, 1.25)
    m = ball((20, 24, 22), spacing, 8.0)
    res = compute_metrics(m, m, spacing, tolerance_mm=0.0)
    assert res.status == "ok"
    assert (res.dice, res.nsd, res.precision, res.recall) == (1.0, 1.0, 1.0, 1.0)
    assert res.hd95_mm == res.hausdorff_mm == res.assd_mm == 0.0


def test_compute_metrics_equals_the_single_metric_functions():
    ref = cube((16, 16, 16), (4, 4, 4), 6)
    pred = cube((16, 16, 16), (5, 3, 4), 7)
    res = compute_metrics(pred, ref, SPACING, tolerance_mm=1.0)
    assert res.dice == dice(pred, ref)
    assert res.hd95_mm == hd95(pred, ref, SPACING)
    assert res.hausdorff_mm == hausdorff(pred, ref, SPACING)
    assert res.assd_mm == assd(pred, ref, SPACING)
    assert res.nsd == nsd(pred, ref, SPACING, 1.0)
    assert res.precision == precision(pred, ref)
    assert res.recall == recall(pred, ref)
    assert res.pred_volume_mm3 == pytest.approx(7**3 * 3.0 * 0.5 * 0.7)
    assert res.ref_volume_mm3 == volume_mm3(ref, SPACING)
    assert (res.pred_voxels, res.ref_voxels) == (343, 216)
    assert res.tp + res.fp == res.pred_voxels and res.tp + res.fn == res.ref_voxels


def test_two_dimensional_masks_work():
    spacing = (2.0, 0.5)
    ref = np.zeros((20, 20), dtype=bool)
    ref[5:10, 5:10] = True
    pred = np.roll(ref, 2, axis=1)
    assert hausdorff(pred, ref, spacing) == pytest.approx(1.0)
    assert volume_mm3(ref, spacing) == pytest.approx(25.0)


def test_cropping_does_not_change_values():
    # Masks in a corner of a large image and the same masks in a tight image.
    ref = cube((30, 30, 30), (1, 2, 3), 5)
    pred = cube((30, 30, 30), (2, 2, 1), 5)
    tight = (slice(0, 9), slice(0, 9), slice(0, 9))
    a = compute_metrics(pred, ref, SPACING, 1.0)
    b = compute_metrics(pred[tight], ref[tight], SPACING, 1.0)
    for f in ("hd95_mm", "hausdorff_mm", "assd_mm", "nsd", "dice"):
        assert getattr(a, f) == pytest.approx(getattr(b, f)), f
