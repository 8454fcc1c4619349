"""``benchmark robustness``: few labels, noisy labels and scanner shift on fabricated trees.

No network is trained. Each test writes nnU-Net's folder layout into ``tmp_path`` with small
label maps: a reference (an organ box with a lesion inside) and predictions that lose the first
``k`` z slices of the organ (:func:`cut`), so Dice falls with ``k`` by a known amount. Expected
values are computed here from the label maps with numpy.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from benchmark_fixtures import write_seg

from nnunet_pde.benchmark.robustness import (
    relative_drop,
    robustness_few_labels,
    robustness_noisy_labels,
    robustness_scanner_shift,
    severity_auc,
)
from nnunet_pde.benchmark.robustness import scanner_shift as rob
from nnunet_pde.errors import BenchmarkError

SHAPE = (10, 10, 10)
SPACING = (2.0, 1.0, 1.0)  # numpy axis order (z, y, x)
CASES = [f"case_{i:03d}" for i in range(6)]
SPLITS = [
    {
        "train": [c for c in CASES if c not in CASES[2 * k : 2 * k + 2]],
        "val": CASES[2 * k : 2 * k + 2],
    }
    for k in range(3)
]
FOLDS = (0, 1, 2)
LABELS = {"background": 0, "organ": 1, "lesion": 2}
PLANS, CONF = "nnUNetPlans", "3d_fullres"
QUIET = {"num_workers": 1, "progress": False, "print_fn": lambda s: None}


# ------------------------------------------------------------------------------- fixtures


def reference_map(i: int) -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    a = 1 + i % 2
    seg[1:9, a : a + 6, 2:8] = 1
    seg[4:7, a + 2 : a + 5, 4:7] = 2
    return seg


def cut(k: int) -> Callable[[np.ndarray], np.ndarray]:
    """Prediction that loses the organ's first ``k`` z slices (the lesion starts at z = 4)."""

    def f(ref: np.ndarray) -> np.ndarray:
        pred = ref.copy()
        pred[1 : 1 + k] = 0
        return pred

    return f


def grow(ref: np.ndarray) -> np.ndarray:
    """The organ one z slice taller."""
    pred = ref.copy()
    pred[9][ref[8] == 1] = 1
    return pred


def dice(p: np.ndarray, r: np.ndarray) -> float:
    return 2 * float((p & r).sum()) / float(p.sum() + r.sum())


def expected_dice(corrupt: Callable[[np.ndarray], np.ndarray], value: int = 1) -> float:
    """Mean organ Dice over the cases of ``corrupt(reference)`` against the reference."""
    return float(
        np.mean(
            [dice(corrupt(reference_map(i)) == value, reference_map(i) == value) for i in range(6)]
        )
    )


def make_env(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    raw, pre, res = tmp / "raw", tmp / "preprocessed", tmp / "results"
    for p in (raw, pre, res):
        p.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(res))
    return raw, pre, res


def make_dataset(
    raw: Path,
    pre: Path,
    name: str,
    train_labels: Callable[[np.ndarray], np.ndarray] | None = None,
    clean_copy: bool = False,
    derived: dict | None = None,
) -> None:
    """A planned dataset: raw labelsTr (+ labelsTr_clean), gt_segmentations, splits."""
    train_labels = train_labels or cut(0)
    ds = {
        "channel_names": {"0": "MR"},
        "labels": LABELS,
        "numTraining": 6,
        "file_ending": ".nii.gz",
    }
    for folder in (raw / name, pre / name):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(ds))
    (pre / name / "splits_final.json").write_text(json.dumps(SPLITS))
    for i, c in enumerate(CASES):
        write_seg(raw / name / "labelsTr" / f"{c}.nii.gz", train_labels(reference_map(i)))
        write_seg(pre / name / "gt_segmentations" / f"{c}.nii.gz", train_labels(reference_map(i)))
        if clean_copy:
            write_seg(raw / name / "labelsTr_clean" / f"{c}.nii.gz", reference_map(i))
    if derived is not None:
        (raw / name / "nnunet_pde_derived.json").write_text(json.dumps(derived))


def write_oof(
    res: Path,
    name: str,
    trainer: str,
    predict: Callable[[np.ndarray], np.ndarray],
    folds: Sequence[int] = FOLDS,
    subset_fraction: float | None = None,
) -> Path:
    model = res / name / f"{trainer}__{PLANS}__{CONF}"
    for k in folds:
        val = model / f"fold_{k}" / "validation"
        for c in SPLITS[k]["val"]:
            write_seg(val / f"{c}.nii.gz", predict(reference_map(CASES.index(c))))
        (model / f"fold_{k}" / "checkpoint_final.pth").write_bytes(b"fake")
        (val / "summary.json").write_text("{}")  # a finished fold, as nnU-Net leaves it
        if subset_fraction is not None:
            (model / f"fold_{k}" / "few_label_subset.json").write_text(
                json.dumps({"fraction": subset_fraction, "seed": 0, "n_total": 4, "n_selected": 1})
            )
    return model


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def pick(rows: Sequence[dict], **kw) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


# ------------------------------------------------------------------------- pure functions


def test_severity_auc_is_the_normalised_trapezoid() -> None:
    assert severity_auc([0, 1, 2], [1.0, 0.8, 0.4]) == pytest.approx(0.75)
    # unsorted input, uneven spacing: (0.5*(1+0.9)*0.5 + 0.5*(0.9+0.5)*0.5)/1.0... by hand:
    # segments [0,0.5]: 0.5*(1.0+0.9)/2 = 0.475; [0.5,1]: 0.5*(0.9+0.5)/2 = 0.35 -> 0.825
    assert severity_auc([1.0, 0.0, 0.5], [0.5, 1.0, 0.9]) == pytest.approx(0.825)
    # few labels: fractions 0.1, 0.5, 1.0 -> span 0.9
    auc = severity_auc([0.1, 0.5, 1.0], [0.6, 0.8, 0.9])
    assert auc == pytest.approx((0.4 * 0.7 + 0.5 * 0.85) / 0.9)
    assert severity_auc([0, 1, 2, 3], [0.7] * 4) == pytest.approx(0.7)  # flat = its value
    assert severity_auc([3.0], [0.5]) == 0.5
    assert math.isnan(severity_auc([0, 1], [0.9, float("nan")]))
    with pytest.raises(ValueError, match="distinct"):
        severity_auc([0, 0], [1, 1])
    with pytest.raises(ValueError, match="one value per level"):
        severity_auc([0, 1], [1])


def test_relative_drop_is_relative_for_dice_and_absolute_for_distances() -> None:
    assert relative_drop(0.8, 0.6, "dice") == pytest.approx(0.25)
    assert relative_drop(0.5, 0.5, "nsd") == 0.0
    assert relative_drop(0.5, 0.6, "dice") == pytest.approx(-0.2)  # better than clean
    assert relative_drop(2.0, 5.5, "hd95_mm") == pytest.approx(3.5)
    assert relative_drop(4.0, 3.0, "assd_mm") == pytest.approx(-1.0)
    assert math.isnan(relative_drop(0.0, 0.3, "dice"))
    assert math.isnan(relative_drop(float("nan"), 0.3, "dice"))
    with pytest.raises(ValueError, match="unknown metric"):
        relative_drop(1.0, 1.0, "iou")


# ------------------------------------------------------------------------------ few labels

FEW = "Dataset501_Few"


@pytest.fixture
def few_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    raw, pre, res = make_env(tmp_path, monkeypatch)
    make_dataset(raw, pre, FEW)
    # TrainerA: 10 % loses 3 slices, 50 % loses 1, 100 % is perfect
    write_oof(res, FEW, "TrainerA_Frac10", cut(3), subset_fraction=0.10)
    write_oof(res, FEW, "TrainerA_Frac50", cut(1), subset_fraction=0.50)
    write_oof(res, FEW, "TrainerA", cut(0))
    # TrainerB: 10 % loses 2, 50 % loses 2, 100 % loses 1
    write_oof(res, FEW, "TrainerB_Frac10", cut(2), subset_fraction=0.10)
    write_oof(res, FEW, "TrainerB_Frac50", cut(2), subset_fraction=0.50)
    write_oof(res, FEW, "TrainerB", cut(1))
    # a decoy that must not be pooled (other plans)
    model = res / FEW / f"TrainerA_Frac10__otherPlans__{CONF}" / "fold_0" / "validation"
    write_seg(model / "case_000.nii.gz", np.zeros(SHAPE, np.uint8))
    return res


def test_few_labels_pools_the_frac_models_and_computes_drop_and_auc(few_tree: Path) -> None:
    outcome = robustness_few_labels(
        "501", ["TrainerA", "TrainerB"], fractions=[10, 50], folds=FOLDS, **QUIET
    )
    out = few_tree / FEW / "nnunet_pde_robustness" / "few-labels"
    assert outcome.output == out
    names = {p.name for p in outcome.files}
    assert {"per_case.csv", "summary.csv", "auc.csv", "tables.md", "robustness.json"} <= names
    assert {"label-fraction_dice.png", "label-fraction_hd95_mm.png"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in outcome.files)

    # the right folders per fraction: 100 % = the base trainer
    conds = {(c["trainer"], c["level"]): c for c in outcome.meta["conditions"]}
    assert conds[("TrainerA", 0.1)]["key"] == "TrainerA_Frac10"
    assert conds[("TrainerA", 1.0)]["key"] == "TrainerA"
    assert conds[("TrainerB", 0.5)]["predictions"] == [
        str(few_tree / FEW / f"TrainerB_Frac50__{PLANS}__{CONF}" / f"fold_{k}" / "validation")
        for k in FOLDS
    ]
    assert conds[("TrainerA", 0.1)]["subsets"]["0"]["fraction"] == 0.1
    per_case = read_csv(out / "per_case.csv")
    assert len(per_case) == 2 * 3 * 6 * 2  # trainers x fractions x cases x regions
    assert {r["condition"] for r in per_case} == {
        "TrainerA_Frac10",
        "TrainerA_Frac50",
        "TrainerA",
        "TrainerB_Frac10",
        "TrainerB_Frac50",
        "TrainerB",
    }

    # Dice of the organ as fabricated, decreasing with fewer labels for TrainerA
    organ = pick(outcome.summary, trainer="TrainerA", region="organ", metric="dice")
    means = {r["level"]: r["mean"] for r in organ}
    assert means[1.0] == pytest.approx(1.0)
    assert means[0.5] == pytest.approx(expected_dice(cut(1)))
    assert means[0.1] == pytest.approx(expected_dice(cut(3)))
    assert means[0.1] < means[0.5] < means[1.0]
    assert [r["level"] for r in organ] == [0.1, 0.5, 1.0]
    for r in organ:
        assert r["n"] == 6 and r["clean_mean"] == pytest.approx(1.0)
        assert r["drop"] == pytest.approx(1.0 - r["mean"])
        assert r["drop_kind"] == "relative"
    b = {
        r["level"]: r
        for r in pick(outcome.summary, trainer="TrainerB", region="organ", metric="dice")
    }
    clean_b = expected_dice(cut(1))
    assert b[0.1]["drop"] == pytest.approx((clean_b - expected_dice(cut(2))) / clean_b)
    hd = pick(outcome.summary, trainer="TrainerA", region="organ", metric="hd95_mm")
    assert all(r["drop_kind"] == "absolute" for r in hd)
    assert hd[-1]["drop"] == 0.0 and hd[0]["drop"] == pytest.approx(hd[0]["mean"] - hd[-1]["mean"])

    auc = pick(outcome.auc, trainer="TrainerA", region="organ", metric="dice")[0]
    y = [means[0.1], means[0.5], means[1.0]]
    assert auc["auc"] == pytest.approx((0.4 * (y[0] + y[1]) / 2 + 0.5 * (y[1] + y[2]) / 2) / 0.9)
    assert auc["levels"] == "0.1;0.5;1" and auc["x_min"] == 0.1 and auc["x_max"] == 1.0
    assert auc["auc_drop"] == pytest.approx(1.0 - auc["auc"])
    # the lesion is untouched by the cuts: a flat curve at Dice 1
    lesion = pick(outcome.auc, trainer="TrainerA", region="lesion", metric="dice")[0]
    assert lesion["auc"] == pytest.approx(1.0)

    # the files agree with the returned rows
    rows = read_csv(out / "summary.csv")
    assert (
        len(rows) == len(outcome.summary) == 2 * 2 * 2 * 3
    )  # trainers x regions x metrics x levels
    assert float(
        pick(rows, trainer="TrainerA", region="organ", metric="dice", level="0.1")[0]["mean"]
    ) == pytest.approx(means[0.1])
    assert len(read_csv(out / "auc.csv")) == 2 * 2 * 2
    tables = (out / "tables.md").read_text()
    assert "| region | trainer | 10 % | 50 % | 100 % | AUC |" in tables
    drop_text = f"({-(1 - means[0.1]) * 100:+.1f} %)"
    assert drop_text in tables
    meta = json.loads((out / "robustness.json").read_text())
    assert meta["regime"] == "few-labels" and meta["clean_level"] == 1.0
    assert sorted(meta["files"]) == sorted(p.name for p in outcome.files)
    assert not outcome.warnings


def test_few_labels_missing_fraction_names_the_folder_and_the_command(few_tree: Path) -> None:
    with pytest.raises(BenchmarkError) as err:
        robustness_few_labels(
            "501", ["TrainerA", "TrainerB"], fractions=[10, 25], folds=FOLDS, **QUIET
        )
    msg = str(err.value)
    assert f"TrainerA_Frac25__{PLANS}__{CONF}" in msg and "TrainerB_Frac25" in msg
    assert "nnunet-pde benchmark run 501 --trainers TrainerA_Frac25" in msg
    assert f"nnUNetv2_train 501 {CONF} FOLD -tr TrainerA_Frac25 -p {PLANS}" in msg
    assert "TrainerA_Frac10" not in msg


def test_few_labels_warns_on_a_missing_fold_and_wrong_subset_record(few_tree: Path) -> None:
    import shutil

    model = few_tree / FEW / f"TrainerB_Frac50__{PLANS}__{CONF}"
    shutil.rmtree(model / "fold_2")
    rec = model / "fold_0" / "few_label_subset.json"
    rec.write_text(json.dumps({"fraction": 0.25, "seed": 0}))
    outcome = robustness_few_labels(
        "501", ["TrainerA", "TrainerB"], fractions=[10, 50], folds=FOLDS, **QUIET
    )
    text = "\n".join(outcome.warnings)
    assert "TrainerB_Frac50: MISSING folds fold 2" in text
    assert "case sets differ: TrainerB TrainerB_Frac50 lacks 2 case(s)" in text
    assert "records fraction 0.25, not 0.5" in text
    assert "**Warnings**" in (outcome.output / "tables.md").read_text()


def test_bad_arguments_are_clear_errors(few_tree: Path) -> None:
    with pytest.raises(BenchmarkError, match="whole percentages"):
        robustness_few_labels("501", ["TrainerA"], fractions=[0.25], **QUIET)
    with pytest.raises(BenchmarkError, match="base trainers"):
        robustness_few_labels("501", ["TrainerA_Frac10"], **QUIET)
    with pytest.raises(BenchmarkError, match="unknown metric"):
        robustness_few_labels("501", ["TrainerA"], metrics=["iou"], **QUIET)


def test_refuses_a_non_empty_output_before_any_work(few_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "rob"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    lines: list[str] = []
    with pytest.raises(FileExistsError, match="--overwrite"):
        robustness_few_labels(
            "501",
            ["TrainerA"],
            fractions=[10],
            folds=FOLDS,
            output=out,
            num_workers=1,
            progress=False,
            print_fn=lines.append,
        )
    assert not any(line.startswith("evaluating") for line in lines)
    first = robustness_few_labels(
        "501", ["TrainerA"], fractions=[10], folds=FOLDS, output=out, overwrite=True, **QUIET
    )
    assert (out / "notes.txt").read_text() == "mine"  # only our own files are replaced
    second = robustness_few_labels(
        "501",
        ["TrainerA"],
        fractions=[10],
        folds=FOLDS,
        output=out,
        overwrite=True,
        metrics=["dice"],
        **QUIET,
    )
    assert not (out / "label-fraction_hd95_mm.png").exists()  # the earlier run's figure is gone
    assert {p.name for p in second.files} < {p.name for p in first.files}


# ---------------------------------------------------------------------------- noisy labels

CLEAN_DS = "Dataset501_Clean"


def derived_json(mode: str, mm: float) -> dict:
    return {
        "kind": "noisy-labels",
        "source": {"name": CLEAN_DS, "id": 501},
        "mode": mode,
        "magnitude_mm": mm,
        "fraction": 1.0,
        "seed": 0,
    }


@pytest.fixture
def noisy_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    raw, pre, res = make_env(tmp_path, monkeypatch)
    make_dataset(raw, pre, CLEAN_DS)
    noisy = {
        "Dataset601_Erode1": ("erode", 2.0, cut(1)),
        "Dataset602_Erode2": ("erode", 4.0, cut(2)),
        "Dataset603_Dilate": ("dilate", 2.0, grow),
    }
    for name, (mode, mm, corrupt) in noisy.items():
        # labelsTr and gt_segmentations hold the NOISY labels, labelsTr_clean the clean ones
        make_dataset(
            raw, pre, name, train_labels=corrupt, clean_copy=True, derived=derived_json(mode, mm)
        )
    for trainer in ("TrainerA", "TrainerB"):
        write_oof(res, CLEAN_DS, trainer, cut(0))
        for name, (_, _, corrupt) in noisy.items():
            # the network learned the noise exactly: perfect against the noisy labels
            write_oof(res, name, trainer, corrupt)
    return res


def test_noisy_labels_scored_against_the_clean_labels_one_curve_per_mode(noisy_tree: Path) -> None:
    outcome = robustness_noisy_labels(
        ["601", "Dataset501_Clean", "602", "603"], ["TrainerA", "TrainerB"], folds=FOLDS, **QUIET
    )
    assert outcome.output == noisy_tree / CLEAN_DS / "nnunet_pde_robustness" / "noisy-labels"
    curves = {c["id"]: c for c in outcome.meta["curves"]}
    assert list(curves) == ["erode", "dilate"]
    assert [(p["level"], p["condition"]) for p in curves["erode"]["points"]] == [
        (0.0, CLEAN_DS),
        (2.0, "Dataset601_Erode1"),
        (4.0, "Dataset602_Erode2"),
    ]
    assert [p["level"] for p in curves["dilate"]["points"]] == [0.0, 2.0]
    refs = {c["key"]: c["reference"] for c in outcome.meta["conditions"]}
    raw = noisy_tree.parent / "raw"
    assert refs[CLEAN_DS] == str(raw / CLEAN_DS / "labelsTr")
    assert refs["Dataset601_Erode1"] == str(raw / "Dataset601_Erode1" / "labelsTr_clean")

    erode = {
        r["level"]: r
        for r in pick(
            outcome.summary, trainer="TrainerA", curve="erode", region="organ", metric="dice"
        )
    }
    assert erode[0.0]["mean"] == pytest.approx(1.0)
    # against the noisy labels these would all be 1.0
    assert erode[2.0]["mean"] == pytest.approx(expected_dice(cut(1)))
    assert erode[4.0]["mean"] == pytest.approx(expected_dice(cut(2)))
    assert erode[4.0]["mean"] < erode[2.0]["mean"] < 1.0
    assert erode[4.0]["drop"] == pytest.approx(1.0 - expected_dice(cut(2)))
    dilate = pick(
        outcome.summary, trainer="TrainerB", curve="dilate", region="organ", metric="dice"
    )
    assert [r["level"] for r in dilate] == [0.0, 2.0]
    assert dilate[1]["mean"] == pytest.approx(expected_dice(grow))
    auc = pick(outcome.auc, trainer="TrainerA", curve="erode", region="organ", metric="dice")[0]
    y = [1.0, expected_dice(cut(1)), expected_dice(cut(2))]
    assert auc["auc"] == pytest.approx((2 * (y[0] + y[1]) / 2 + 2 * (y[1] + y[2]) / 2) / 4)
    # the clean dataset is scored once per trainer, and shared by both curves
    per_case = read_csv(outcome.output / "per_case.csv")
    assert len(pick(per_case, trainer="TrainerA", condition=CLEAN_DS, region="organ")) == 6
    assert pick(per_case, condition=CLEAN_DS)[0]["curve"] == "clean"
    tables = (outcome.output / "tables.md").read_text()
    assert "| region | trainer | 0 mm (clean) | 2 mm | 4 mm | AUC |" in tables
    assert "AUC of Dice per curve" in tables and "CLEAN labels" in tables
    assert not outcome.warnings


def test_noisy_labels_reports_a_case_set_mismatch(noisy_tree: Path) -> None:
    model = noisy_tree / "Dataset602_Erode2" / f"TrainerA__{PLANS}__{CONF}"
    (model / "fold_1" / "validation" / "case_003.nii.gz").unlink()
    outcome = robustness_noisy_labels(["501", "601", "602"], ["TrainerA"], folds=FOLDS, **QUIET)
    text = "\n".join(outcome.warnings)
    assert "case sets differ: TrainerA Dataset602_Erode2 lacks 1 case(s) (case_003)" in text
    assert "1 validation case(s) without prediction (case_003)" in text


def test_noisy_labels_errors(noisy_tree: Path) -> None:
    with pytest.raises(BenchmarkError, match="no clean dataset.*Dataset501_Clean"):
        robustness_noisy_labels(["601", "602"], ["TrainerA"], folds=FOLDS, **QUIET)
    with pytest.raises(
        BenchmarkError, match="no predictions.*\n.*benchmark run 603 --trainers TrainerC"
    ):
        robustness_noisy_labels(["501", "603"], ["TrainerC"], folds=FOLDS, **QUIET)
    import shutil

    shutil.rmtree(noisy_tree.parent / "raw" / "Dataset603_Dilate" / "labelsTr_clean")
    with pytest.raises(BenchmarkError, match="labelsTr_clean does not exist.*never its noisy"):
        robustness_noisy_labels(["501", "603"], ["TrainerA"], folds=FOLDS, **QUIET)


# ---------------------------------------------------------------------------- scanner shift

SHIFT_DS = "Dataset501_Shift"
TEST_CASES = ["test_000", "test_001"]
PERTS = {"bias_field": False, "noise": True}  # name -> covered_by_nnunet
LEVEL_CUT = {("bias_field", 1): 1, ("bias_field", 2): 3, ("noise", 1): 0, ("noise", 2): 1}


def _test_ref(case: str) -> np.ndarray:
    return reference_map(TEST_CASES.index(case))


@pytest.fixture
def shift_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    raw, pre, res = make_env(tmp_path, monkeypatch)
    make_dataset(raw, pre, SHIFT_DS)
    images, labels = raw / SHIFT_DS / "imagesTs", raw / SHIFT_DS / "labelsTs"
    shifted = tmp_path / "shift501"
    for c in TEST_CASES:
        write_seg(labels / f"{c}.nii.gz", _test_ref(c))
        write_seg(images / f"{c}_0000.nii.gz", _test_ref(c) * 10)
        for p in PERTS:
            for k in (1, 2):
                write_seg(shifted / p / f"level{k}" / f"{c}_0000.nii.gz", _test_ref(c) * 10 + k)
    manifest = {
        "kind": "shifted-images",
        "source": {
            "dataset": SHIFT_DS,
            "images": str(images),
            "labels": str(labels),
            "file_ending": ".nii.gz",
            "dataset_json": str(raw / SHIFT_DS / "dataset.json"),
        },
        "seed": 0,
        "levels": [1, 2],
        "perturbations": {
            p: {
                "covered_by_nnunet": cov,
                "description": f"{p} perturbation",
                "levels": {"1": {"x": 1}, "2": {"x": 2}},
            }
            for p, cov in PERTS.items()
        },
    }
    (shifted / "nnunet_pde_shift.json").write_text(json.dumps(manifest))
    for t in ("TrainerA", "TrainerB"):
        for k in FOLDS:
            d = res / SHIFT_DS / f"{t}__{PLANS}__{CONF}" / f"fold_{k}"
            d.mkdir(parents=True)
            (d / "checkpoint_final.pth").write_bytes(b"fake")
    # a stand-in nnUNetv2_predict on PATH (never run: the runner is replaced)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nnUNetv2_predict"
    exe.write_text("#!/bin/sh\nexit 99\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return {"results": res, "shifted": shifted, "images": images, "labels": labels}


def write_shift_predictions(pred_root: Path, trainer: str, extra_cut: int = 0) -> None:
    for c in TEST_CASES:
        write_seg(pred_root / trainer / "clean" / f"{c}.nii.gz", cut(extra_cut)(_test_ref(c)))
        for (p, k), n in LEVEL_CUT.items():
            write_seg(
                pred_root / trainer / p / f"level{k}" / f"{c}.nii.gz",
                cut(n + extra_cut)(_test_ref(c)),
            )


def expected_test_dice(k: int) -> float:
    return float(np.mean([dice(cut(k)(_test_ref(c)) == 1, _test_ref(c) == 1) for c in TEST_CASES]))


def test_scanner_shift_reads_the_manifest_and_separates_covered_perturbations(
    shift_tree: dict[str, Path],
) -> None:
    pred_root = shift_tree["shifted"] / "predictions"
    write_shift_predictions(pred_root, "TrainerA")
    write_shift_predictions(pred_root, "TrainerB", extra_cut=1)
    outcome = robustness_scanner_shift(
        "501", shift_tree["shifted"], ["TrainerA", "TrainerB"], folds=FOLDS, **QUIET
    )
    assert (
        outcome.output
        == shift_tree["results"] / SHIFT_DS / "nnunet_pde_robustness" / "scanner-shift"
    )
    assert outcome.meta["covered_by_nnunet"] == ["noise"]
    assert outcome.meta["not_covered_by_nnunet"] == ["bias_field"]
    groups = {c["id"]: c["group"] for c in outcome.meta["curves"]}
    assert groups == {"noise": "covered_by_nnunet", "bias_field": "not_covered_by_nnunet"}
    bias = {
        r["level"]: r
        for r in pick(
            outcome.summary, trainer="TrainerA", curve="bias_field", region="organ", metric="dice"
        )
    }
    assert list(bias) == [0.0, 1.0, 2.0]
    assert bias[0.0]["mean"] == pytest.approx(1.0)
    assert bias[1.0]["mean"] == pytest.approx(expected_test_dice(1))
    assert bias[2.0]["mean"] == pytest.approx(expected_test_dice(3))
    assert all(r["group"] == "not_covered_by_nnunet" for r in bias.values())
    b_noise = {
        r["level"]: r
        for r in pick(
            outcome.summary, trainer="TrainerB", curve="noise", region="organ", metric="dice"
        )
    }
    clean_b = expected_test_dice(1)
    assert b_noise[2.0]["drop"] == pytest.approx((clean_b - expected_test_dice(2)) / clean_b)
    auc = pick(outcome.auc, trainer="TrainerA", curve="bias_field", region="organ", metric="dice")[
        0
    ]
    y = [1.0, expected_test_dice(1), expected_test_dice(3)]
    assert auc["auc"] == pytest.approx(((y[0] + y[1]) / 2 + (y[1] + y[2]) / 2) / 2)
    tables = (outcome.output / "tables.md").read_text()
    covered = tables.index("## Perturbations covered by nnU-Net's training augmentation")
    not_covered = tables.index("## Perturbations NOT covered by nnU-Net's training augmentation")
    assert covered < tables.index("### Scanner shift, noise") < not_covered
    assert not_covered < tables.index("### Scanner shift, bias_field")
    assert "| region | trainer | clean | level 1 | level 2 | AUC |" in tables
    assert {"noise_dice.png", "bias_field_dice.png", "bias_field_hd95_mm.png"} <= {
        p.name for p in outcome.files
    }


def expected_command(shifted: Path, trainer: str, key: str, inp: Path) -> list[str]:
    out = shifted / "predictions" / trainer / key
    partial = out.with_name(f".{out.name}.partial")
    return [
        "nnUNetv2_predict", "-i", str(inp), "-o", str(partial), "-d", SHIFT_DS,
        "-c", CONF, "-p", PLANS, "-tr", trainer, "-f", "0", "1", "2", "-device", "cpu",
        "-npp", "1", "-nps", "1",
    ]  # fmt: skip


def test_scanner_shift_predict_runs_nnunetv2_predict_for_missing_folders_only(
    shift_tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    shifted = shift_tree["shifted"]
    pred_root = shifted / "predictions"
    # already complete: TrainerA clean; incomplete: TrainerA noise/level1; stale temp folder
    for c in TEST_CASES:
        write_seg(pred_root / "TrainerA" / "clean" / f"{c}.nii.gz", _test_ref(c))
    write_seg(
        pred_root / "TrainerA" / "noise" / "level1" / "test_000.nii.gz", _test_ref("test_000")
    )
    leftover = pred_root / "TrainerA" / "noise" / ".level2.partial"
    leftover.mkdir(parents=True)
    (leftover / "junk.nii.gz").write_bytes(b"x")

    calls: list[list[str]] = []

    def fake_runner(cmd: Sequence[str]) -> int:
        cmd = list(cmd)
        calls.append(cmd)
        inp, out = Path(cmd[cmd.index("-i") + 1]), Path(cmd[cmd.index("-o") + 1])
        assert not (out / "junk.nii.gz").exists()
        key = "clean" if inp == shift_tree["images"] else f"{inp.parent.name}/{inp.name}"
        n = 0 if key == "clean" else LEVEL_CUT[(inp.parent.name, int(inp.name[5:]))]
        for c in TEST_CASES:
            write_seg(out / f"{c}.nii.gz", cut(n)(_test_ref(c)))
        return 0

    monkeypatch.setattr(rob, "run_command", fake_runner)
    outcome = robustness_scanner_shift(
        "501", shifted, ["TrainerA", "TrainerB"], folds=FOLDS, predict=True, device="cpu",
        extra_args=["-npp", "1", "-nps", "1"], **QUIET,
    )  # fmt: skip
    inputs = {"clean": shift_tree["images"]}
    for p in PERTS:
        for k in (1, 2):
            inputs[f"{p}/level{k}"] = shifted / p / f"level{k}"
    expected = [
        expected_command(shifted, t, key, inp)
        for t in ("TrainerA", "TrainerB")
        for key, inp in inputs.items()
        if not (t == "TrainerA" and key == "clean")
    ]
    assert calls == expected
    assert not leftover.exists()
    record = json.loads(
        (pred_root / "TrainerB" / "noise" / "level2" / "nnunet_pde_prediction.json").read_text()
    )
    assert record["folds"] == [0, 1, 2] and record["trainer"] == "TrainerB"
    assert (pred_root / "TrainerA" / "noise" / "level1" / "test_001.nii.gz").is_file()
    bias = pick(
        outcome.summary, trainer="TrainerB", curve="bias_field", region="organ", metric="dice"
    )
    assert bias[-1]["mean"] == pytest.approx(expected_test_dice(3))

    # a rerun finds everything and runs nothing; other folds make the folders stale
    calls.clear()
    robustness_scanner_shift(
        "501", shifted, ["TrainerA"], folds=FOLDS, predict=True, overwrite=True, **QUIET
    )
    assert calls == []
    stale = r"(?s)made with other settings.*made with folds \[0, 1, 2\] \(now \[0, 1\]\)"
    with pytest.raises(BenchmarkError, match=stale):
        robustness_scanner_shift(
            "501", shifted, ["TrainerB"], folds=[0, 1], predict=True, overwrite=True, **QUIET
        )


def test_scanner_shift_failed_prediction_keeps_finished_folders(
    shift_tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    done: list[str] = []

    def runner(cmd: Sequence[str]) -> int:
        cmd = list(cmd)
        if len(done) == 2:
            return 3
        out = Path(cmd[cmd.index("-o") + 1])
        for c in TEST_CASES:
            write_seg(out / f"{c}.nii.gz", _test_ref(c))
        done.append(str(out))
        return 0

    with pytest.raises(BenchmarkError, match="exit code 3.*run the same command again"):
        robustness_scanner_shift(
            "501",
            shift_tree["shifted"],
            ["TrainerA"],
            folds=FOLDS,
            predict=True,
            runner=runner,
            **QUIET,
        )
    pred = shift_tree["shifted"] / "predictions" / "TrainerA"
    assert (pred / "clean" / "test_000.nii.gz").is_file()
    assert (pred / "bias_field" / "level1" / "test_001.nii.gz").is_file()
    assert not (pred / "bias_field" / "level2").exists()


def test_scanner_shift_missing_predictions_error_gives_the_commands(
    shift_tree: dict[str, Path],
) -> None:
    shifted = shift_tree["shifted"]
    write_shift_predictions(shifted / "predictions", "TrainerA")
    (shifted / "predictions" / "TrainerA" / "noise" / "level2" / "test_001.nii.gz").unlink()
    with pytest.raises(BenchmarkError) as err:
        robustness_scanner_shift("501", shifted, ["TrainerA"], folds=[0], device="cpu", **QUIET)
    msg = str(err.value)
    assert "1 prediction folder(s) are missing or incomplete" in msg and "--predict" in msg
    out = shifted / "predictions" / "TrainerA" / "noise" / "level2"
    cmd = [
        "nnUNetv2_predict", "-i", str(shifted / "noise" / "level2"), "-o", str(out),
        "-d", SHIFT_DS, "-c", CONF, "-p", PLANS, "-tr", "TrainerA", "-f", "0", "-device", "cpu",
    ]  # fmt: skip
    assert shlex.join(cmd) in msg


def test_scanner_shift_manifest_errors(shift_tree: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="derive shifted-images"):
        robustness_scanner_shift("501", tmp_path / "nowhere", ["TrainerA"], **QUIET)
    path = shift_tree["shifted"] / "nnunet_pde_shift.json"
    m = json.loads(path.read_text())
    m["source"]["labels"] = None
    path.write_text(json.dumps(m))
    with pytest.raises(BenchmarkError, match="no test labels"):
        robustness_scanner_shift("501", shift_tree["shifted"], ["TrainerA"], **QUIET)


# ------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    """``nnunet_pde.cli.build_parser()``."""
    from nnunet_pde.cli import build_parser

    return build_parser()


@pytest.mark.parametrize(
    ("regime", "expected"),
    [
        ("few-labels", ["--fractions", "--impute", "--worst-value", "--overwrite", "example:"]),
        ("noisy-labels", ["--datasets", "labelsTr_clean", "example:"]),
        ("scanner-shift", ["--shifted", "--predict", "--device", "--predictions", "example:"]),
    ],
)
def test_cli_help(regime: str, expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["benchmark", "robustness", regime, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"nnunet-pde benchmark robustness {regime}" in text
    for e in expected:
        assert e in text


def test_cli_parses_and_runs(few_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(
        ["benchmark", "robustness", "scanner-shift", "501", "--shifted", "s", "--trainers", "A",
         "--predict", "--device", "cpu", "--extra-args", "-npp 1 -nps 1", "-j", "2"]
    )  # fmt: skip
    assert args.predict and args.device == "cpu" and args.workers == 2
    assert args.folds == ["0", "1", "2", "3", "4"] and args.metrics == ["dice", "hd95_mm"]
    args = parser.parse_args(
        ["benchmark", "robustness", "noisy-labels", "--datasets", "501", "601", "--trainers", "A"]
    )
    assert args.datasets == ["501", "601"] and args.impute == "volume_diagonal"

    argv = [
        "benchmark", "robustness", "few-labels", "501", "--trainers", "TrainerA",
        "--fractions", "10", "50", "--folds", "0", "1", "2", "-j", "1", "--no-progress",
        "--impute", "worst", "--worst-value", "50",
    ]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "AUC of Dice" in out and "wrote" in out and "tables.md" in out
    meta = json.loads(
        (few_tree / FEW / "nnunet_pde_robustness" / "few-labels" / "robustness.json").read_text()
    )
    assert meta["imputation"] == {"policy": "worst", "worst_value_mm": 50.0}
    args = parser.parse_args(argv)
    assert args.func(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    args = parser.parse_args([*argv[:7], "25", "--folds", "0", "1", "2", "--overwrite"])
    assert args.func(args) == 2
    assert "TrainerA_Frac25" in capsys.readouterr().err
