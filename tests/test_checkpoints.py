"""Warm-starting PDE3D from a stock nnU-Net checkpoint (`nnunet-pde warmstart`)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from plan_fixtures import load_plans, managers

from nnunet_pde.checkpoints import warmstart_checkpoint
from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_warmstarted_checkpoint_is_accepted_by_nnunet_and_computes_the_stock_output(
    tmp_path, write_checkpoint
):
    stock_file = tmp_path / "stock.pth"
    stock = write_checkpoint(stock_file, nnUNetTrainer, epoch=1000)
    pm, cm, n_in, n_out = managers(*load_plans("tiny_plain"))
    before = _sha(stock_file)
    out = warmstart_checkpoint(stock_file, tmp_path / "pde.pth", nnUNetTrainerPDE3D)
    assert _sha(stock_file) == before  # input only read

    pde = nnUNetTrainerPDE3D.build_network_architecture(pm, cm, n_in, n_out, True)
    load_pretrained_weights(pde, str(out))  # nnU-Net's own -pretrained_weights path
    stock_sd, pde_sd = stock.state_dict(), pde.state_dict()
    for key, value in stock_sd.items():
        if ".seg_layers." not in key:  # nnU-Net never transfers the segmentation heads
            assert torch.equal(pde_sd[key], value), key

    # the written weights, loaded in full, compute exactly the stock network's output
    pde.load_state_dict(torch.load(out, weights_only=False)["network_weights"])
    stock.eval(), pde.eval()
    stock.decoder.deep_supervision = pde.decoder.deep_supervision = False
    x = torch.randn(1, n_in, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(pde(x), stock(x))


def test_refuses_to_overwrite_and_rejects_mismatched_plans(tmp_path, write_checkpoint):
    stock_file = tmp_path / "stock.pth"
    write_checkpoint(stock_file, nnUNetTrainer, epoch=1000)
    target = tmp_path / "pde.pth"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        warmstart_checkpoint(stock_file, target, nnUNetTrainerPDE3D)
    assert target.read_bytes() == b"keep me"
    warmstart_checkpoint(stock_file, target, nnUNetTrainerPDE3D, overwrite=True)
    assert "network_weights" in torch.load(target, weights_only=False)

    # weights of one plans, init_args of another: a clear error, nothing written
    ckpt = torch.load(stock_file, weights_only=False)
    plans, ds = load_plans("tiny_resencm")
    ckpt["init_args"].update(plans=plans, dataset_json=ds)
    bad = tmp_path / "bad.pth"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="does not match"):
        warmstart_checkpoint(bad, tmp_path / "never.pth", nnUNetTrainerPDE3D)
    assert not (tmp_path / "never.pth").exists()


def test_cli_warmstart_reports_errors_without_traceback(tmp_path, write_checkpoint):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnunet_pde.cli",
            "warmstart",
            str(tmp_path / "missing.pth"),
            str(tmp_path / "out.pth"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    write_checkpoint(tmp_path / "stock.pth", nnUNetTrainer, epoch=1000)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnunet_pde.cli",
            "warmstart",
            str(tmp_path / "stock.pth"),
            str(tmp_path / "out.pth"),
            "--trainer",
            "nnUNetTrainerNope",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown trainer" in proc.stderr
