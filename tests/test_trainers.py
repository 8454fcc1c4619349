"""The trainer classes: discovery by nnU-Net's own finder, the docs table, short variants."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from plan_fixtures import REPO, load_plans, managers

from nnunet_pde.env import EXT_TRAINER_VAR, list_trainers, trainer_dir
from nnunet_pde.files import write_json

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


def test_nnunet_finder_resolves_every_trainer_from_ext_trainer_dir(resolve_with_nnunet_finder):
    """As nnUNetv2_train/-predict do, in a fresh interpreter that only has the env var."""
    names = sorted(list_trainers())
    assert resolve_with_nnunet_finder(names) == names


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
    # the v2 campaign's schedule, resumable: checkpoint_latest.pth every 5 of its 25 epochs
    medium = _make_trainer(
        trainers["nnUNetTrainerPDE3D_25epochs_20iters_noTTA"], tmp_path, monkeypatch
    )
    assert (
        medium.num_epochs,
        medium.num_iterations_per_epoch,
        medium.num_val_iterations_per_epoch,
        medium.save_every,
    ) == (25, 20, 1, 5)
    assert full.save_every == 50  # nnU-Net's own, untouched by the variants
    assert medium.pde_config == full.pde_config
    # nnU-Net records the constructor arguments by name to re-create the trainer
    assert set(smoke.my_init_kwargs) == {"plans", "configuration", "fold", "dataset_json", "device"}
    assert smoke.pde_config == full.pde_config


#: One trainer of each network family (SwinUNETR needs the patch its trainer adapts).
NETWORK_FAMILIES = [
    "nnUNetTrainerPDE3D",
    "nnUNetTrainerPDE3D_Backbone",
    "nnUNetTrainerVNet",
    "nnUNetTrainerSwinUNet3D",
    "nnUNetTrainerESUNet",
]


def test_every_network_is_built_by_the_one_hook():
    """Every trainer of ours with its own network builds it through NetworkBuilderMixin's
    build_network_architecture (a classmethod with nnU-Net's parameters), not a copy."""
    import inspect

    from nnunet_pde.training.network_hook import NetworkBuilderMixin

    hook = NetworkBuilderMixin.build_network_architecture.__func__
    for name, cls in list_trainers().items():
        if cls.build_network_architecture.__qualname__.startswith("nnUNetTrainer."):
            continue  # nnU-Net's own network (the stock reference trainers)
        assert cls.build_network_architecture.__func__ is hook, name
        assert "plans_manager" in inspect.signature(cls.build_network_architecture).parameters


@pytest.mark.parametrize("name", NETWORK_FAMILIES)
def test_nnunet_predictor_rebuilds_the_network_on_the_class(name, tmp_path, monkeypatch):
    """nnUNetv2_predict's path: nnUNetPredictor.initialize_from_trained_model_folder finds
    the trainer by the checkpoint's name through nnUNet_extTrainer, calls
    build_network_architecture on the class (no instance, deep supervision off) and loads
    the weights strictly."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    plans, ds = load_plans("tiny_plain")
    pm, cm, n_in, n_out = managers(plans, ds)
    torch.manual_seed(0)
    net = list_trainers()[name].build_network_architecture(pm, cm, n_in, n_out, True)
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    write_json(model / "plans.json", plans)
    write_json(model / "dataset.json", ds)
    checkpoint = {
        "network_weights": net.state_dict(),
        "init_args": {"configuration": "3d_fullres"},
        "trainer_name": name,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, model / "fold_0" / "checkpoint_final.pth")
    monkeypatch.setenv(EXT_TRAINER_VAR, str(trainer_dir()))
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    assert type(predictor.network) is type(net) and predictor.trainer_name == name
    rebuilt = predictor.network.state_dict()
    assert rebuilt.keys() == net.state_dict().keys()
    assert all(torch.equal(rebuilt[k], v) for k, v in net.state_dict().items())
