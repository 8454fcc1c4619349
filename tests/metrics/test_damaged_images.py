"""Damaged and misaligned images are never scored (issue 23).

Fault injection on real NIfTI files: a prediction cut at 60 % (a killed export or copy), one
flipped bit in the deflate stream, an uncompressed file missing its last voxels; labels
shifted by 50 mm (origin) and the correct labels stored x-flipped (array reversed, direction
negated, as a RAS/LPS re-export writes them). Without the checks SimpleITK reads all of them
and ``evaluate`` scores them with exit code 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from metric_fixtures import cube

from nnunet_pde.cli import main as cli_main
from nnunet_pde.files import image_integrity_problem, read_image
from nnunet_pde.metrics.evaluate import EvaluationError, evaluate_folders

sitk = pytest.importorskip("SimpleITK")

SHAPE = (16, 24, 20)  # numpy z, y, x
SPACING_XYZ = (0.9, 1.1, 2.5)
ORIGIN_XYZ = (-12.5, 30.25, 7.0)
DS = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seg = np.zeros(SHAPE, np.uint8)
    seg[cube(SHAPE, (2, 3, 4), 9)] = 1
    seg[cube(SHAPE, (4, 6, 6), 4)] = 2
    seg[rng.random(SHAPE) < 0.05] = 1  # some texture, so the deflate stream is not trivial
    return seg


def _image(seg: np.ndarray, origin=ORIGIN_XYZ, direction=None):
    img = sitk.GetImageFromArray(seg)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A prediction folder that equals its reference folder case by case (Dice 1)."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for i in range(3):
        seg = _labels(i)
        sitk.WriteImage(_image(seg), str(ref / f"c{i}.nii.gz"))
        sitk.WriteImage(_image(seg), str(pred / f"c{i}.nii.gz"))
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps(DS))
    return pred, ref, ds


def _evaluate(pred: Path, ref: Path, ds: Path):
    return evaluate_folders(pred, ref, ds, num_workers=1, progress=False, write=False)


def test_intact_folders_score_perfectly(folders):
    rows, _ = _evaluate(*folders)
    assert rows and all(r["dice"] == 1.0 for r in rows)


def test_a_cut_prediction_is_refused_not_scored(folders):
    pred, ref, ds = folders
    f = pred / "c1.nii.gz"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * 0.6)])
    # What SimpleITK alone does: reads it, zeros where the data was lost.
    lossy = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
    assert lossy.shape == SHAPE and not np.array_equal(lossy, _labels(1))
    with pytest.raises(EvaluationError, match=r"c1\.nii\.gz: the gzip stream ends early.*cut"):
        _evaluate(pred, ref, ds)


def test_a_flipped_bit_is_refused(folders):
    pred, ref, ds = folders
    f = ref / "c2.nii.gz"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x04
    f.write_bytes(bytes(data))
    assert image_integrity_problem(f) is not None
    with pytest.raises(EvaluationError, match=r"c2\.nii\.gz: (damaged gzip|corrupt compressed)"):
        _evaluate(pred, ref, ds)


def test_uncompressed_and_recompressed_short_niftis_are_refused(tmp_path):
    import gzip

    nii = tmp_path / "x.nii"
    sitk.WriteImage(_image(_labels(0)), str(nii))
    assert image_integrity_problem(nii) is None
    full = nii.read_bytes()
    nii.write_bytes(full[:-50])
    assert "announces" in image_integrity_problem(nii)
    # a valid gzip stream around a short NIfTI (cut before compression): the size check
    gz = tmp_path / "y.nii.gz"
    gz.write_bytes(gzip.compress(full[:-50]))
    assert "announces" in image_integrity_problem(gz)
    with pytest.raises(Exception, match="cut off"):
        read_image(gz)
    gz.write_bytes(gzip.compress(full))
    assert image_integrity_problem(gz) is None
    # other formats are left to SimpleITK
    mha = tmp_path / "z.mha"
    sitk.WriteImage(_image(_labels(0)), str(mha))
    assert image_integrity_problem(mha) is None


def test_a_shifted_prediction_is_refused(folders):
    pred, ref, ds = folders
    seg = _labels(0)
    shifted = (ORIGIN_XYZ[0] + 50.0, *ORIGIN_XYZ[1:])
    sitk.WriteImage(_image(seg, origin=shifted), str(pred / "c0.nii.gz"))
    with pytest.raises(EvaluationError, match=r"c0: origin .*shifted"):
        _evaluate(pred, ref, ds)
    # within the stated tolerance (float32 storage): accepted
    nudged = (ORIGIN_XYZ[0] + 1e-6, *ORIGIN_XYZ[1:])
    sitk.WriteImage(_image(seg, origin=nudged), str(pred / "c0.nii.gz"))
    rows, _ = _evaluate(pred, ref, ds)
    assert all(r["dice"] == 1.0 for r in rows)


def test_x_flipped_labels_are_refused(folders):
    """The same physical labels stored x-flipped (array reversed, direction negated, origin
    moved to the other end): same world content, different voxel order."""
    pred, ref, ds = folders
    seg = _labels(1)
    nx = SHAPE[2]
    origin = (ORIGIN_XYZ[0] + (nx - 1) * SPACING_XYZ[0], *ORIGIN_XYZ[1:])
    flipped = _image(
        np.ascontiguousarray(seg[:, :, ::-1]),
        origin=origin,
        direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    sitk.WriteImage(flipped, str(pred / "c1.nii.gz"))
    with pytest.raises(EvaluationError, match=r"c1: (origin|direction) .*(shifted|flipped)"):
        _evaluate(pred, ref, ds)


def test_the_cli_exits_2_with_one_line_and_writes_nothing(folders, capsys):
    pred, ref, ds = folders
    f = pred / "c0.nii.gz"
    f.write_bytes(f.read_bytes()[:-40])
    code = cli_main(["evaluate", str(pred), str(ref), "--dataset-json", str(ds)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "c0.nii.gz" in errors[0] and "cut off" in errors[0]
    assert not any(p.suffix in (".csv", ".json") for p in pred.iterdir())


def test_outputs_are_never_written_among_the_labels(folders):
    pred, ref, ds = folders
    before = sorted(p.name for p in ref.iterdir())
    for out in (ref, ref / "scores"):
        with pytest.raises(EvaluationError, match="inside the reference folder"):
            evaluate_folders(pred, ref, ds, num_workers=1, progress=False, output_dir=out)
    assert sorted(p.name for p in ref.iterdir()) == before
