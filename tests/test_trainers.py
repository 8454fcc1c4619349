"""The trainer classes: discovery by nnU-Net's own finder, the docs table, short variants."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch
from plan_fixtures import REPO, load_plans

from nnunet_pde.env import EXT_TRAINER_VAR, list_trainers, trainer_dir

DOC = REPO / "docs" / "trainers.md"


def documented_trainers() -> set[str]:
    """Trainer names in the first column of the table(s) in docs/trainers.md."""
    return set(re.findall(r"^\|\s*`(nnUNetTrainer\w+)`\s*\|", DOC.read_text(), flags=re.M))


def test_docs_table_and_code_list_the_same_trainers():
    in_code = set(list_trainers())
    in_docs = documented_trainers()
    assert "nnUNetTrainerPDE3D" in in_code
    assert in_code - in_docs == set(), "trainers missing from docs/trainers.md"
    assert in_docs - in_code == set(), "docs/trainers.md lists trainers that do not exist"


def test_nnunet_finder_resolves_every_trainer_from_ext_trainer_dir():
    """As nnUNetv2_train/-predict do, in a fresh interpreter that only has the env var."""
    names = sorted(list_trainers())
    code = (
        "import sys\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
        "for n in sys.argv[1:]:\n"
        "    c = f(n)\n"
        "    assert c.__name__ == n, (c, n)\n"
        "    print('RESOLVED', n)\n"
    )
    env = dict(os.environ, **{EXT_TRAINER_VAR: str(trainer_dir())})
    out = subprocess.run(
        [sys.executable, "-c", code, *names], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert sorted(re.findall(r"^RESOLVED (\S+)$", out, flags=re.M)) == names


def test_finder_fails_without_the_env_var():
    env = {k: v for k, v in os.environ.items() if k != EXT_TRAINER_VAR}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
            "f('nnUNetTrainerPDE3D')",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "nnUNet_extTrainer" in proc.stderr


def _make_trainer(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    plans, ds = load_plans("tiny_plain")
    plans["continue_training"] = False
    return cls(plans, "3d_fullres", 0, ds, torch.device("cpu"))


def test_short_variants_change_only_the_training_length(tmp_path, monkeypatch):
    trainers = list_trainers()
    full = _make_trainer(trainers["nnUNetTrainerPDE3D"], tmp_path, monkeypatch)
    assert (full.num_epochs, full.num_iterations_per_epoch, full.num_val_iterations_per_epoch) == (
        1000,
        250,
        50,
    )
    smoke = _make_trainer(trainers["nnUNetTrainerPDE3D_2epochs_4iters"], tmp_path, monkeypatch)
    assert (
        smoke.num_epochs,
        smoke.num_iterations_per_epoch,
        smoke.num_val_iterations_per_epoch,
    ) == (2, 4, 2)
    five = _make_trainer(trainers["nnUNetTrainerPDE3D_5epochs"], tmp_path, monkeypatch)
    assert (five.num_epochs, five.num_iterations_per_epoch) == (5, 250)
    # nnU-Net records the constructor arguments by name to re-create the trainer
    assert set(smoke.my_init_kwargs) == {"plans", "configuration", "fold", "dataset_json", "device"}
    assert smoke.pde_config == full.pde_config
