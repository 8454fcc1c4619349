from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_pde.metrics import ImputationPolicy, aggregate, impute, summarize
from nnunet_pde.metrics.aggregate import json_safe

INF, NAN = math.inf, math.nan


def row(region, status, hd95, dice, diag=100.0, **extra):
    base = {
        "region": region,
        "status": status,
        "dice": dice,
        "hd95_mm": hd95,
        "hausdorff_mm": hd95,
        "assd_mm": hd95,
        "nsd": 0.5,
        "precision": NAN,
        "recall": 0.5,
        "pred_volume_mm3": 1.0,
        "ref_volume_mm3": 2.0,
        "image_diagonal_mm": diag,
    }
    return {**base, **extra}


ROWS = [
    row("tumour", "ok", 2.0, 0.8, diag=50.0),
    row("tumour", "ok", 4.0, 0.6, diag=50.0),
    row("tumour", "empty_pred", INF, 0.0, diag=60.0),
    row("tumour", "both_empty", NAN, NAN, diag=70.0),
    row("liver", "ok", 1.0, 0.9),
]


def test_impute_policies():
    v = [1.0, INF, NAN, 3.0]
    kept, n_imp, n_exc = impute(v, ImputationPolicy("exclude"))
    assert kept.tolist() == [1.0, 3.0] and (n_imp, n_exc) == (0, 1)
    kept, n_imp, n_exc = impute(v, ImputationPolicy("worst", 373.13))
    assert kept.tolist() == [1.0, 373.13, 3.0] and (n_imp, n_exc) == (1, 0)
    kept, n_imp, _ = impute(v, ImputationPolicy("volume_diagonal"), [10, 20, 30, 40])
    assert kept.tolist() == [1.0, 20.0, 3.0] and n_imp == 1


def test_policy_validation():
    with pytest.raises(ValueError, match="unknown imputation policy"):
        ImputationPolicy("median")
    with pytest.raises(ValueError, match="needs worst_value_mm"):
        ImputationPolicy("worst")
    with pytest.raises(ValueError, match="only applies"):
        ImputationPolicy("exclude", 5.0)
    with pytest.raises(ValueError, match="diagonals"):
        impute([INF], ImputationPolicy("volume_diagonal"))


@pytest.mark.parametrize(
    ("policy", "mean", "n", "n_imputed", "n_excluded"),
    [
        (ImputationPolicy("exclude"), 3.0, 2, 0, 2),
        (ImputationPolicy("worst", 373.13), (2 + 4 + 373.13) / 3, 3, 1, 1),
        (ImputationPolicy("volume_diagonal"), (2 + 4 + 60.0) / 3, 3, 1, 1),
    ],
)
def test_aggregate_counts_and_means(policy, mean, n, n_imputed, n_excluded):
    s = aggregate(ROWS, policy)
    t = s["regions"]["tumour"]
    assert t["n_cases"] == 4
    assert t["status_counts"] == {"ok": 2, "empty_pred": 1, "empty_ref": 0, "both_empty": 1}
    hd = t["metrics"]["hd95_mm"]
    assert hd["mean"] == pytest.approx(mean)
    assert (hd["n"], hd["n_imputed"], hd["n_excluded"]) == (n, n_imputed, n_excluded)
    assert (hd["n_nan"], hd["n_inf"], hd["n_cases"]) == (1, 1, 4)
    # Dice: nan (both empty) left out as nnU-Net does; 0 for the missed case counts.
    dice = t["metrics"]["dice"]
    assert dice["mean"] == pytest.approx((0.8 + 0.6 + 0.0) / 3) and dice["n_nan"] == 1
    assert dice["std"] == pytest.approx(np.std([0.8, 0.6, 0.0], ddof=1))
    # Undefined everywhere -> nan statistics, n 0.
    assert math.isnan(t["metrics"]["precision"]["mean"]) and t["metrics"]["precision"]["n"] == 0
    assert s["imputation"]["policy"] == policy.name
    # foreground_mean: mean over regions of the region means.
    assert s["foreground_mean"]["dice"] == pytest.approx(((0.8 + 0.6) / 3 + 0.9) / 2)
    assert list(s["regions"]) == ["tumour", "liver"]


def test_summarize_small_inputs():
    assert summarize([])["n"] == 0 and math.isnan(summarize([])["mean"])
    one = summarize([2.0])
    assert one["mean"] == 2.0 and math.isnan(one["std"]) and one["n"] == 1


def test_json_safe_output_is_strict_json():
    s = json_safe(aggregate(ROWS, ImputationPolicy("exclude")))
    text = json.dumps(s, allow_nan=False)
    assert json.loads(text)["regions"]["tumour"]["metrics"]["precision"]["mean"] is None
    assert json_safe({"a": np.float32(1.5), "b": (INF,)}) == {"a": 1.5, "b": [None]}
