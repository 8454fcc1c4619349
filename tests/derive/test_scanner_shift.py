"""Scanner shift: ``nnunet-pde derive shifted-images`` on tiny synthetic raw datasets."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_pde.cli.shifted_images import register_cli
from nnunet_pde.data.synthetic import make_synthetic_dataset
from nnunet_pde.derive.scanner_shift import (
    LEVELS,
    MANIFEST,
    PARAMETERS_FILE,
    PERTURBATIONS,
    ShiftError,
    apply_recorded,
    derive_shifted_images,
    level_folder,
    read_manifest,
)
from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.staging import OUTPUT_MARKER

SIZE = 24
FIXTURE_LEVELS = (1, 3, 5)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".nii.gz"))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    make_synthetic_dataset("brats-like", root, 501, num_train=1, num_test=2, size=SIZE)
    make_synthetic_dataset("lits-like", root, 502, num_train=1, num_test=2, size=SIZE)
    return root


@pytest.fixture(scope="module")
def brats(raw) -> Path:
    return raw / "Dataset501_SyntheticBraTS"


@pytest.fixture(scope="module")
def lits(raw) -> Path:
    return raw / "Dataset502_SyntheticLiTS"


@pytest.fixture(scope="module")
def shifted(raw, brats, lits, tmp_path_factory) -> dict[str, dict]:
    """Every perturbation at levels 1, 3, 5 of both datasets (seed 0), and source hashes."""
    out = {}
    for key, dataset in (("brats", brats), ("lits", lits)):
        before = _hashes(dataset)
        folder = tmp_path_factory.mktemp("shifted") / key
        messages: list[str] = []
        derive_shifted_images(
            dataset, folder, levels=FIXTURE_LEVELS, seed=0, progress=messages.append
        )
        out[key] = {
            "dataset": dataset,
            "output": folder,
            "before": before,
            "messages": messages,
        }
    return out


@pytest.fixture
def zero_background_dataset(tmp_path) -> Path:
    """One case, one float32 MR channel: a noisy ball in an exact-zero background."""
    folder = tmp_path / "Dataset777_Ball"
    (folder / "imagesTs").mkdir(parents=True)
    (folder / "labelsTs").mkdir()
    z, y, x = np.mgrid[:20, :22, :24]
    ball = (z - 10) ** 2 + (y - 11) ** 2 + (x - 12) ** 2 <= 7**2
    rng = np.random.default_rng(1)
    image = np.where(ball, 300 + 40 * rng.standard_normal(ball.shape), 0).astype(np.float32)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing((0.9, 1.1, 2.5))
    itk.SetOrigin((3.0, -7.0, 11.0))
    sitk.WriteImage(itk, str(folder / "imagesTs" / "ball_0000.nii.gz"))
    label = sitk.GetImageFromArray(ball.astype(np.uint8))
    label.CopyInformation(itk)
    sitk.WriteImage(label, str(folder / "labelsTs" / "ball.nii.gz"))
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1"},
                "labels": {"background": 0, "ball": 1},
                "numTraining": 0,
                "file_ending": ".nii.gz",
            }
        )
    )
    return folder


# ------------------------------------------------------------------ the table


def test_covered_by_nnunet_flags_are_exactly_as_specified():
    assert {n: s.covered_by_nnunet for n, s in PERTURBATIONS.items()} == {
        "bias_field": False,
        "noise": True,
        "ghosting": False,
        "motion": False,
        "spike": False,
        "blur": True,
        "gamma": True,
        "anisotropy": True,
    }
    for spec in PERTURBATIONS.values():
        assert (spec.nnunet_augmentation is not None) == spec.covered_by_nnunet
        assert spec.description and "\n" not in spec.description


#: The number that grows with the level (ranges: both ends must grow).
_STRENGTH = {
    "bias_field": lambda s: [s["coefficients"]],
    "noise": lambda s: s["std_fraction"],
    "ghosting": lambda s: s["intensity"],
    "motion": lambda s: [s["degrees"], s["translation_mm"]],
    "spike": lambda s: s["intensity"],
    "blur": lambda s: s["std_mm"],
    "gamma": lambda s: s["log_gamma_magnitude"],
    "anisotropy": lambda s: s["downsampling"],
}


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_five_levels_of_increasing_strength(name):
    spec = PERTURBATIONS[name]
    assert len(spec.levels) == len(LEVELS) == 5
    strengths = np.array([_STRENGTH[name](spec.settings(k)) for k in LEVELS], dtype=float)
    assert (np.diff(strengths, axis=0) > 0).all(), strengths
    assert (strengths > 0).all()
    assert spec.summary(1) != spec.summary(5)
    spec.settings(1)["mutated"] = True  # a copy: the table itself is unchanged
    assert "mutated" not in spec.levels[0]


# ------------------------------------------------------------------ outputs


@pytest.mark.parametrize("key", ["brats", "lits"])
def test_every_file_written_with_the_source_geometry_and_pixel_type(shifted, key):
    run = shifted[key]
    sources = _images(run["dataset"] / "imagesTs")
    for name in PERTURBATIONS:
        for level in FIXTURE_LEVELS:
            folder = level_folder(run["output"], name, level)
            assert [p.name for p in _images(folder)] == [p.name for p in sources]
            assert (folder / PARAMETERS_FILE).is_file()
            for src in sources:
                a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(folder / src.name))
                assert b.GetSize() == a.GetSize()
                assert b.GetSpacing() == a.GetSpacing()
                assert b.GetOrigin() == a.GetOrigin()
                assert b.GetDirection() == a.GetDirection()
                assert b.GetPixelID() == a.GetPixelID()
                assert not np.array_equal(_array(src), sitk.GetArrayFromImage(b)), (name, level)
    assert sorted(p.name for p in run["output"].iterdir()) == sorted(
        [*PERTURBATIONS, MANIFEST, OUTPUT_MARKER]
    )
    assert not [p for p in run["output"].parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("key", ["brats", "lits"])
def test_severity_grows_with_the_level(shifted, key):
    """Mean absolute difference from the clean image (in units of its std), averaged over
    every case and channel, increases with the level for every perturbation."""
    run = shifted[key]
    sources = _images(run["dataset"] / "imagesTs")
    clean = {p.name: _array(p).astype(np.float64) for p in sources}
    for name in PERTURBATIONS:
        mad = []
        for level in FIXTURE_LEVELS:
            folder = level_folder(run["output"], name, level)
            diffs = [np.abs(_array(folder / f) - x).mean() / x.std() for f, x in clean.items()]
            mad.append(float(np.mean(diffs)))
        assert mad[0] > 0.005 and mad[0] < mad[-1], (name, mad)
        if key == "lits" and name == "motion":
            # 2 single-channel CT images with a 19 mm in-plane field of view: moved copies are
            # fully decorrelated from 4 mm on, so levels 3 and 5 differ by chance only
            continue
        assert mad == sorted(set(mad)), (name, mad)


def test_anisotropy_resamples_back_to_the_input_grid_without_empty_end_slices(shifted):
    run = shifted["lits"]  # 4 mm slices on axis z: the slice axis
    params = json.loads(
        (level_folder(run["output"], "anisotropy", 5) / PARAMETERS_FILE).read_text()
    )
    for case, channels in params["cases"].items():
        entry = channels["0000"]
        steps = [s["name"] for s in entry["applied"]]
        assert steps == ["Pad", "Resample", "Resample", "Crop"]
        assert entry["random_transforms"][1]["arguments"]["axes"] == [2]  # TorchIO z
        downsampled = entry["applied"][1]["arguments"]["target"]
        assert downsampled[:2] == pytest.approx(entry["image"]["spacing_xyz"][:2])
        assert 5 * 4.0 <= downsampled[2] <= 6 * 4.0
        x = _array(run["dataset"] / "imagesTs" / entry["file"])
        y = _array(level_folder(run["output"], "anisotropy", 5) / entry["file"])
        assert y.shape == x.shape
        # edge slices are covered by the nearest thick slice, not filled with air
        for k in (0, -1):
            assert np.abs(y[k].astype(float) - x[k]).mean() < 0.5 * x.std(), case


def test_channels_of_a_case_get_independent_parameters(shifted):
    params = json.loads(
        (level_folder(shifted["brats"]["output"], "noise", 3) / PARAMETERS_FILE).read_text()
    )
    for channels in params["cases"].values():
        seeds = {e["torch_seed"] for e in channels.values()}
        noise_seeds = {e["applied"][0]["arguments"]["seed"] for e in channels.values()}
        assert len(seeds) == len(noise_seeds) == 4


def test_levels_share_the_random_draw_and_differ_only_in_strength(shifted):
    out = shifted["brats"]["output"]
    entries = [
        json.loads((level_folder(out, "ghosting", k) / PARAMETERS_FILE).read_text())["cases"]
        for k in FIXTURE_LEVELS
    ]
    case = next(iter(entries[0]))
    applied = [e[case]["0000"]["applied"][0]["arguments"] for e in entries]
    assert len({(a["axis"], a["num_ghosts"]) for a in applied}) == 1
    assert applied[0]["intensity"] < applied[1]["intensity"] < applied[2]["intensity"]


@pytest.mark.parametrize("key", ["brats", "lits"])
def test_apply_recorded_reproduces_every_written_image(shifted, key):
    run = shifted[key]
    for name in PERTURBATIONS:
        for level in FIXTURE_LEVELS:
            folder = level_folder(run["output"], name, level)
            params = json.loads((folder / PARAMETERS_FILE).read_text())
            assert params["perturbation"] == name and params["level"] == level
            assert params["settings"] == PERTURBATIONS[name].settings(level)
            case = sorted(params["cases"])[0]  # one case (all channels) per level: fast
            for channel, entry in params["cases"][case].items():
                source = run["dataset"] / "imagesTs" / entry["file"]
                written = _array(folder / entry["file"])
                again = apply_recorded(source, entry)
                assert again.dtype == np.float64
                # integer sources: the file is the rounded, clipped float result
                assert np.abs(again - written).max() <= 0.5 + 1e-6, (name, level, channel)
                exact = apply_recorded(_array(source), entry, cast=True)
                assert exact.dtype == written.dtype
                np.testing.assert_array_equal(exact, written)


def test_apply_recorded_refuses_an_entry_of_another_image(shifted):
    run = shifted["brats"]
    params = json.loads((level_folder(run["output"], "blur", 1) / PARAMETERS_FILE).read_text())
    entry = next(iter(params["cases"].values()))["0000"]
    with pytest.raises(ShiftError, match="shape"):
        apply_recorded(np.zeros((SIZE, SIZE, SIZE + 1)), entry)
    with pytest.raises(ShiftError, match="parameters.json entry"):
        apply_recorded(np.zeros((SIZE,) * 3), {"perturbation": "blur"})


def test_same_seed_gives_identical_files_in_any_selection_and_order(shifted, brats, tmp_path):
    run = shifted["brats"]
    again = tmp_path / "again"
    # another selection and order of perturbations and levels: the files must not change
    derive_shifted_images(brats, again, perturbations=["spike", "noise"], levels=[5, 3], seed=0)
    for name in ("noise", "spike"):
        for level in (3, 5):
            a, b = level_folder(run["output"], name, level), level_folder(again, name, level)
            assert _hashes(a) == _hashes(b)


def test_parallel_workers_write_the_same_files(shifted, brats, tmp_path):
    parallel = tmp_path / "parallel"
    derive_shifted_images(brats, parallel, perturbations="gamma", levels=[3], workers=2)
    a, b = level_folder(shifted["brats"]["output"], "gamma", 3), level_folder(parallel, "gamma", 3)
    assert _hashes(a) == _hashes(b)


def test_different_seed_gives_different_images(shifted, brats, tmp_path):
    other = tmp_path / "other"
    derive_shifted_images(brats, other, levels=[3], seed=1)
    for name in PERTURBATIONS:
        a = level_folder(shifted["brats"]["output"], name, 3)
        b = level_folder(other, name, 3)
        differ = [not np.array_equal(_array(p), _array(b / p.name)) for p in _images(a)]
        assert all(differ), name


def test_background_stays_zero_and_float_images_stay_float(zero_background_dataset, tmp_path):
    out = tmp_path / "ball"
    derive_shifted_images(zero_background_dataset, out, levels=[5], seed=0)
    x = _array(zero_background_dataset / "imagesTs" / "ball_0000.nii.gz")
    background = x == 0
    for name in PERTURBATIONS:
        folder = level_folder(out, name, 5)
        y = _array(folder / "ball_0000.nii.gz")
        assert y.dtype == np.float32
        assert (y[background] == 0).all(), name
        assert not np.array_equal(y[~background], x[~background]), name
        entry = json.loads((folder / PARAMETERS_FILE).read_text())["cases"]["ball"]["0000"]
        assert entry["restore_background"] is True
        assert entry["image"]["background_voxels"] == int(background.sum())
        np.testing.assert_array_equal(apply_recorded(x, entry, cast=True), y)
    noise = json.loads((level_folder(out, "noise", 5) / PARAMETERS_FILE).read_text())
    entry = noise["cases"]["ball"]["0000"]
    body_std = float(x[~background].std())
    std = entry["applied"][0]["arguments"]["std"]
    assert 0.4 * body_std <= std <= 0.5 * body_std  # relative to the body, not the background


def test_ct_noise_is_relative_to_the_image_and_air_is_not_restored(shifted):
    run = shifted["lits"]
    params = json.loads((level_folder(run["output"], "noise", 1) / PARAMETERS_FILE).read_text())
    for channels in params["cases"].values():
        entry = channels["0000"]
        x = _array(run["dataset"] / "imagesTs" / entry["file"]).astype(np.float64)
        assert entry["restore_background"] is False  # minimum -1024 HU: no zero background
        assert entry["intensity_mapping"]["offset"] == x.min()
        assert entry["image"]["scale"] == pytest.approx(x.std())
        std = entry["applied"][0]["arguments"]["std"]
        assert 0.03 * x.std() <= std <= 0.05 * x.std()


# ------------------------------------------------------------------ manifest


def test_manifest_records_source_seed_levels_and_settings(shifted):
    run = shifted["brats"]
    manifest = read_manifest(run["output"])
    assert json.loads((run["output"] / MANIFEST).read_text()) == manifest
    dataset = run["dataset"].resolve()
    assert manifest["kind"] == "shifted-images"
    assert manifest["source"] == {
        "dataset": "Dataset501_SyntheticBraTS",
        "images": str(dataset / "imagesTs"),
        "labels": str(dataset / "labelsTs"),
        "file_ending": ".nii.gz",
        "dataset_json": str(dataset / "dataset.json"),
    }
    assert manifest["seed"] == 0
    assert manifest["levels"] == list(FIXTURE_LEVELS)
    assert manifest["cases"] == ["brats_test_000", "brats_test_001"]
    assert manifest["channels"] == ["0000", "0001", "0002", "0003"]
    assert list(manifest["perturbations"]) == list(PERTURBATIONS)
    for name, entry in manifest["perturbations"].items():
        spec = PERTURBATIONS[name]
        assert entry["covered_by_nnunet"] is spec.covered_by_nnunet
        assert entry["description"] == spec.description
        assert entry["levels"] == {str(k): spec.settings(k) for k in FIXTURE_LEVELS}
        for level, rel in manifest["folders"][name].items():
            assert run["output"] / rel == level_folder(run["output"], name, int(level))
    assert manifest["created_by"].startswith("nnunet-pde ")
    assert len(run["messages"]) == 8 * len(PERTURBATIONS) * len(FIXTURE_LEVELS)


def test_manifest_labels_are_null_without_labels_ts(zero_background_dataset, tmp_path):
    shutil.rmtree(zero_background_dataset / "labelsTs")
    out = derive_shifted_images(
        zero_background_dataset, tmp_path / "o", perturbations="gamma", levels=[1]
    )
    assert read_manifest(out)["source"]["labels"] is None


def test_read_manifest_explains_a_missing_manifest(tmp_path):
    with pytest.raises(ShiftError, match="nnunet_pde_shift.json"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------ safety


@pytest.mark.parametrize("key", ["brats", "lits"])
def test_source_dataset_is_unchanged(shifted, key):
    run = shifted[key]
    assert _hashes(run["dataset"]) == run["before"]


def test_existing_output_is_refused_without_overwrite(brats, tmp_path):
    out = tmp_path / "out"
    derive_shifted_images(brats, out, perturbations=["noise"], levels=[1], seed=0)
    first = _hashes(out)
    with pytest.raises(NnunetPdeError, match="--overwrite"):
        derive_shifted_images(brats, out, perturbations=["noise"], levels=[1], seed=5)
    assert _hashes(out) == first
    # anything added to the folder (e.g. predictions/) makes --overwrite refuse
    (out / "predictions").mkdir()
    (out / "predictions" / "case.nii.gz").write_bytes(b"mine")
    with pytest.raises(NnunetPdeError, match="predictions/case.nii.gz"):
        derive_shifted_images(brats, out, perturbations=["blur"], levels=[2], overwrite=True)
    assert (out / "predictions" / "case.nii.gz").read_bytes() == b"mine"
    shutil.rmtree(out / "predictions")
    derive_shifted_images(brats, out, perturbations=["blur"], levels=[2], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(["blur", MANIFEST, OUTPUT_MARKER])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_never_replaces_a_folder_that_is_not_ours(brats, tmp_path):
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    with pytest.raises(NnunetPdeError, match="was not written by"):
        derive_shifted_images(brats, foreign, perturbations=["noise"], levels=[1], overwrite=True)
    assert (foreign / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in foreign.iterdir()) == ["important.txt"]


def _without_images_ts(tmp_path: Path, brats: Path) -> Path:
    folder = tmp_path / "Dataset600_NoTest"
    folder.mkdir()
    shutil.copy(brats / "dataset.json", folder / "dataset.json")
    return folder


def _missing_channel(tmp_path: Path, brats: Path) -> Path:
    folder = tmp_path / "Dataset601_MissingChannel"
    shutil.copytree(brats, folder)
    next((folder / "imagesTs").glob("*_0002.nii.gz")).unlink()
    return folder


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"perturbations": ["noise", "earthquake"]}, "unknown perturbation"),
        ({"perturbations": []}, "no perturbation"),
        ({"levels": [0]}, "1 to 5"),
        ({"levels": [1, 6]}, "1 to 5"),
        ({"levels": ["2"]}, "1 to 5"),
        ({"levels": []}, "no severity level"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"source": "no_images_ts"}, "imagesTs"),
        ({"source": "missing_channel"}, "channel"),
        ({"source": "nowhere"}, "does not exist"),
        ({"source": "999"}, "no dataset with id 999"),
        ({"output": "inside_source"}, "inside the source"),
    ],
)
def test_invalid_requests_fail_before_anything_is_written(raw, brats, tmp_path, kwargs, message):
    kwargs = dict(kwargs)
    work = tmp_path / "work"
    work.mkdir()
    source: object = brats
    output = work / "out"
    special = kwargs.pop("source", None)
    if special == "no_images_ts":
        source = _without_images_ts(tmp_path, brats)
    elif special == "missing_channel":
        source = _missing_channel(tmp_path, brats)
    elif special == "nowhere":
        source = tmp_path / "Dataset123_Nowhere"
    elif special is not None:
        source = special
    if kwargs.pop("output", None) == "inside_source":
        output = brats / "shifted"
    before = _hashes(brats)
    with pytest.raises(ShiftError, match=message):
        derive_shifted_images(source, output, raw_root=raw, **kwargs)
    assert not output.exists()
    assert list(work.iterdir()) == []
    assert _hashes(brats) == before


def test_source_by_id_or_name_in_raw_root_or_environment(raw, tmp_path, monkeypatch):
    out = derive_shifted_images(
        "502", tmp_path / "a", perturbations="gamma", levels=[1], raw_root=raw
    )
    assert read_manifest(out)["source"]["dataset"] == "Dataset502_SyntheticLiTS"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    out = derive_shifted_images(
        "Dataset502_SyntheticLiTS", tmp_path / "b", perturbations="gamma", levels=[1]
    )
    assert _hashes(level_folder(out, "gamma", 1)) == _hashes(
        level_folder(tmp_path / "a", "gamma", 1)
    )
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(ShiftError, match="nnUNet_raw"):
        derive_shifted_images(502, tmp_path / "c", perturbations="gamma", levels=[1])


# ------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-pde derive")
    sub = parser.add_subparsers(dest="kind", required=True)
    register_cli(sub)
    return parser


def test_cli_list_prints_the_table(capsys):
    args = _parser().parse_args(["shifted-images", "--list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name, spec in PERTURBATIONS.items():
        assert name in out
        assert spec.summary(5) in out
    assert out.count("NOT covered") == 4
    assert out.count("; covered by nnU-Net augmentation (") == 4


def test_cli_writes_and_prints_the_next_commands(brats, tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parser().parse_args(
        [
            "shifted-images",
            str(brats),
            "--output",
            str(out),
            "--perturbations",
            "noise",
            "motion",
            "--levels",
            "2",
            "4",
            "--seed",
            "3",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    stdout = capsys.readouterr().out
    assert "Wrote 32 images" in stdout
    assert "nnUNetv2_predict -i" in stdout and "-d 501" in stdout
    assert "nnunet-pde benchmark robustness scanner-shift" in stdout
    manifest = read_manifest(out)
    assert manifest["seed"] == 3 and manifest["levels"] == [2, 4]
    assert list(manifest["perturbations"]) == ["noise", "motion"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["SRC", "--output", "OUT", "--perturbations", "earthquake"], "unknown perturbation"),
        (["SRC", "--output", "OUT", "--levels", "7"], "1 to 5"),
        (["SRC"], "--output"),
        (["--output", "OUT"], "SOURCE"),
    ],
)
def test_cli_errors_exit_2_with_a_message(brats, tmp_path, capsys, argv, message):
    argv = [str(brats) if a == "SRC" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    args = _parser().parse_args(["shifted-images", *argv])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_existing_output(brats, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("")
    args = _parser().parse_args(
        ["shifted-images", str(brats), "--output", str(out), "--no-progress"]
    )
    assert args.func(args) == 2
    assert "--overwrite" in capsys.readouterr().err
