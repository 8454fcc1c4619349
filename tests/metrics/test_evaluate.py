"""Folder evaluation and the ``evaluate`` command on small synthetic folders."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from metric_fixtures import cube

from nnunet_pde.cli.evaluate import register_cli
from nnunet_pde.metrics import compute_metrics
from nnunet_pde.metrics.aggregate import ImputationPolicy
from nnunet_pde.metrics.evaluate import (
    CSV_COLUMNS,
    PER_CASE_CSV,
    SUMMARY_JSON,
    EvaluationError,
    evaluate_folders,
    read_per_case_csv,
    regions_from_dataset_json,
)

sitk = pytest.importorskip("SimpleITK")

SHAPE = (12, 20, 18)  # numpy order z, y, x
SPACING_XYZ = (0.9, 1.1, 2.5)  # SimpleITK order x, y, z
# numpy order, what the metrics must use; NIfTI stores spacing as float32
SPACING = tuple(float(np.float32(v)) for v in SPACING_XYZ[::-1])
REGIONS_JSON = {
    "labels": {"background": 0, "whole": [1, 2], "core": [2]},
    "regions_class_order": [1, 2],
    "file_ending": ".nii.gz",
}
LABELS_JSON = {"labels": {"background": 0, "edema": 1, "core": 2}, "file_ending": ".nii.gz"}


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def same_rows(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(same(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def write(path: Path, seg: np.ndarray, spacing_xyz=SPACING_XYZ) -> None:
    img = sitk.GetImageFromArray(seg.astype(np.uint8))
    img.SetSpacing(spacing_xyz)
    sitk.WriteImage(img, str(path))


def label_map(outer_start, outer_size, inner_start=None, inner_size=0) -> np.ndarray:
    seg = cube(SHAPE, outer_start, outer_size).astype(np.uint8)
    if inner_start is not None:
        seg[cube(SHAPE, inner_start, inner_size)] = 2
    return seg


CASES = {
    # case: (prediction, reference)
    "case_000": (label_map((2, 4, 4), 8, (4, 6, 6), 3), label_map((3, 5, 4), 8, (4, 7, 6), 3)),
    "case_001": (label_map((2, 4, 4), 6), label_map((2, 4, 4), 7, (4, 6, 6), 2)),  # core missed
    "case_002": (label_map((1, 2, 3), 9, (3, 4, 5), 4), label_map((1, 2, 3), 9, (3, 4, 5), 4)),
}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for case, (p, r) in CASES.items():
        write(pred / f"{case}.nii.gz", p)
        write(ref / f"{case}.nii.gz", r)
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps(REGIONS_JSON))
    return pred, ref, ds


def test_rows_equal_the_metrics_of_the_masks(folders):
    pred, ref, ds = folders
    rows, summary = evaluate_folders(pred, ref, ds, num_workers=1, tolerance_mm=1.0, progress=False)
    assert [(r["case"], r["region"]) for r in rows] == [
        (c, reg) for c in sorted(CASES) for reg in ("whole", "core")
    ]
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING, strict=True)))
    for r in rows:
        p, q = CASES[r["case"]]
        values = [1, 2] if r["region"] == "whole" else [2]
        expected = compute_metrics(np.isin(p, values), np.isin(q, values), SPACING, 1.0)
        for k, v in expected.as_dict().items():
            assert same(r[k], v), k
        assert r["labels"] == ("(1, 2)" if r["region"] == "whole" else "(2,)")
        assert r["image_diagonal_mm"] == pytest.approx(diag)
    missed = next(r for r in rows if r["case"] == "case_001" and r["region"] == "core")
    assert missed["status"] == "empty_pred" and math.isinf(missed["hd95_mm"])

    # Written files: CSV with the documented columns that reads back identically,
    # strict JSON, and the default volume_diagonal imputation of the missed core.
    back = read_per_case_csv(pred / PER_CASE_CSV)
    assert list(back[0]) == list(CSV_COLUMNS)
    assert same_rows(rows, back)
    saved = json.loads((pred / SUMMARY_JSON).read_text())
    core = saved["regions"]["core"]["metrics"]["hd95_mm"]
    assert core["n_imputed"] == 1 and core["n"] == 3
    assert saved["metadata"]["n_cases"] == 3 and saved["metadata"]["tolerance_mm"] == 1.0
    assert saved["imputation"] == {"policy": "volume_diagonal", "worst_value_mm": None}
    assert saved["regions"]["whole"]["labels"] == "(1, 2)"
    assert summary["regions"]["core"]["status_counts"]["empty_pred"] == 1


def test_parallel_equals_inline(folders, tmp_path):
    pred, ref, ds = folders
    inline, _ = evaluate_folders(pred, ref, ds, num_workers=1, progress=False, write=False)
    parallel, _ = evaluate_folders(
        pred, ref, ds, num_workers=2, progress=False, output_dir=tmp_path / "out"
    )
    assert same_rows(inline, parallel)
    assert (tmp_path / "out" / PER_CASE_CSV).is_file()


def test_never_touches_nnunet_summary_and_refuses_to_overwrite(folders):
    pred, ref, ds = folders
    nnunet_summary = pred / "summary.json"
    nnunet_summary.write_text('{"foreground_mean": {"Dice": 0.5}}')
    evaluate_folders(pred, ref, ds, num_workers=1, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate_folders(pred, ref, ds, num_workers=1, progress=False)
    evaluate_folders(
        pred,
        ref,
        ds,
        num_workers=1,
        progress=False,
        overwrite=True,
        policy=ImputationPolicy("exclude"),
    )
    assert json.loads((pred / SUMMARY_JSON).read_text())["imputation"]["policy"] == "exclude"
    assert nnunet_summary.read_text() == '{"foreground_mean": {"Dice": 0.5}}'


def test_unmatched_cases_are_listed(folders):
    pred, ref, ds = folders
    (ref / "case_001.nii.gz").unlink()
    with pytest.raises(EvaluationError, match="have no reference.*case_001"):
        evaluate_folders(pred, ref, ds, num_workers=1, progress=False, write=False)
    (pred / "case_001.nii.gz").unlink()
    (pred / "case_002.nii.gz").unlink()
    with pytest.raises(EvaluationError, match="have no prediction.*case_002"):
        evaluate_folders(pred, ref, ds, num_workers=1, progress=False, write=False)
    rows, _ = evaluate_folders(
        pred, ref, ds, num_workers=1, progress=False, write=False, allow_missing_predictions=True
    )
    assert {r["case"] for r in rows} == {"case_000"}


def test_geometry_mismatches_are_errors(folders):
    pred, ref, ds = folders
    write(pred / "case_000.nii.gz", CASES["case_000"][0], spacing_xyz=(0.9, 1.1, 3.0))
    write(pred / "case_001.nii.gz", np.zeros((12, 20, 17), np.uint8))
    with pytest.raises(EvaluationError, match="2 case.*case_000: spacing.*case_001: shape"):
        evaluate_folders(pred, ref, ds, num_workers=1, progress=False, write=False)


def test_missing_folders_and_dataset_json(tmp_path, folders):
    pred, ref, ds = folders
    with pytest.raises(EvaluationError, match="prediction folder .* does not exist"):
        evaluate_folders(tmp_path / "nope", ref, ds, progress=False)
    # nnU-Net layouts: raw/dataset.json next to raw/labelsTr, and a prediction folder two
    # levels below the trainer folder; with neither, a clear error.
    (tmp_path / "raw").mkdir()
    (tmp_path / "results" / "fold_0").mkdir(parents=True)
    labels = ref.rename(tmp_path / "raw" / "labelsTr")
    validation = pred.rename(tmp_path / "results" / "fold_0" / "validation")
    ds = ds.rename(tmp_path / "raw" / "dataset.json")
    _, summary = evaluate_folders(
        validation, labels, None, num_workers=1, progress=False, write=False
    )
    assert summary["metadata"]["dataset_json"] == str(ds.resolve())
    ds.rename(tmp_path / "results" / "dataset.json")
    _, summary = evaluate_folders(
        validation, labels, None, num_workers=1, progress=False, write=False
    )
    assert summary["metadata"]["dataset_json"].endswith("results/dataset.json")
    (tmp_path / "results" / "dataset.json").unlink()
    with pytest.raises(EvaluationError, match="no dataset.json found.*--dataset-json"):
        evaluate_folders(validation, labels, None, progress=False, write=False)


def test_labels_ignore_label_and_file_ending(tmp_path):
    pred, ref = tmp_path / "p", tmp_path / "r"
    pred.mkdir()
    ref.mkdir()
    p = label_map((2, 4, 4), 8, (4, 6, 6), 3)
    r = p.copy()
    r[0:2] = 9  # unannotated slab; the prediction has foreground nowhere there anyway
    p[0:2, 4:8, 4:8] = 1  # predicted foreground inside the ignored slab must not count
    write(pred / "a.nrrd", p)
    write(ref / "a.nrrd", r)
    write(pred / "a.nii.gz", p)  # other endings are not cases
    ds = {"labels": {"background": 0, "edema": 1, "core": 2, "ignore": 9}, "file_ending": ".nrrd"}
    assert [g.key for g in regions_from_dataset_json(ds)[0]] == ["1", "2"]
    rows, summary = evaluate_folders(pred, ref, ds, num_workers=1, progress=False, write=False)
    assert [r_["region"] for r_ in rows] == ["edema", "core"]
    assert all(r_["dice"] == 1.0 and r_["hd95_mm"] == 0.0 for r_ in rows)
    assert summary["metadata"]["ignore_label"] == 9


def test_bad_dataset_json(folders):
    pred, ref, _ = folders
    with pytest.raises(EvaluationError, match="no foreground"):
        evaluate_folders(pred, ref, {"labels": {"background": 0}}, progress=False, write=False)


# ---------------------------------------------------------------- command line


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-pde")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_outputs_and_prints_a_table(folders, tmp_path, capsys):
    pred, ref, ds = folders
    out = tmp_path / "metrics"
    code = run_cli(
        [
            "evaluate",
            str(pred),
            str(ref),
            "--dataset-json",
            str(ds),
            "--workers",
            "1",
            "--output",
            str(out),
            "--impute",
            "worst",
            "--worst-value",
            "373.13",
            "--tolerance-mm",
            "2",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "whole" in text and "core" in text and "NSD@2mm" in text and "1 imputed" in text
    assert str(out / PER_CASE_CSV) in text and str(out / SUMMARY_JSON) in text
    saved = json.loads((out / SUMMARY_JSON).read_text())
    assert saved["imputation"] == {"policy": "worst", "worst_value_mm": 373.13}
    assert saved["metadata"]["tolerance_mm"] == 2.0
    assert not (pred / PER_CASE_CSV).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--impute", "worst"], "needs --worst-value"),
        (["--worst-value", "3"], "only applies to --impute worst"),
        (["--tolerance-mm", "-1"], "tolerance"),
    ],
)
def test_cli_errors_exit_2_without_traceback(folders, capsys, extra, message):
    pred, ref, ds = folders
    code = run_cli(
        [
            "evaluate",
            str(pred),
            str(ref),
            "--dataset-json",
            str(ds),
            "--workers",
            "1",
            "--no-progress",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_missing_folder(tmp_path, capsys):
    code = run_cli(["evaluate", str(tmp_path / "x"), str(tmp_path / "y"), "--no-progress"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        run_cli(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "example:" in out and "--impute" in out and "summary.json" in out
