"""Agreement with MONAI (an independent, widely used implementation) on random blobs.

MONAI (``pip install monai``) is a test-only dependency; the tests skip without it. MONAI's
non-sub-voxel mode uses the same definitions: surface = mask XOR its 6-connected erosion,
exact Euclidean distances in mm, HD95 = max of the directed 95th percentiles (linear
interpolation), ASSD pooled over both surfaces, NSD counting surface voxels.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from metric_fixtures import ball, blob

from nnunet_pde.metrics import compute_metrics

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

SPACINGS = [(2.5, 0.8, 1.1), (1.0, 1.0, 1.0), (0.7, 1.9, 0.45)]
TOLERANCE_MM = 1.3


def monai_values(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> dict[str, float]:
    p = torch.from_numpy(pred)[None, None].float()
    r = torch.from_numpy(ref)[None, None].float()
    kw = {"include_background": True, "spacing": list(spacing)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks and deprecations
        return {
            "hd95_mm": monai_metrics.compute_hausdorff_distance(p, r, percentile=95, **kw).item(),
            "hausdorff_mm": monai_metrics.compute_hausdorff_distance(p, r, **kw).item(),
            "assd_mm": monai_metrics.compute_average_surface_distance(
                p, r, symmetric=True, **kw
            ).item(),
            "nsd": monai_metrics.compute_surface_dice(p, r, [tol], **kw).item(),
            "dice": monai_metrics.compute_dice(p, r, include_background=True).item(),
        }


def assert_agree(ours, theirs):
    for key, expected in theirs.items():
        got = getattr(ours, key)
        if math.isnan(expected) or math.isinf(expected):
            assert got == expected or (math.isnan(got) and math.isnan(expected)), key
        else:
            # MONAI computes in float32.
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-5), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_random_blobs(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (32, 36, 40)
    pred, ref = blob(shape, rng), blob(shape, rng, fraction=0.15)
    assert_agree(
        compute_metrics(pred, ref, spacing, TOLERANCE_MM),
        monai_values(pred, ref, spacing, TOLERANCE_MM),
    )


def test_perturbed_sphere_against_its_sphere():
    # A close pair (the realistic case: a good prediction) with an anisotropic grid.
    spacing = (2.0, 0.9, 1.2)
    rng = np.random.default_rng(5)
    ref = ball((24, 40, 32), spacing, 11.0)
    pred = ball((24, 40, 32), spacing, 10.0) | (blob((24, 40, 32), rng, 0.05) & ref)
    assert_agree(
        compute_metrics(pred, ref, spacing, TOLERANCE_MM),
        monai_values(pred, ref, spacing, TOLERANCE_MM),
    )


@pytest.mark.parametrize("which", ["empty_pred", "empty_ref"])
def test_one_empty_mask_agrees(which):
    spacing = (2.0, 0.9, 1.2)
    m = ball((16, 24, 20), spacing, 6.0)
    e = np.zeros_like(m)
    pred, ref = (e, m) if which == "empty_pred" else (m, e)
    ours = compute_metrics(pred, ref, spacing, TOLERANCE_MM)
    theirs = monai_values(pred, ref, spacing, TOLERANCE_MM)
    assert ours.status == which
    assert_agree(ours, {k: theirs[k] for k in ("hausdorff_mm", "assd_mm", "nsd")})
    # MONAI's HD95 is nan here: torch.quantile over all-inf distances interpolates inf - inf.
    # The documented value (issue #5, docs/evaluation.md) is inf, like its maximum.
    assert math.isinf(ours.hd95_mm) and math.isinf(theirs["hausdorff_mm"])
