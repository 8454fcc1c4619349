"""Malformed checkpoints: `inspect` and `warmstart` end in one `error:` line, write nothing.

Each variant is built the way a user would make it: a valid checkpoint (stock nnU-Net or
PDE3D, written by the ``write_checkpoint`` fixture of ``tests/conftest.py``) loaded, one entry
damaged, and saved again with ``torch.save``. Both commands run through ``nnunet_pde.cli``'s
``main`` (the one error boundary); an exception that escapes it fails the test, and so does a
second stderr line, a written output file or a changed input.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_pde.checkpoints import build_network_for_checkpoint
from nnunet_pde.cli import main
from nnunet_pde.errors import CheckpointError
from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Detected old nnU-Net plans format:UserWarning"),
]

Damage = Callable[[dict[str, Any], torch.nn.Module], Any]


def _with(checkpoint: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**checkpoint, **changes}


def _init_args(checkpoint: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return _with(checkpoint, init_args={**checkpoint["init_args"], **changes})


def _without(checkpoint: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in checkpoint.items() if k != key}


#: id -> (what to save instead of the valid checkpoint, a phrase the error line must hold)
VARIANTS: dict[str, tuple[Damage, str]] = {
    "configuration-not-in-plans": (
        lambda ck, net: _init_args(ck, configuration="3d_lowres"),
        "configuration '3d_lowres' is not in its plans",
    ),
    "weights-none": (
        lambda ck, net: _with(ck, network_weights=None),
        "'network_weights' is None",
    ),
    "weights-are-a-module": (
        lambda ck, net: _with(ck, network_weights=net),
        "'network_weights' is a whole torch.nn.Module (PlainConvUNet)",
    ),
    "weights-empty": (lambda ck, net: _with(ck, network_weights={}), "is empty"),
    "weights-a-list": (
        lambda ck, net: _with(ck, network_weights=list(ck["network_weights"].values())),
        "'network_weights' is a list",
    ),
    "weight-not-a-tensor": (
        lambda ck, net: _with(
            ck, network_weights={**ck["network_weights"], "decoder.seg_layers.0.bias": 0.5}
        ),
        "entry 'decoder.seg_layers.0.bias' is a float, not a tensor",
    ),
    "whole-module-saved": (lambda ck, net: net, "torch.save(model)"),
    "bare-state-dict": (lambda ck, net: ck["network_weights"], "bare state dict"),
    "not-a-dict": (lambda ck, net: [1, 2, 3], "holds a list, not an nnU-Net checkpoint"),
    "no-network-weights": (lambda ck, net: _without(ck, "network_weights"), "no 'network_weights'"),
    "no-init-args": (lambda ck, net: _without(ck, "init_args"), "has no init_args"),
    "no-plans": (
        lambda ck, net: _with(ck, init_args=_without(ck["init_args"], "plans")),
        "no init_args[plans]",
    ),
    # nnU-Net's PlansManager reads a str as the path of a plans file
    "plans-a-path": (
        lambda ck, net: _init_args(ck, plans="nnUNetPlans.json"),
        "init_args['plans'] is a str",
    ),
    "plans-without-configurations": (
        lambda ck, net: _init_args(ck, plans={"plans_name": "nnUNetPlans"}),
        "define no configurations",
    ),
    "dataset-json-without-labels": (
        lambda ck, net: _init_args(ck, dataset_json={"channel_names": {"0": "T1"}}),
        "init_args['dataset_json'] has no 'labels'",
    ),
    # a configuration that exists but lacks what nnU-Net's managers read
    "configuration-incomplete": (
        lambda ck, net: _init_args(
            ck,
            plans={
                **ck["init_args"]["plans"],
                "configurations": {"3d_fullres": {"data_identifier": "x"}},
            },
        ),
        "nnU-Net cannot build its network",
    ),
}

#: variants that only `inspect` reads (warmstart does not need a trainer name)
INSPECT_ONLY: dict[str, tuple[Damage, str]] = {
    "trainer-name-not-a-str": (
        lambda ck, net: _with(ck, trainer_name=7),
        "'trainer_name' that is an int",
    ),
    "no-trainer-name": (lambda ck, net: _without(ck, "trainer_name"), "no 'trainer_name'"),
}


@pytest.fixture(scope="module")
def valid(tmp_path_factory, write_checkpoint) -> dict[str, tuple[dict[str, Any], torch.nn.Module]]:
    """The valid checkpoints (as loaded) and their networks: ``stock`` and ``pde``."""
    folder = tmp_path_factory.mktemp("valid")
    out = {}
    for kind, trainer in (("stock", nnUNetTrainer), ("pde", nnUNetTrainerPDE3D)):
        net = write_checkpoint(folder / f"{kind}.pth", trainer)
        out[kind] = (torch.load(folder / f"{kind}.pth", weights_only=False), net)
    return out


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _run_cli(argv: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``nnunet-pde ARGV``; assert exit code 2, one ``error:`` line, ``folder``
    unchanged (nothing written, the input intact); return the line."""
    before = _sha(folder)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert _sha(folder) == before
    return lines[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_warmstart_refuses_a_malformed_checkpoint_in_one_line(
    variant: str, valid, tmp_path: Path, capsys
) -> None:
    damage, phrase = VARIANTS[variant]
    checkpoint, net = valid["stock"]
    path = tmp_path / "checkpoint_final.pth"
    torch.save(damage(checkpoint, net), path)
    line = _run_cli(["warmstart", str(path), str(tmp_path / "pde_init.pth")], tmp_path, capsys)
    assert line.startswith("error: STOCK_CHECKPOINT: ") and phrase in line
    assert str(path) in line


@pytest.mark.parametrize("variant", sorted({**VARIANTS, **INSPECT_ONLY}))
def test_inspect_refuses_a_malformed_checkpoint_in_one_line(
    variant: str, valid, tmp_path: Path, capsys
) -> None:
    damage, phrase = {**VARIANTS, **INSPECT_ONLY}[variant]
    checkpoint, net = valid["pde"]
    path = tmp_path / "checkpoint_final.pth"
    torch.save(damage(checkpoint, net), path)
    argv = ["inspect", str(path), "--json", str(tmp_path / "r.json")]
    line = _run_cli(argv, tmp_path, capsys)
    assert line.startswith("error: CHECKPOINT: ") and phrase in line
    assert str(path) in line


def test_the_valid_checkpoints_pass(valid, tmp_path: Path, capsys) -> None:
    """The damage above is what makes the commands refuse."""
    for kind, argv in (("stock", ["warmstart"]), ("pde", ["inspect"])):
        path = tmp_path / f"{kind}.pth"
        torch.save(valid[kind][0], path)
        extra = [str(tmp_path / "out.pth")] if kind == "stock" else []
        assert main([*argv, str(path), *extra]) == 0, capsys.readouterr().err
    assert (tmp_path / "out.pth").is_file()


def test_build_network_names_the_checkpoint_and_flag(valid) -> None:
    checkpoint = _init_args(valid["pde"][0], configuration="2d_nope")
    with pytest.raises(CheckpointError, match=r"^CKPT: ck\.pth: its configuration '2d_nope'"):
        build_network_for_checkpoint(nnUNetTrainerPDE3D, checkpoint, "ck.pth", "CKPT")


def test_a_whole_module_as_weights_prints_no_traceback(valid, tmp_path: Path) -> None:
    """As a user runs it: a subprocess, stderr is the one line and nothing else."""
    checkpoint, net = valid["pde"]
    path = tmp_path / "checkpoint_final.pth"
    torch.save(_with(checkpoint, network_weights=net), path)
    proc = subprocess.run(
        [sys.executable, "-m", "nnunet_pde.cli", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch.nn.Module" in lines[0], proc.stderr


def test_an_unreadable_file_is_not_called_truncated(
    valid, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A permission or I/O error says so (running as root, chmod 000 would not stop us)."""
    path = tmp_path / "checkpoint_final.pth"
    torch.save(valid["pde"][0], path)

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    line = _run_cli(["inspect", str(path)], tmp_path, capsys)
    assert line == f"error: CHECKPOINT: cannot read {path}: Permission denied; check that the " + (
        "file is readable"
    )


def test_an_epoch_saved_as_a_tensor_still_gives_a_json_report(
    valid, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "checkpoint_final.pth"
    torch.save(_with(valid["pde"][0], current_epoch=torch.tensor(7)), path)
    assert main(["inspect", str(path), "--json", str(tmp_path / "r.json")]) == 0
    assert '"epoch": 7' in (tmp_path / "r.json").read_text()
    capsys.readouterr()
