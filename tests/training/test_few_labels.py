"""Few-label regime: nested seeded subsets and the ``*_FracNN`` trainers' ``do_split``."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from plan_fixtures import load_plans

from nnunet_pde.env import list_trainers
from nnunet_pde.training.subsets import (
    FEW_LABEL_FRACTIONS,
    SEED_ENV_VAR,
    SUBSET_FILE,
    few_label_subset,
    subset_size,
)

KEYS = [f"case_{i:03d}" for i in range(40)]


# ------------------------------------------------------------------ the subsets


def test_subsets_are_nested_across_fractions():
    subsets = [set(few_label_subset(KEYS, f, seed=3)) for f in (*FEW_LABEL_FRACTIONS, 1.0)]
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert small < large
    assert subsets[-1] == set(KEYS)


def test_subset_sizes_are_ceil_of_the_fraction_at_least_one():
    assert [subset_size(40, f) for f in FEW_LABEL_FRACTIONS] == [2, 4, 10, 20]
    assert subset_size(30, 0.1) == 3  # not 4 from 0.1 * 30 = 3.0000000000000004
    assert subset_size(7, 0.05) == 1
    assert subset_size(7, 0.5) == 4
    assert len(few_label_subset(KEYS[:3], 0.05)) == 1


def test_subsets_depend_only_on_the_keys_and_the_seed():
    a = few_label_subset(KEYS, 0.25, seed=7)
    assert a == few_label_subset(list(reversed(KEYS)), 0.25, seed=7)
    assert a == sorted(a)
    assert a != few_label_subset(KEYS, 0.25, seed=8)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan")])
def test_fractions_outside_0_1_are_rejected(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        few_label_subset(KEYS, fraction)


def test_duplicate_keys_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        few_label_subset(["a", "a", "b"], 0.5)


# ------------------------------------------------------------------ the trainers

FRAC = re.compile(r"^(?P<base>nnUNetTrainer\w+?)_Frac(?P<pct>\d\d)$")


def frac_trainers() -> dict[str, type]:
    return {n: c for n, c in list_trainers().items() if FRAC.match(n)}


def test_frac_trainers_change_only_the_training_subset():
    trainers = list_trainers()
    fracs = frac_trainers()
    bases = {FRAC.match(n)["base"] for n in fracs}
    # the full model and both loss ablations, at every fraction of the paper's plan
    for base in (
        "nnUNetTrainerPDE3D",
        "nnUNetTrainerPDE3D_Backbone",
        "nnUNetTrainerPDE3D_LossOnly",
    ):
        for f in FEW_LABEL_FRACTIONS:
            assert f"{base}_Frac{round(f * 100):02d}" in fracs
    for name, cls in fracs.items():
        m = FRAC.match(name)
        base = trainers[m["base"]]
        assert issubclass(cls, base), name
        assert cls.few_label_fraction == pytest.approx(int(m["pct"]) / 100), name
        assert getattr(base, "few_label_fraction", None) is None
        for attr in ("pde_config", "pde_all_stages", "reg_config", "use_sgd", "epochs"):
            assert getattr(cls, attr) == getattr(base, attr), (name, attr)
    assert {"nnUNetTrainerPDE3D", "nnUNetTrainerPDE3D_Backbone"} <= bases


class _FakeDataset:
    """Stands in for nnU-Net's dataset class: do_split only constructs it."""

    def __init__(self, folder, identifiers=None, folder_with_segs_from_previous_stage=None):
        self.identifiers = KEYS


@pytest.fixture
def split_env(tmp_path, monkeypatch):
    """nnU-Net folders whose splits_final.json has 40 training / 10 validation cases in
    fold 0 (the keys do not need preprocessed files: do_split only reads the split)."""
    plans, ds = load_plans("tiny_plain")
    plans["continue_training"] = False
    pre = tmp_path / "pre" / plans["dataset_name"]
    pre.mkdir(parents=True)
    val = [f"val_{i:02d}" for i in range(10)]
    (pre / "splits_final.json").write_text(json.dumps([{"train": KEYS, "val": val}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    monkeypatch.delenv(SEED_ENV_VAR, raising=False)

    def split(name: str) -> tuple[list[str], list[str], object]:
        trainer = list_trainers()[name](
            copy.deepcopy(plans), "3d_fullres", 0, ds, torch.device("cpu")
        )
        trainer.dataset_class = _FakeDataset
        tr, va = trainer.do_split()
        return list(tr), list(va), trainer

    return split, val


def test_do_split_trains_on_nested_subsets_and_validates_on_the_full_fold(split_env):
    split, val = split_env
    previous: set[str] = set()
    for f in FEW_LABEL_FRACTIONS:
        pct = f"{round(f * 100):02d}"
        tr, va, trainer = split(f"nnUNetTrainerPDE3D_Frac{pct}")
        assert va == val
        assert len(tr) == subset_size(len(KEYS), f) and set(tr) <= set(KEYS)
        assert previous < set(tr)
        previous = set(tr)
        # identical across trainers
        for other in ("nnUNetTrainerPDE3D_Backbone", "nnUNetTrainerPDE3D_LossOnly"):
            assert split(f"{other}_Frac{pct}")[0] == tr
        record = json.loads(Path(trainer.output_folder, SUBSET_FILE).read_text())
        assert record["train_keys"] == tr and record["val_keys"] == val
        assert record["fraction"] == f and record["n_total"] == len(KEYS)
        assert sorted(record["excluded_keys"] + tr) == KEYS
    # the full-data trainer keeps the whole fold and writes no subset file
    tr, va, trainer = split("nnUNetTrainerPDE3D")
    assert tr == KEYS and va == val


def test_seed_env_var_changes_the_subset_for_every_trainer(split_env, monkeypatch):
    split, _ = split_env
    default = split("nnUNetTrainerPDE3D_Frac25")[0]
    monkeypatch.setenv(SEED_ENV_VAR, "11")
    reseeded = split("nnUNetTrainerPDE3D_Frac25")[0]
    assert reseeded != default
    assert split("nnUNetTrainerPDE3D_Backbone_Frac25")[0] == reseeded
    assert reseeded == few_label_subset(KEYS, 0.25, seed=11)
    monkeypatch.setenv(SEED_ENV_VAR, "eleven")
    with pytest.raises(ValueError, match=SEED_ENV_VAR):
        split("nnUNetTrainerPDE3D_Frac25")
