"""Noisy-label datasets: ``nnunet-pde derive noisy-labels`` (nnunet_pde.derive.noisy_labels)."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_pde.cli.noisy_labels import register_cli
from nnunet_pde.data import lits_like
from nnunet_pde.data.synthetic import make_synthetic_dataset
from nnunet_pde.derive.noisy_labels import (
    CLEAN_LABELS_DIR,
    DERIVED_JSON,
    MODES,
    body_mask,
    derive_noisy_labels,
    jitter_field,
    morph_mask,
    read_derived_info,
)

SPACING = (2.0, 1.0, 1.0)  # mm, numpy order (z, y, x)
SHAPE = (24, 40, 40)
ORIGIN = (-20.0, 5.0, 12.5)  # SimpleITK order (x, y, z)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
LABEL_JSON = {"background": 0, "liver": 1, "tumor": 2}
BRATS_REGIONS = ("whole tumor", "tumor core", "enhancing tumor")


# ------------------------------------------------------------------------------ helpers


def _grid_mm(shape=SHAPE, spacing=SPACING) -> list[np.ndarray]:
    return [
        (np.arange(n, dtype=np.float64) * h).reshape([-1 if a == i else 1 for a in range(3)])
        for i, (n, h) in enumerate(zip(shape, spacing, strict=True))
    ]


def ball(centre_mm, radius_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    g = _grid_mm(shape, spacing)
    return sum((gi - c) ** 2 for gi, c in zip(g, centre_mm, strict=True)) <= radius_mm**2


def centre_mm(shape=SHAPE, spacing=SPACING, offset=(0.0, 0.0, 0.0)) -> tuple[float, ...]:
    return tuple((n - 1) * h / 2 + o for n, h, o in zip(shape, spacing, offset, strict=True))


def _write(array: np.ndarray, path: Path, spacing=SPACING) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, str(path), useCompression=True)


def write_dataset(
    root: Path,
    dataset_id: int,
    name: str,
    labels: dict,
    cases: dict[str, np.ndarray],
    images: dict[str, np.ndarray] | None = None,
    regions_class_order: list[int] | None = None,
    spacing=SPACING,
) -> Path:
    """A raw dataset with one channel; the image is 100 * label + 50 inside a body if absent."""
    folder = root / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for case_id, seg in cases.items():
        image = images[case_id] if images else (100 * seg + 50).astype(np.int16)
        _write(image, folder / "imagesTr" / f"{case_id}_0000.nii.gz", spacing)
        _write(seg, folder / "labelsTr" / f"{case_id}.nii.gz", spacing)
    first = next(iter(cases.values()))
    _write((100 * first).astype(np.int16), folder / "imagesTs" / "test_000_0000.nii.gz", spacing)
    _write(first, folder / "labelsTs" / "test_000.nii.gz", spacing)
    content = {"channel_names": {"0": "CT"}, "labels": labels}
    if regions_class_order is not None:
        content["regions_class_order"] = regions_class_order
    content.update({"numTraining": len(cases), "file_ending": ".nii.gz", "name": name})
    (folder / "dataset.json").write_text(json.dumps(content, indent=4))
    return folder


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def noisy(folder: Path, case_id: str) -> np.ndarray:
    return read(folder / "labelsTr" / f"{case_id}.nii.gz")


def clean(folder: Path, case_id: str) -> np.ndarray:
    return read(folder / CLEAN_LABELS_DIR / f"{case_id}.nii.gz")


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hausdorff_mm(a: np.ndarray, b: np.ndarray, spacing=SPACING) -> float:
    da = ndimage.distance_transform_edt(~b, sampling=spacing)[a].max()
    db = ndimage.distance_transform_edt(~a, sampling=spacing)[b].max()
    return float(max(da, db))


def brats_regions(seg: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "whole tumor": np.isin(seg, (1, 2, 3)),
        "tumor core": np.isin(seg, (2, 3)),
        "enhancing tumor": seg == 3,
    }


VOXEL_DIAGONAL = math.sqrt(sum(h * h for h in SPACING))
VOXEL_VOLUME = math.prod(SPACING)


@pytest.fixture
def sphere_dataset(tmp_path) -> Path:
    """Three cases, each one ball of label 1 with radius 11-12 mm, off-grid centres."""
    cases = {}
    for i, (r, off) in enumerate([(11.0, (0.3, -0.4, 0.2)), (12.0, (-0.7, 0.25, 0.45))] * 2):
        cases[f"case_{i:03d}"] = ball(centre_mm(offset=off), r).astype(np.uint8)
    return write_dataset(tmp_path, 501, "Spheres", {"background": 0, "organ": 1}, cases)


@pytest.fixture(scope="module")
def brats_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw_brats")
    return make_synthetic_dataset("brats-like", root, 501, num_train=3, num_test=1, size=32)


@pytest.fixture(scope="module")
def lits_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw_lits")
    return make_synthetic_dataset(
        "lits-like", root, 502, num_train=2, num_test=1, size=(16, 40, 40), seed=1
    )


# ------------------------------------------------------------------------------ erode / dilate


@pytest.mark.parametrize("radius", [10.0, 12.5])
@pytest.mark.parametrize("k", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("sign", [-1, 1])
def test_morph_mask_moves_a_sphere_boundary_by_k_mm_on_anisotropic_spacing(radius, k, sign):
    mask = ball(centre_mm(offset=(0.37, -0.21, 0.44)), radius)
    out = morph_mask(mask, SPACING, sign * k)
    expected = 4 / 3 * math.pi * (radius + sign * k) ** 3
    assert out.sum() * VOXEL_VOLUME == pytest.approx(expected, rel=0.06)
    assert (out <= mask).all() if sign < 0 else (out >= mask).all()


def test_morph_mask_keeps_structures_cut_by_the_field_of_view():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, :, :10] = True  # a slab touching the image border
    out = morph_mask(mask, SPACING, -2.0)
    assert out[:, :, :8].all() and not out[:, :, 8:].any()
    assert (morph_mask(np.ones(SHAPE, bool), SPACING, -3.0)).all()
    assert not morph_mask(np.zeros(SHAPE, bool), SPACING, 3.0).any()


def test_morph_mask_and_jitter_work_on_2d_images_stored_as_3d():
    spacing = (3.0, 0.8, 0.8)
    disc = ball(centre_mm((1, 40, 40), spacing, (0.0, 0.3, -0.2)), 10.0, (1, 40, 40), spacing)
    for d in (-2.0, 2.0):
        area = morph_mask(disc, spacing, d).sum() * 0.64
        assert area == pytest.approx(math.pi * (10.0 + d) ** 2, rel=0.06)
    field = jitter_field((1, 40, 40), spacing, 2.0, 5.0, seed=1)
    assert not field[0].any() and np.sqrt((field**2).sum(0)).max() == pytest.approx(2.0)


@pytest.mark.parametrize("mode, sign", [("erode", -1), ("dilate", 1)])
def test_erode_dilate_dataset_volumes_follow_geometry(sphere_dataset, tmp_path, mode, sign):
    k = 2.0
    out = derive_noisy_labels(sphere_dataset, 502, mode=mode, magnitude_mm=k, raw_root=tmp_path)
    assert out.name == f"Dataset502_SpheresNoisy{mode.capitalize()}2mm"
    info = read_derived_info(out)
    for i, r in enumerate([11.0, 12.0] * 2):
        case = f"case_{i:03d}"
        rec = info["cases"][case]
        assert rec["corrupted"] and rec["sign"] == sign and rec["displacement_mm"] == sign * k
        seg = noisy(out, case)
        assert seg.sum() * VOXEL_VOLUME == pytest.approx(
            4 / 3 * math.pi * (r + sign * k) ** 3, rel=0.06
        )
        stats = rec["structures"]["organ"]
        assert stats["voxels_noisy"] == int(seg.sum())
        assert stats["volume_change_mm3"] == pytest.approx(
            (int(seg.sum()) - int(clean(out, case).sum())) * VOXEL_VOLUME
        )
        assert rec["voxels_changed"] == int((seg != clean(out, case)).sum()) > 0


def test_random_morph_records_and_applies_a_random_sign(sphere_dataset, tmp_path):
    signs = {}
    for seed in range(4):
        out = derive_noisy_labels(
            sphere_dataset, 510 + seed, mode="random-morph", magnitude_mm=1.5, seed=seed,
            raw_root=tmp_path,
        )  # fmt: skip
        for case, rec in read_derived_info(out)["cases"].items():
            change = rec["structures"]["organ"]["volume_change_mm3"]
            assert rec["sign"] in (-1, 1) and np.sign(change) == rec["sign"]
            assert rec["operation"] == ("erode" if rec["sign"] < 0 else "dilate")
            signs[(seed, case)] = rec["sign"]
    assert set(signs.values()) == {-1, 1}


# ------------------------------------------------------------------------------ other modes


def test_jitter_moves_boundaries_at_most_the_magnitude(sphere_dataset, tmp_path):
    k = 3.0
    out = derive_noisy_labels(
        sphere_dataset, 502, mode="jitter", magnitude_mm=k, smoothness_mm=6.0, raw_root=tmp_path
    )
    info = read_derived_info(out)
    assert info["smoothness_mm"] == 6.0
    for case, rec in info["cases"].items():
        assert rec["field_max_mm"] == pytest.approx(k, rel=1e-3)
        assert isinstance(rec["field_seed"], int)
        a, b = noisy(out, case).astype(bool), clean(out, case).astype(bool)
        assert (a != b).any()
        assert hausdorff_mm(a, b) <= k + VOXEL_DIAGONAL
        assert a.sum() == pytest.approx(b.sum(), rel=0.2)


def test_drop_components_drops_exactly_the_small_components(tmp_path):
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[ball(centre_mm(), 8.0)] = 1  # diameter 16 mm
    seg[2, 2, 2] = 1  # 2 mm^3 -> equivalent diameter 1.56 mm
    seg[20:22, 35:37, 35:37] = 1  # 16 mm^3 -> 3.13 mm
    seg[2:4, 2:5, 34:38] = 1  # 48 mm^3 -> 4.51 mm
    seg[20, 2, 2] = 1
    seg[21, 3, 3] = 1  # diagonal neighbour: one 26-connected component of 4 mm^3 (1.97 mm)
    seg[12, 2, 20] = 2  # label 2, 2 mm^3, not selected below
    src = write_dataset(tmp_path, 501, "Blobs", LABEL_JSON, {"c0": seg})
    out = derive_noisy_labels(
        src, 502, mode="drop-components", magnitude_mm=4.0, labels=["liver"], raw_root=tmp_path
    )
    rec = read_derived_info(out)["cases"]["c0"]
    dropped = sorted((d["voxels"], d["volume_mm3"]) for d in rec["dropped_components"])
    assert dropped == [(1, 2.0), (2, 4.0), (8, 16.0)]
    assert all(d["structure"] == "liver" for d in rec["dropped_components"])
    expected = seg.copy()
    expected[2, 2, 2] = expected[20:22, 35:37, 35:37] = expected[20, 2, 2] = expected[21, 3, 3] = 0
    np.testing.assert_array_equal(noisy(out, "c0"), expected)


def test_add_blobs_adds_balls_at_the_recorded_centres_inside_the_body(tmp_path):
    body = ball(centre_mm(), 16.0)
    seg = ball(centre_mm(), 4.0).astype(np.uint8)
    cases = {f"c{i}": seg.copy() for i in range(3)}
    image = np.where(body, 40, -1000).astype(np.int16)
    src = write_dataset(tmp_path, 501, "Body", LABEL_JSON, cases, images={c: image for c in cases})
    k = 5.0
    out = derive_noisy_labels(
        src, 502, mode="add-blobs", magnitude_mm=k, blobs=3, raw_root=tmp_path
    )
    info = read_derived_info(out)
    for case, rec in info["cases"].items():
        assert len(rec["blobs"]) == 3
        union = np.zeros(SHAPE, dtype=bool)
        for blob in rec["blobs"]:
            c = tuple(blob["centre_voxel"])
            assert body[c]
            assert blob["structure"] in ("liver", "tumor")
            assert blob["value"] == LABEL_JSON[blob["structure"]]
            centre = [i * h for i, h in zip(c, SPACING, strict=True)]
            ball_b = ball(centre, k / 2)
            assert blob["voxels"] == int(ball_b.sum()) > 1
            union |= ball_b
        a, b = noisy(out, case), clean(out, case)
        assert ((a != b) <= union).all()
        last = rec["blobs"][-1]
        assert a[tuple(last["centre_voxel"])] == last["value"]
    assert body_mask(image).sum() == body.sum()


def test_body_mask_separates_ct_air_and_noisy_mr_background():
    rng = np.random.default_rng(0)
    body = ball(centre_mm(), 15.0)
    ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, SHAPE)
    ct[body & ball(centre_mm(), 3.0)] = -850  # gas inside: a filled hole
    assert (body_mask(ct) == body).mean() > 0.99
    mr = np.abs(np.where(body, 500.0, 0.0) + rng.normal(0, 20, SHAPE))
    assert (body_mask(mr) == body).mean() > 0.99
    assert body_mask(np.zeros(SHAPE)).all()


# ------------------------------------------------------------------------------ multi-label maps


@pytest.mark.parametrize("mode", MODES)
def test_brats_region_hierarchy_is_preserved_for_every_mode(brats_source, tmp_path, mode):
    magnitude = {"drop-components": 6.0, "add-blobs": 6.0}.get(mode, 2.0)
    out = derive_noisy_labels(
        brats_source, 502, mode=mode, magnitude_mm=magnitude, blobs=2, raw_root=tmp_path
    )
    info = read_derived_info(out)
    assert info["label_type"] == "regions" and info["labels"] == list(BRATS_REGIONS)
    spacing = tuple(reversed(sitk.ReadImage(str(next((out / "labelsTr").iterdir()))).GetSpacing()))
    changed = 0
    for case, rec in info["cases"].items():
        seg, ref = noisy(out, case), clean(out, case)
        assert set(np.unique(seg)) <= {0, 1, 2, 3}
        r, c = brats_regions(seg), brats_regions(ref)
        assert (r["enhancing tumor"] <= r["tumor core"]).all()
        assert (r["tumor core"] <= r["whole tumor"]).all()
        changed += rec["voxels_changed"]
        if mode in ("erode", "dilate") or (mode == "random-morph"):
            d = rec["displacement_mm"]
            wt = morph_mask(c["whole tumor"], spacing, d)
            tc = morph_mask(c["tumor core"], spacing, d) & wt
            et = morph_mask(c["enhancing tumor"], spacing, d) & tc
            np.testing.assert_array_equal(r["whole tumor"], wt)
            np.testing.assert_array_equal(r["tumor core"], tc)
            np.testing.assert_array_equal(r["enhancing tumor"], et)
        if mode == "drop-components":  # only removals
            for name in BRATS_REGIONS:
                assert (r[name] <= c[name]).all()
    assert changed > 0


def test_brats_one_selected_region_nests_inside_the_unchanged_ones(brats_source, tmp_path):
    out = derive_noisy_labels(
        brats_source, 502, mode="dilate", magnitude_mm=3.0, labels=["enhancing tumor"],
        raw_root=tmp_path,
    )  # fmt: skip
    assert read_derived_info(out)["labels"] == ["enhancing tumor"]
    grew = 0
    for case in read_derived_info(out)["cases"]:
        r, c = brats_regions(noisy(out, case)), brats_regions(clean(out, case))
        np.testing.assert_array_equal(r["whole tumor"], c["whole tumor"])
        np.testing.assert_array_equal(r["tumor core"], c["tumor core"])
        assert (c["enhancing tumor"] <= r["enhancing tumor"]).all()
        assert (r["enhancing tumor"] <= c["tumor core"]).all()  # ET grows only inside TC
        grew += int(r["enhancing tumor"].sum() - c["enhancing tumor"].sum())
    assert grew > 0
    # a region can also be named by its regions_class_order value
    by_value = derive_noisy_labels(
        brats_source, 503, mode="dilate", magnitude_mm=3.0, labels=[3], name="ByValue",
        raw_root=tmp_path,
    )  # fmt: skip
    assert read_derived_info(by_value)["labels"] == ["enhancing tumor"]
    for case in read_derived_info(out)["cases"]:
        np.testing.assert_array_equal(noisy(by_value, case), noisy(out, case))


def _liver_with_tumour() -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[ball(centre_mm(), 15.0)] = 1
    seg[ball(centre_mm(offset=(0.0, 1.0, -0.5)), 5.0)] = 2
    return seg


def test_eroding_the_liver_next_to_a_tumour_leaves_no_background_gap(tmp_path):
    seg = _liver_with_tumour()
    src = write_dataset(tmp_path, 501, "Liver", LABEL_JSON, {"c0": seg})
    k = 2.0
    out = derive_noisy_labels(
        src, 502, mode="erode", magnitude_mm=k, labels=["liver"], raw_root=tmp_path
    )
    new = noisy(out, "c0")
    tumour = seg == 2
    near_tumour = ndimage.distance_transform_edt(~tumour, sampling=SPACING) <= 2 * k + 2
    assert not (near_tumour & (new == 0)).any()  # no background around the tumour
    assert (tumour <= (new == 2)).all() and (new == 2).sum() > tumour.sum()  # it took the shell
    assert (new == 1).sum() < (seg == 1).sum()
    # the liver's outer boundary moved by k: what became background was within k of it
    to_bg = (seg != 0) & (new == 0)
    dist_bg = ndimage.distance_transform_edt(seg != 0, sampling=SPACING)
    assert to_bg.any() and dist_bg[to_bg].max() <= k + max(SPACING)
    rec = read_derived_info(out)["cases"]["c0"]
    assert rec["structures"]["tumor"]["voxels_added"] > 0


def test_eroding_every_label_shrinks_the_tumour_into_the_liver(tmp_path):
    seg = _liver_with_tumour()
    src = write_dataset(tmp_path, 501, "Liver", LABEL_JSON, {"c0": seg})
    out = derive_noisy_labels(src, 502, mode="erode", magnitude_mm=2.0, raw_root=tmp_path)
    new = noisy(out, "c0")
    tumour = seg == 2
    assert ((new == 2) <= tumour).all() and (new == 2).sum() < tumour.sum()
    shell = tumour & (new != 2)
    assert (new[shell] == 1).all()  # the tumour's shell became liver, no ring, no gap
    assert ((new == 1) <= (seg != 0)).all()


def test_lits_like_dataset_erosion_fills_from_neighbouring_labels(lits_source, tmp_path):
    out = derive_noisy_labels(
        lits_source, 503, mode="erode", magnitude_mm=1.5, labels=["liver"], raw_root=tmp_path
    )
    info = read_derived_info(out)
    assert info["label_type"] == "labels" and info["labels"] == ["liver"]
    spacing = lits_like.DEFAULT_SPACING
    for case in info["cases"]:
        new, ref = noisy(out, case), clean(out, case)
        assert ((new == 2) >= (ref == 2)).all()  # the tumours are never eroded
        lost = (ref == 1) & (new != 1)
        assert lost.any() and not ((ref != 1) & (new == 1)).any()
        # a lost liver voxel takes the label of the nearest non-liver voxel
        to_bg = ndimage.distance_transform_edt(ref != 0, sampling=spacing)
        to_tumour = ndimage.distance_transform_edt(ref != 2, sampling=spacing)
        assert (to_bg[lost & (new == 0)] <= to_tumour[lost & (new == 0)]).all()
        assert (to_tumour[lost & (new == 2)] <= to_bg[lost & (new == 2)]).all()
        assert (lost & (new == 2)).any()


def test_the_ignore_label_is_never_changed(tmp_path):
    seg = _liver_with_tumour()
    seg[:, :, 30:] = 3  # ignore stripe that cuts the liver
    labels = {**LABEL_JSON, "ignore": 3}
    src = write_dataset(tmp_path, 501, "Ignore", labels, {"c0": seg, "c1": seg})
    for i, mode in enumerate(["erode", "dilate", "jitter", "add-blobs"]):
        out = derive_noisy_labels(
            src, 510 + i, mode=mode, magnitude_mm=6.0, blobs=4, raw_root=tmp_path
        )
        for case in ("c0", "c1"):
            new = noisy(out, case)
            np.testing.assert_array_equal(new == 3, seg == 3)
            assert (new != seg).any()
    with pytest.raises(ValueError, match="ignore"):
        derive_noisy_labels(src, 520, mode="erode", magnitude_mm=1, labels=[3], raw_root=tmp_path)


# ------------------------------------------------------------------------------ fraction, seeds


def _five_cases(tmp_path) -> Path:
    cases = {
        f"case_{i:03d}": ball(centre_mm(offset=(0.2 * i, -0.3, 0.1 * i)), 9.0 + i).astype(np.uint8)
        for i in range(5)
    }
    return write_dataset(tmp_path, 501, "Five", {"background": 0, "organ": 1}, cases)


def test_fraction_sets_the_number_of_corrupted_cases(tmp_path):
    src = _five_cases(tmp_path)
    counts = {}
    selected = {}
    for i, fraction in enumerate([0.1, 0.4, 0.5, 0.8, 1.0]):
        out = derive_noisy_labels(
            src, 510 + i, mode="jitter", magnitude_mm=2.0, fraction=fraction, seed=4,
            raw_root=tmp_path,
        )  # fmt: skip
        info = read_derived_info(out)
        corrupted = [c for c, r in info["cases"].items() if r["corrupted"]]
        assert corrupted == info["corrupted_cases"]
        counts[fraction] = len(corrupted)
        selected[fraction] = set(corrupted)
        for case, rec in info["cases"].items():
            same = (out / "labelsTr" / f"{case}.nii.gz").read_bytes() == (
                src / "labelsTr" / f"{case}.nii.gz"
            ).read_bytes()
            assert same != rec["corrupted"]
        if fraction == 0.4:
            again = derive_noisy_labels(
                src, 530, mode="jitter", magnitude_mm=2.0, fraction=0.4, seed=4, raw_root=tmp_path
            )
            assert read_derived_info(again)["corrupted_cases"] == corrupted
    assert counts == {0.1: 1, 0.4: 2, 0.5: 3, 0.8: 4, 1.0: 5}  # round(), at least one
    assert selected[0.1] < selected[0.4] < selected[0.5] < selected[0.8] < selected[1.0]


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    src = _five_cases(tmp_path)

    def run(dataset_id: int, seed: int) -> Path:
        return derive_noisy_labels(
            src, dataset_id, mode="jitter", magnitude_mm=3.0, fraction=0.6, seed=seed,
            name="Jitter", raw_root=tmp_path,
        )  # fmt: skip

    a, b, c = run(502, 7), run(503, 7), run(504, 8)
    ha, hb, hc = tree_hashes(a), tree_hashes(b), tree_hashes(c)
    del ha[DERIVED_JSON], hb[DERIVED_JSON], hc[DERIVED_JSON]
    assert ha == hb
    assert ha != hc
    ja, jb, jc = (read_derived_info(x) for x in (a, b, c))
    assert ja["cases"] == jb["cases"] and ja["created_by"] == {
        **jb["created_by"],
        "command": jb["created_by"]["command"].replace("--id 503", "--id 502"),
    }
    assert ja["cases"] != jc["cases"]
    for case in ja["corrupted_cases"]:
        np.testing.assert_array_equal(noisy(a, case), noisy(b, case))
    # the record of one case does not depend on the fraction (nor on the other cases)
    d = derive_noisy_labels(
        src, 505, mode="jitter", magnitude_mm=3.0, fraction=1.0, seed=7, raw_root=tmp_path
    )
    jd = read_derived_info(d)
    for case in ja["corrupted_cases"]:
        assert jd["cases"][case] == ja["cases"][case]


# ------------------------------------------------------------------------------ files and safety


def test_source_untouched_clean_labels_images_and_geometry_kept(tmp_path):
    seg = _liver_with_tumour()
    src = write_dataset(tmp_path, 501, "Liver", LABEL_JSON, {"c0": seg, "c1": seg})
    before = tree_hashes(src)
    messages = []
    out = derive_noisy_labels(
        "501", 502, mode="dilate", magnitude_mm=2.0, raw_root=tmp_path, progress=messages.append
    )
    assert tree_hashes(src) == before
    assert len(messages) == 2 and messages[0].startswith("[1/2] c0")
    got = tree_hashes(out)
    for rel, digest in before.items():
        if rel.startswith("labelsTr/"):
            assert got[rel.replace("labelsTr/", f"{CLEAN_LABELS_DIR}/")] == digest
            assert got[rel] != digest
        else:  # images, test images and labels, dataset.json: identical copies
            assert got[rel] == digest
    assert set(got) == set(before) | {f"{CLEAN_LABELS_DIR}/c0.nii.gz"} | {
        f"{CLEAN_LABELS_DIR}/c1.nii.gz",
        DERIVED_JSON,
    }
    ref = sitk.ReadImage(str(src / "labelsTr" / "c0.nii.gz"))
    new = sitk.ReadImage(str(out / "labelsTr" / "c0.nii.gz"))
    assert new.GetSpacing() == ref.GetSpacing() and new.GetOrigin() == ref.GetOrigin()
    assert new.GetDirection() == ref.GetDirection()
    assert new.GetPixelID() == ref.GetPixelID()
    info = read_derived_info(out)
    assert info["kind"] == "noisy-labels" and info["source"]["name"] == "Dataset501_Liver"
    assert info["source"]["labelsTr_sha256"]["c0"] == before["labelsTr/c0.nii.gz"]
    assert info["created_by"]["command"].startswith("nnunet-pde derive noisy-labels 501 --id 502")
    assert read_derived_info(src) is None
    # a derived dataset is no source: labelsTr_clean would be noisy
    with pytest.raises(ValueError, match="itself a noisy-labels dataset"):
        derive_noisy_labels(out, 503, mode="erode", magnitude_mm=1.0, raw_root=tmp_path)


def test_existing_targets_need_overwrite_and_the_source_is_never_replaced(tmp_path):
    src = _five_cases(tmp_path)
    kwargs = dict(mode="erode", magnitude_mm=2.0, raw_root=tmp_path)
    out = derive_noisy_labels(src, 502, **kwargs)
    with pytest.raises(FileExistsError, match="overwrite"):
        derive_noisy_labels(src, 502, **kwargs)
    (out / "marker").write_text("old")
    again = derive_noisy_labels(src, 502, mode="dilate", magnitude_mm=1.0, name=out.name[11:],
                                raw_root=tmp_path, overwrite=True)  # fmt: skip
    assert again == out and not (out / "marker").exists()
    assert read_derived_info(out)["mode"] == "dilate"
    # another derived dataset with the id is replaced too; a foreign one never
    renamed = derive_noisy_labels(src, 502, name="Other", overwrite=True, **kwargs)
    assert not out.exists() and renamed.exists()
    foreign = tmp_path / "Dataset503_Foreign"
    foreign.mkdir()
    with pytest.raises(FileExistsError, match="not derived"):
        derive_noisy_labels(src, 503, overwrite=True, **kwargs)
    assert foreign.is_dir()
    before = tree_hashes(src)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="source"):
            derive_noisy_labels(src, 501, overwrite=overwrite, **kwargs)
    assert tree_hashes(src) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"fraction": 0.0}, ValueError, r"\(0, 1\]"),
        ({"fraction": 1.5}, ValueError, r"\(0, 1\]"),
        ({"fraction": float("nan")}, ValueError, r"\(0, 1\]"),
        ({"magnitude_mm": -1.0}, ValueError, "> 0"),
        ({"magnitude_mm": 0.0}, ValueError, "> 0"),
        ({"magnitude_mm": float("inf")}, ValueError, "finite"),
        ({"mode": "shrink"}, ValueError, "--mode: must be one of"),
        ({"labels": ["spleen"]}, ValueError, "unknown label 'spleen'"),
        ({"labels": [7]}, ValueError, "unknown label 7"),
        ({"labels": []}, ValueError, "empty"),
        ({"seed": -1}, ValueError, "seed"),
        ({"name": "bad name"}, ValueError, "name"),
        ({"smoothness_mm": 0.0}, ValueError, "smoothness"),
        ({"blobs": 0}, ValueError, "blobs"),
        ({"dataset_id": 1000}, ValueError, "1 to 999"),
        ({"source": 777}, FileNotFoundError, "no dataset with id 777"),
        ({"progress": "yes"}, ValueError, "progress"),
    ],
)
def test_invalid_parameters_fail_before_anything_is_written(tmp_path, changes, error, match):
    seg = _liver_with_tumour()
    src = write_dataset(tmp_path, 501, "Liver", LABEL_JSON, {"c0": seg})
    kwargs = dict(source=src, dataset_id=502, mode="erode", magnitude_mm=2.0, raw_root=tmp_path)
    kwargs.update(changes)
    before = sorted(p.name for p in tmp_path.iterdir())
    hashes = tree_hashes(src)
    with pytest.raises(error, match=match):
        derive_noisy_labels(kwargs.pop("source"), kwargs.pop("dataset_id"), **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert tree_hashes(src) == hashes


def test_datasets_without_training_labels_are_refused(tmp_path):
    src = write_dataset(tmp_path, 501, "Liver", LABEL_JSON, {"c0": _liver_with_tumour()})
    for f in (src / "labelsTr").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="training labels"):
        derive_noisy_labels(src, 502, mode="erode", magnitude_mm=1.0, raw_root=tmp_path)
    (src / "labelsTr").rmdir()
    with pytest.raises(FileNotFoundError, match="labelsTr"):
        derive_noisy_labels(src, 502, mode="erode", magnitude_mm=1.0, raw_root=tmp_path)
    assert not list(tmp_path.glob("Dataset502_*"))


def test_source_by_name_and_by_nnunet_raw(tmp_path, monkeypatch):
    src = _five_cases(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    out = derive_noisy_labels(src.name, 502, mode="erode", magnitude_mm=1.0, fraction=0.2)
    assert out.parent == tmp_path and out.name == "Dataset502_FiveNoisyErode1mm"
    out = derive_noisy_labels(501, 503, mode="drop-components", magnitude_mm=1.5)
    assert out.name == "Dataset503_FiveNoisyDropComponents1p5mm"


# ------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-pde derive")
    register_cli(parser.add_subparsers(dest="kind", required=True))
    return parser


def test_cli_writes_the_dataset_and_prints_a_summary(tmp_path, capsys):
    _five_cases(tmp_path)
    args = _parser().parse_args(
        [
            "noisy-labels", "501", "--id", "502", "--mode", "random-morph", "--magnitude", "1.5",
            "--fraction", "0.4", "--seed", "3", "--raw", str(tmp_path), "--labels", "organ",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    captured = capsys.readouterr()
    out = tmp_path / "Dataset502_FiveNoisyRandomMorph1p5mm"
    assert str(out) in captured.out
    assert "2 of 5 training cases corrupted" in captured.out
    assert "nnUNetv2_plan_and_preprocess -d 502 -c 3d_fullres" in captured.out
    assert captured.err.count("\n") == 5  # one progress line per case
    info = read_derived_info(out)
    assert info["seed"] == 3 and info["fraction"] == 0.4 and info["labels"] == ["organ"]
    assert "--labels organ" in info["created_by"]["command"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--id", "502", "--mode", "erode", "--magnitude", "-2"], "> 0"),
        (["--id", "501", "--mode", "erode", "--magnitude", "2"], "source"),
        (["--id", "502", "--mode", "erode", "--magnitude", "2", "--labels", "x"], "unknown"),
    ],
)
def test_cli_errors_exit_2_with_a_message(tmp_path, capsys, argv, match):
    _five_cases(tmp_path)
    args = _parser().parse_args(["noisy-labels", "501", "--raw", str(tmp_path), *argv])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    with pytest.raises(SystemExit):
        _parser().parse_args(["noisy-labels", "501", "--id", "502", "--mode", "shrink"])


# nnUNetv2_plan_and_preprocess --verify_dataset_integrity on a derived dataset, and training
# on it, run in tests/benchmark/robustness/test_robustness_e2e.py.
