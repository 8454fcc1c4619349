"""`nnunet-pde inspect`: what the PDE blocks of a checkpoint learned."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys

import pytest
import torch

from nnunet_pde.block_report import (
    format_summary,
    inspect_checkpoint,
    plot_report,
)
from nnunet_pde.cli.inspect import register_cli
from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir
from nnunet_pde.network import pde_blocks
from nnunet_pde.trainers.nnUNetTrainerPDE3D import (
    nnUNetTrainerPDE3D,
    nnUNetTrainerPDE3D_Backbone,
    nnUNetTrainerPDE3D_Moment,
)


def _perturb(block) -> None:
    gen = torch.Generator().manual_seed(1)
    block.tau_logit.fill_(0.3)
    block.gamma.copy_(torch.randn(block.gamma.shape, generator=gen))
    block.conductance.alpha_raw.copy_(torch.randn(block.channels, generator=gen))
    block.conductance.kappa_raw.copy_(torch.randn(block.channels, generator=gen))
    if block.moment is not None:
        block.moment.free_moments.copy_(0.1 * torch.randn(block.moment.free_moments.shape))
        block.moment.theta.zero_()
        block.moment.theta[0, 0] = math.atanh(0.5)  # channel 0: 0.5 d/dz
        block.moment.theta[5, 1] = math.atanh(-0.8)  # channel 1: -0.8 d2/dx2


def _softplus(t: torch.Tensor) -> list[float]:
    return torch.nn.functional.softplus(t.double()).tolist()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-pde")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_report_values_are_the_checkpoint_parameters(tmp_path, write_checkpoint):
    path = tmp_path / "checkpoint_final.pth"
    net = write_checkpoint(path, nnUNetTrainerPDE3D, _perturb)
    report = inspect_checkpoint(path)
    json.dumps(report)
    assert report["trainer_name"] == "nnUNetTrainerPDE3D"
    assert report["configuration"] == "3d_fullres" and report["epoch"] == 7
    (name, block), = pde_blocks(net).items()  # fmt: skip
    assert list(report["blocks"]) == [name] == ["encoder.stages.2.pde"]
    info = report["blocks"][name]
    cfg = block.config
    assert info["tau"] == pytest.approx(cfg.tau_max / (1 + math.exp(-0.3)))
    assert info["tau_effective"] == pytest.approx([info["tau"]] * block.channels)
    assert info["gamma"] == pytest.approx(block.gamma.double().tolist())
    assert info["alpha"] == pytest.approx(_softplus(block.conductance.alpha_raw))
    kappa = [v + 1e-3 for v in _softplus(block.conductance.kappa_raw)]  # floor 1e-3
    assert info["kappa"] == pytest.approx(kappa, rel=1e-5)
    assert info["moment"] is None

    text = format_summary(report)
    assert "encoder.stages.2.pde" in text and f"tau {info['tau']:.4g}" in text


def test_moment_report_names_the_learned_derivatives(tmp_path, write_checkpoint):
    path = tmp_path / "checkpoint_final.pth"
    net = write_checkpoint(path, nnUNetTrainerPDE3D_Moment, _perturb)
    block = next(iter(pde_blocks(net).values()))
    info = next(iter(inspect_checkpoint(path)["blocks"].values()))
    mom = info["moment"]
    assert mom["kernel_size"] == 3
    assert mom["channels"][0]["coefficients"]["d/dz"] == pytest.approx(0.5)
    assert mom["channels"][1]["coefficients"]["d2/dx2"] == pytest.approx(-0.8)
    # with free moments != 0 the effective terms gain learned error terms, but the
    # constrained leading term stays the target
    assert mom["channels"][0]["effective_terms"]["d/dz"] == pytest.approx(0.5)
    assert mom["kernels"][0]["free_moments_max_abs"] == pytest.approx(
        float(block.moment.free_moments.detach()[block.moment.free_index < 27].abs().max())
    )
    assert info["tau_effective"] == pytest.approx(block.time_step().double().tolist())

    text = format_summary(report := inspect_checkpoint(path))
    assert "dominant derivative per channel" in text
    assert "channel 1: " in text and "0.8*d2/dx2" in text
    figures = plot_report(report, tmp_path / "fig")
    assert sorted(p.name for p in figures) == [
        "encoder_stages_2_pde_channel_kernels.png",
        "encoder_stages_2_pde_moment_kernels.png",
        "encoder_stages_2_pde_parameters.png",
    ]
    assert all(p.stat().st_size > 1000 for p in figures)


def test_cli_prints_writes_json_and_plots(tmp_path, capsys, write_checkpoint):
    path = tmp_path / "checkpoint_final.pth"
    write_checkpoint(path, nnUNetTrainerPDE3D, _perturb)
    out_json = tmp_path / "report" / "pde.json"
    assert _run(["inspect", str(path), "--json", str(out_json), "--plot", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert "encoder.stages.2.pde" in printed and "alpha  min" in printed
    assert str(out_json) in printed
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(inspect_checkpoint(path)))
    assert (tmp_path / "p" / "encoder_stages_2_pde_parameters.png").is_file()


def test_backbone_checkpoint_has_no_blocks(tmp_path, capsys, write_checkpoint):
    path = tmp_path / "checkpoint_final.pth"
    write_checkpoint(path, nnUNetTrainerPDE3D_Backbone)
    assert inspect_checkpoint(path)["blocks"] == {}
    assert _run(["inspect", str(path)]) == 0
    assert "no PDE blocks" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "not_torch", "no_weights", "stock_trainer", "shape"])
def test_errors_exit_2_with_a_message(tmp_path, capsys, case, write_checkpoint):
    path = tmp_path / "checkpoint_final.pth"
    expected = {
        "missing": "checkpoint not found",
        "not_torch": "cannot be read as a PyTorch checkpoint",
        "no_weights": "not an nnU-Net checkpoint",
        "stock_trainer": "no PDE blocks",
        "shape": "do not fit",
    }[case]
    if case == "not_torch":
        path.write_text("hello")
    elif case == "no_weights":
        torch.save({"state": 1}, path)
    elif case == "stock_trainer":
        write_checkpoint(path, nnUNetTrainerPDE3D_Backbone, trainer_name="nnUNetTrainer")
    elif case == "shape":
        # weights of the moment network under the name of the diffusion trainer
        write_checkpoint(path, nnUNetTrainerPDE3D_Moment, trainer_name="nnUNetTrainerPDE3D")
    assert _run(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err


# ----------------------------------------------------- training diagnostics, user trainers


def _diagnostics_logging(labels, epochs=3, resumed_from=0):
    """A logger entry as the trainers write it: nnU-Net's keys and ours per block label,
    NaN for the epochs before ``resumed_from`` (a resumed training that predates them)."""
    nan = float("nan")
    logging = {"train_losses": [0.9, 0.8, 0.7][:epochs], "lrs": [1e-3] * epochs}
    for i, label in enumerate(labels):
        for q, base in (("gamma_abs_mean", 0.01), ("gamma_abs_max", 0.05), ("tau", 0.3)):
            logging[f"pde_{label}_{q}"] = [base * (e + 1) + i for e in range(epochs)]
        logging[f"pde_{label}_contribution"] = [0.0] + [0.02 * e + i for e in range(1, epochs)]
        for key in [k for k in logging if k.startswith(f"pde_{label}_")]:
            logging[key][:resumed_from] = [nan] * resumed_from
    return logging


def test_report_and_summary_show_the_logged_block_diagnostics(tmp_path, capsys, write_checkpoint):
    path = tmp_path / "checkpoint_final.pth"
    logging = _diagnostics_logging(["stage2"], epochs=3, resumed_from=1)
    write_checkpoint(path, nnUNetTrainerPDE3D, _perturb, logging=logging)
    report = inspect_checkpoint(path)
    assert report["trainer_base"] == "nnUNetTrainerPDE3D"
    diag = report["diagnostics"]
    assert list(diag) == ["encoder.stages.2.pde"]  # keyed like "blocks"
    series = diag["encoder.stages.2.pde"]
    assert list(series) == ["gamma_abs_mean", "gamma_abs_max", "tau", "contribution"]
    assert series["tau"] == [None, pytest.approx(0.6), pytest.approx(0.9)]
    assert series["contribution"] == [None, pytest.approx(0.02), pytest.approx(0.04)]
    json.dumps(report, allow_nan=False)  # strict JSON: NaN became null
    text = format_summary(report)
    assert "training diagnostics (3 epochs logged" in text
    assert "first 0.02 @1  last 0.04 @2  max 0.04 @2" in text
    out_json = tmp_path / "pde.json"
    assert _run(["inspect", str(path), "--json", str(out_json)]) == 0
    assert "contribution ||y-x||/||x||" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["diagnostics"] == json.loads(json.dumps(diag))


def test_checkpoint_without_diagnostics_says_so(tmp_path, write_checkpoint):
    path = tmp_path / "checkpoint_final.pth"
    write_checkpoint(path, nnUNetTrainerPDE3D, _perturb)  # no logging entry at all
    report = inspect_checkpoint(path)
    assert report["diagnostics"] == {}
    assert "training diagnostics: none logged" in format_summary(report)


USER_TRAINERS = """
import dataclasses

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D, nnUNetTrainerPDE3D_Stages01


class nnUNetTrainerUserPDE_K3(nnUNetTrainerPDE3D_Stages01):
    pde_config = dataclasses.replace(nnUNetTrainerPDE3D_Stages01.pde_config, steps=3)


class nnUNetTrainerUserNotOurs(nnUNetTrainer):
    build_network_architecture = nnUNetTrainerPDE3D.build_network_architecture
    pde_config = nnUNetTrainerPDE3D.pde_config
    pde_all_stages = False
"""


def _user_folder(tmp_path):
    """A folder of the user's own trainers, as nnUNet_extTrainer would list it."""
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / "user_pde_trainers_for_inspect.py").write_text(USER_TRAINERS)
    spec = importlib.util.spec_from_file_location(
        "_user_trainers_built_here", folder / "user_pde_trainers_for_inspect.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return folder, module


def test_inspect_resolves_a_user_subclass_from_ext_trainer(
    tmp_path, monkeypatch, capsys, write_checkpoint
):
    folder, module = _user_folder(tmp_path)
    user = module.nnUNetTrainerUserPDE_K3
    path = tmp_path / "checkpoint_final.pth"
    logging = _diagnostics_logging(["stage0", "stage1"], epochs=2)
    net = write_checkpoint(path, user, _perturb, logging=logging)
    assert len(pde_blocks(net)) == 2

    # without the user's folder in nnUNet_extTrainer nnU-Net cannot find it either
    monkeypatch.setenv(EXT_TRAINER_VAR, str(trainer_dir()))
    assert _run(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nnUNetTrainerUserPDE_K3" in err and EXT_TRAINER_VAR in err

    monkeypatch.setenv(EXT_TRAINER_VAR, f"{folder}{os.pathsep}{trainer_dir()}")
    report = inspect_checkpoint(path)
    assert report["trainer_name"] == "nnUNetTrainerUserPDE_K3"
    assert report["trainer_base"] == "nnUNetTrainerPDE3D_Stages01"
    assert list(report["blocks"]) == ["encoder.stages.0.pde", "encoder.stages.1.pde"]
    # the user's class built the network: its own configuration, not its base's
    assert {b["config"]["steps"] for b in report["blocks"].values()} == {3}
    assert list(report["diagnostics"]) == list(report["blocks"])
    assert report["diagnostics"]["encoder.stages.1.pde"]["tau"] == pytest.approx([1.3, 1.6])
    assert _run(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "nnUNetTrainerUserPDE_K3 (subclass of nnUNetTrainerPDE3D_Stages01)" in out
    assert "user_pde_trainers_for_inspect" not in sys.modules  # nnU-Net's finder cleaned up


def test_inspect_refuses_a_user_trainer_not_derived_from_ours(
    tmp_path, monkeypatch, capsys, write_checkpoint
):
    folder, module = _user_folder(tmp_path)
    path = tmp_path / "checkpoint_final.pth"
    write_checkpoint(path, module.nnUNetTrainerUserNotOurs)
    monkeypatch.setenv(EXT_TRAINER_VAR, str(folder))
    assert _run(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nnUNetTrainerUserNotOurs" in err and "neither an nnunet-pde trainer" in err
