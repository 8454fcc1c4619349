"""Tests of the synthetic nnU-Net raw datasets (nnunet_pde.data.synthetic)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_pde.data import brats_like, fields, lits_like
from nnunet_pde.data.synthetic import (
    DATASET_KINDS,
    KINDS,
    case_identifiers,
    make_case,
    make_synthetic_dataset,
)

BRATS_SIZE = (32, 32, 32)
LITS_SIZE = (16, 40, 40)


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def _case_arrays(
    folder: Path, case_id: str, n_channels: int, split: str = "Tr"
) -> tuple[list, np.ndarray]:
    images = [
        _read(folder / f"images{split}" / f"{case_id}_{c:04d}.nii.gz")[0] for c in range(n_channels)
    ]
    label = _read(folder / f"labels{split}" / f"{case_id}.nii.gz")[0]
    return images, label


@pytest.fixture(scope="module")
def brats_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw_brats")
    return make_synthetic_dataset(
        "brats-like", root, 501, num_train=2, num_test=1, size=BRATS_SIZE, seed=3
    )


@pytest.fixture(scope="module")
def lits_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw_lits")
    return make_synthetic_dataset(
        "lits-like", root, 502, num_train=2, num_test=1, size=LITS_SIZE, seed=3
    )


# --- layout and nnU-Net compatibility ---------------------------------------------------------


def test_kinds_are_exported():
    assert DATASET_KINDS == ("brats-like", "lits-like")
    assert set(KINDS) == set(DATASET_KINDS)


def test_brats_layout_and_dataset_json(brats_dataset: Path):
    assert brats_dataset.name == "Dataset501_SyntheticBraTS"
    content = json.loads((brats_dataset / "dataset.json").read_text())
    # As written by nnU-Net's dataset_conversion/Dataset137_BraTS21.py.
    fixture = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": [3],
        },
        "regions_class_order": [1, 2, 3],
        "file_ending": ".nii.gz",
    }
    for key, value in fixture.items():
        assert content[key] == value, key
    assert content["numTraining"] == 2
    assert sorted(p.name for p in (brats_dataset / "imagesTr").iterdir()) == [
        f"brats_00{i}_000{c}.nii.gz" for i in range(2) for c in range(4)
    ]
    assert sorted(p.name for p in (brats_dataset / "labelsTs").iterdir()) == [
        "brats_test_000.nii.gz"
    ]
    assert len(list((brats_dataset / "imagesTs").iterdir())) == 4
    record = json.loads((brats_dataset / "synthetic.json").read_text())
    assert record["seed"] == 3 and set(record["cases"]) == {
        "brats_000",
        "brats_001",
        "brats_test_000",
    }


def test_lits_dataset_json(lits_dataset: Path):
    content = json.loads((lits_dataset / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "CT"}  # "CT" selects nnU-Net's CTNormalization
    assert content["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert "regions_class_order" not in content
    assert content["numTraining"] == 2 and content["file_ending"] == ".nii.gz"


@pytest.mark.parametrize("dataset", ["brats_dataset", "lits_dataset"])
def test_nnunet_verify_dataset_integrity_passes(dataset: str, request):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(request.getfixturevalue(dataset)), num_processes=1)


def test_nnunet_region_handling_accepts_brats_labels(brats_dataset: Path):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    content = json.loads((brats_dataset / "dataset.json").read_text())
    manager = LabelManager(content["labels"], regions_class_order=content["regions_class_order"])
    assert manager.has_regions
    assert [tuple(r) for r in manager.foreground_regions] == [(1, 2, 3), (2, 3), (3,)]


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,size", [("brats-like", BRATS_SIZE), ("lits-like", LITS_SIZE)])
def test_same_seed_same_arrays_other_seed_differs(kind: str, size):
    a_img, a_lab, a_par = make_case(kind, seed=7, split=0, index=1, size=size)
    b_img, b_lab, b_par = make_case(kind, seed=7, split=0, index=1, size=size)
    c_img, _, _ = make_case(kind, seed=8, split=0, index=1, size=size)
    d_img, _, _ = make_case(kind, seed=7, split=0, index=2, size=size)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab) and a_par == b_par
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_img, d_img)


def test_files_identical_for_same_seed_and_cases_independent_of_counts(
    tmp_path: Path, brats_dataset: Path
):
    again = make_synthetic_dataset(
        "brats-like", tmp_path, 501, num_train=1, num_test=0, size=BRATS_SIZE, seed=3
    )
    first = _case_arrays(brats_dataset, "brats_000", 4)
    second = _case_arrays(again, "brats_000", 4)
    for x, y in zip(first[0] + [first[1]], second[0] + [second[1]], strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    other = make_synthetic_dataset(
        "brats-like", tmp_path, 502, num_train=1, num_test=0, size=BRATS_SIZE, seed=4
    )
    assert not np.array_equal(first[0][0], _case_arrays(other, "brats_000", 4)[0][0])


def test_case_identifiers_do_not_collide():
    train, test = case_identifiers("lits-like", 3, 2)
    assert train == ["liver_000", "liver_001", "liver_002"] and test == [
        "liver_test_000",
        "liver_test_001",
    ]


# --- brats-like content -------------------------------------------------------------------------


def test_brats_labels_regions_and_spacing(brats_dataset: Path):
    for case_id, split in (("brats_000", "Tr"), ("brats_001", "Tr"), ("brats_test_000", "Ts")):
        images, label = _case_arrays(brats_dataset, case_id, 4, split)
        assert label.dtype == np.uint8 and label.shape == BRATS_SIZE
        assert set(np.unique(label)) == {
            0,
            1,
            2,
            3,
        }  # every sub-region, so every region is learnable
        for image in images:
            assert image.shape == BRATS_SIZE and image.dtype == np.int16 and image.min() >= 0
    _, spacing = _read(brats_dataset / "labelsTr" / "brats_000.nii.gz")
    assert spacing == pytest.approx((1.0, 1.0, 1.0))


def test_brats_tumour_size_and_nesting():
    shape, spacing = (48, 48, 48), (1.0, 1.0, 1.0)
    geometry = brats_like.Geometry(shape, spacing)
    for index in range(4):
        _, label, params = make_case("brats-like", seed=0, split=0, index=index, size=shape)
        tissue = brats_like.render_tissues(params, geometry)
        assert np.array_equal(brats_like.label_from_tissues(tissue), label)
        brain = np.count_nonzero(tissue >= brats_like.GM)
        whole = np.count_nonzero(label > 0)
        assert 0.03 < whole / brain < 0.25
        # Enhancing rim encloses the necrosis: necrosis never touches edema or healthy tissue.
        necrosis = label == 2
        grown = necrosis.copy()
        for axis in range(3):
            grown |= np.roll(necrosis, 1, axis) | np.roll(necrosis, -1, axis)
        assert set(np.unique(label[grown])) <= {2, 3}


@pytest.mark.parametrize("index", range(3))
def test_brats_channel_contrasts(index: int):
    shape = (48, 48, 48)
    images, label, params = make_case("brats-like", seed=1, split=0, index=index, size=shape)
    tissue = brats_like.render_tissues(params, brats_like.Geometry(shape, (1.0, 1.0, 1.0)))
    t1, t1ce, t2, flair = (img.astype(float) for img in images)

    def mean(image, code):
        return image[tissue == code].mean()

    assert mean(t1, brats_like.WM) > mean(t1, brats_like.GM) > mean(t1, brats_like.CSF)
    assert mean(t2, brats_like.CSF) > mean(t2, brats_like.GM) > mean(t2, brats_like.WM)
    assert mean(flair, brats_like.EDEMA) > 1.4 * mean(flair, brats_like.WM)
    assert mean(flair, brats_like.CSF) < mean(flair, brats_like.WM)
    assert mean(t1ce, brats_like.ENHANCING) > 1.15 * mean(t1ce, brats_like.WM)
    assert t1ce[label == 3].mean() > t1ce[label == 2].mean()  # bright rim, dark necrosis
    assert mean(t2, brats_like.EDEMA) > mean(t2, brats_like.WM)


def test_brats_noise_partial_volume_and_bias():
    shape = (48, 48, 48)
    geometry = brats_like.Geometry(shape, (1.0, 1.0, 1.0))
    noisy, _, params = make_case("brats-like", seed=2, split=0, index=0, size=shape, noise=1.25)
    clean, _, _ = make_case("brats-like", seed=2, split=0, index=0, size=shape, noise=0.0)
    tissue = brats_like.render_tissues(params, geometry)
    wm = tissue == brats_like.WM
    # Noise: the difference to the noise-free rendering has the requested size in WM
    # (noise=1 is 4% of the white-matter signal, so 1.25 is 5%).
    residual = (noisy[0].astype(float) - clean[0])[wm]
    assert 0.7 < residual.std() / (0.05 * clean[0][wm].mean()) < 1.4
    # Partial volume: background voxels touching the head get part of its signal, far ones none.
    head = tissue > 0
    rim = ~head & ndimage.binary_dilation(head)
    far = ~ndimage.binary_dilation(head, iterations=4)
    assert clean[0][rim].mean() > 20 and clean[0][far].max() == 0
    # Bias: a smooth multiplicative field, different per channel.
    unbiased_params = copy.deepcopy(params)
    unbiased_params["head"]["bias_coefficients"] = [[0.0] * len(fields.BIAS_EXPONENTS)] * 4
    unbiased = brats_like.render_images(unbiased_params, tissue, geometry, 0.0).astype(float)
    ratio = clean[:, wm] / np.maximum(unbiased[:, wm], 1.0)
    expected = [
        fields.polynomial_bias_field(shape, c)[wm] for c in params["head"]["bias_coefficients"]
    ]
    for c in range(4):
        assert ratio[c].std() > 0.02
        assert np.corrcoef(ratio[c], expected[c])[0, 1] > 0.95
    assert not np.allclose(expected[0], expected[1])


# --- lits-like content --------------------------------------------------------------------------


def test_lits_labels_spacing_and_hounsfield(lits_dataset: Path):
    for case_id, split in (("liver_000", "Tr"), ("liver_001", "Tr"), ("liver_test_000", "Ts")):
        (image,), label = _case_arrays(lits_dataset, case_id, 1, split)
        assert set(np.unique(label)) == {0, 1, 2}
        assert image.dtype == np.int16 and image.shape == LITS_SIZE
        assert image.min() >= -1024 and image.max() <= 3071
        assert image[0, 0, 0] < -900  # air
    _, spacing = _read(lits_dataset / "imagesTr" / "liver_000_0000.nii.gz")
    _, label_spacing = _read(lits_dataset / "labelsTr" / "liver_000.nii.gz")
    # SimpleITK reports (x, y, z); thick slices along z.
    assert spacing == pytest.approx((0.8, 0.8, 4.0)) and label_spacing == pytest.approx(spacing)


def test_lits_liver_and_tumour_attenuation():
    shape = (24, 64, 64)
    for index in range(3):
        (image,), label, params = make_case("lits-like", seed=5, split=0, index=index, size=shape)
        image = image.astype(float)
        liver, tumour = image[label == 1], image[label == 2]
        assert 1 <= len(params["tumours"]) <= 3
        assert 40 < np.median(liver) < 90
        assert 5 < np.median(tumour) < 55
        assert np.median(tumour) < np.median(liver) - 10  # hypodense
        body = image > -500
        assert np.count_nonzero(image[body] > 400) > 0  # bone
        assert np.count_nonzero((image[body] > -150) & (image[body] < -50)) > 0  # fat


def test_lits_noise_is_in_hounsfield_units():
    shape = (16, 48, 48)
    noisy, label, _ = make_case("lits-like", seed=4, split=1, index=0, size=shape, noise=2.0)
    clean, _, _ = make_case("lits-like", seed=4, split=1, index=0, size=shape, noise=0.0)
    residual = noisy[0].astype(float) - clean[0]
    inside = (label > 0) & (clean[0] > -900)
    assert 24 < residual[inside].std() < 36  # noise=1 is 15 HU


def test_custom_spacing_and_size_are_written(tmp_path: Path):
    folder = make_synthetic_dataset(
        "lits-like",
        tmp_path,
        7,
        num_train=1,
        num_test=0,
        size=(16, 32, 24),
        spacing=(2.5, 0.7, 0.7),
    )
    image, spacing = _read(folder / "imagesTr" / "liver_000_0000.nii.gz")
    assert image.shape == (16, 32, 24) and spacing == pytest.approx((0.7, 0.7, 2.5))
    assert list((folder / "imagesTs").iterdir()) == []


# --- refusing, overwriting, argument checks -------------------------------------------------------


def _small(**kwargs) -> dict:
    args = {"num_train": 1, "num_test": 0, "size": 16}
    args.update(kwargs)
    return args


def test_refuses_existing_folder_and_overwrite_replaces_it(tmp_path: Path):
    folder = make_synthetic_dataset("brats-like", tmp_path, 10, **_small(seed=1))
    marker = folder / "stale.txt"
    marker.write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset("brats-like", tmp_path, 10, **_small(seed=2))
    assert marker.exists()
    # --overwrite replaces only what make-dataset wrote: a file of the user's is in the way
    with pytest.raises(ValueError, match="stale.txt"):
        make_synthetic_dataset("brats-like", tmp_path, 10, overwrite=True, **_small(seed=2))
    assert marker.read_text() == "old"
    marker.unlink()
    before = _read(folder / "imagesTr" / "brats_000_0000.nii.gz")[0]
    again = make_synthetic_dataset("brats-like", tmp_path, 10, overwrite=True, **_small(seed=2))
    assert again == folder
    assert not np.array_equal(before, _read(folder / "imagesTr" / "brats_000_0000.nii.gz")[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Dataset010_SyntheticBraTS"
    ]  # no tmp left


def test_refuses_duplicate_id_even_with_overwrite(tmp_path: Path):
    other = tmp_path / "Dataset011_SomethingElse"
    other.mkdir()
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="Dataset011_SomethingElse"):
            make_synthetic_dataset("lits-like", tmp_path, 11, overwrite=overwrite, **_small())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset011_SomethingElse"]
    # A different id next to it is fine, and so is an id that merely shares a prefix.
    make_synthetic_dataset("lits-like", tmp_path, 111, **_small())


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"kind": "kits-like"}, "KIND"),
        ({"dataset_id": 0}, "--id"),
        ({"dataset_id": 1000}, "--id"),
        ({"dataset_id": "5"}, "--id"),
        ({"name": "bad/name"}, "--name"),
        ({"name": ""}, "--name"),
        ({"num_train": 0}, "--num-train"),
        ({"num_test": -1}, "--num-test"),
        ({"size": 15}, "--size"),
        ({"size": (32, 32)}, "--size"),
        ({"size": (32, 8, 32)}, "--size"),
        ({"noise": -0.1}, "--noise"),
        ({"noise": float("nan")}, "--noise"),
        ({"seed": -1}, "--seed"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"progress": "yes"}, "progress"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path: Path, kwargs: dict, argument: str):
    root = tmp_path / "raw"
    args = {"kind": "brats-like", "raw_root": root, "dataset_id": 12, **_small()}
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        make_synthetic_dataset(**args)
    assert not root.exists()


def test_failure_leaves_no_partial_dataset(tmp_path: Path, monkeypatch):
    calls = []

    def progress(message: str) -> None:
        calls.append(message)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset("brats-like", tmp_path, 13, progress=progress, **_small(num_train=3))
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_dataset(tmp_path: Path):
    folder = make_synthetic_dataset("brats-like", tmp_path, 14, **_small())

    def progress(message: str) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        make_synthetic_dataset(
            "brats-like", tmp_path, 14, overwrite=True, progress=progress, **_small(seed=9)
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    assert (folder / "dataset.json").exists()


def test_progress_called_once_per_case(tmp_path: Path):
    messages: list[str] = []
    make_synthetic_dataset(
        "lits-like", tmp_path, 15, progress=messages.append, **_small(num_train=2, num_test=1)
    )
    assert len(messages) == 3 and "liver_test_000" in messages[-1]


# --- helpers ------------------------------------------------------------------------------------


def test_smooth_noise_has_unit_variance_and_is_smooth():
    rng = np.random.default_rng(0)
    axes = [np.arange(64.0)] * 3
    field = fields.smooth_noise(rng, axes, 8.0)
    assert abs(field.mean()) < 0.3 and 0.6 < field.std() < 1.4
    assert np.abs(np.diff(field, axis=0)).mean() < 0.2 * field.std()


def test_lits_and_brats_default_sizes():
    assert KINDS["brats-like"].default_size == (64, 64, 64)
    assert KINDS["lits-like"].default_size == (32, 64, 64)
    assert KINDS["lits-like"].default_spacing == lits_like.DEFAULT_SPACING
