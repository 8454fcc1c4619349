"""Issue 22's candidates for a gate that leaves 0: a PDE parameter group with its own
learning rate (``_PDELR10``) and a reparametrised gate (``_GateScale10``).

Each must keep the block the identity at initialisation, change only what its name says, and
do it at every epoch of the schedule.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from plan_fixtures import load_plans

from nnunet_pde.env import list_trainers
from nnunet_pde.network import pde_blocks
from nnunet_pde.pde import PDEBlock, PDEConfig
from nnunet_pde.pde.kernels import backend


def _make_trainer(name, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    plans, ds = load_plans("tiny_plain")
    plans["continue_training"] = False
    cls = list_trainers()[name]
    trainer = cls(plans, "3d_fullres", 0, ds, torch.device("cpu"))
    trainer.network = cls.build_network_architecture(
        trainer.plans_manager,
        trainer.configuration_manager,
        1,
        len(ds["labels"]),
        True,
    )
    return trainer


def test_default_has_one_group_with_every_parameter(tmp_path, monkeypatch):
    t = _make_trainer("nnUNetTrainerPDE3D", tmp_path, monkeypatch)
    opt, sched = t.configure_optimizers()
    (group,) = opt.param_groups
    assert len(group["params"]) == len(list(t.network.parameters()))
    assert group["weight_decay"] == t.adamw_weight_decay


def test_pde_group_gets_ten_times_the_lr_at_every_epoch_and_no_decay(tmp_path, monkeypatch):
    t = _make_trainer("nnUNetTrainerPDE3D_PDELR10", tmp_path, monkeypatch)
    t.num_epochs = 20
    opt, sched = t.configure_optimizers()
    net_group, pde_group = opt.param_groups
    block_params = {id(p) for b in pde_blocks(t.network).values() for p in b.parameters()}
    assert block_params and {id(p) for p in pde_group["params"]} == block_params
    assert not block_params & {id(p) for p in net_group["params"]}
    assert len(net_group["params"]) + len(pde_group["params"]) == len(list(t.network.parameters()))
    assert pde_group["weight_decay"] == 0.0 and net_group["weight_decay"] == t.adamw_weight_decay
    for epoch in (0, 1, 7, 19):
        sched.step(epoch)
        base = sched.lr_at(epoch)
        assert net_group["lr"] == pytest.approx(base, abs=1e-15)
        assert pde_group["lr"] == pytest.approx(10 * base, abs=1e-15)


def test_gate_scale_trainer_changes_only_the_gate(tmp_path, monkeypatch):
    default = list_trainers()["nnUNetTrainerPDE3D"].pde_config
    scaled = list_trainers()["nnUNetTrainerPDE3D_GateScale10"].pde_config
    assert scaled.gate_scale == 10.0
    assert dataclasses.replace(scaled, gate_scale=1.0) == default


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_scaled_gate_equals_a_plain_gate_ten_times_larger(backend_name, monkeypatch):
    """Same output as the plain block with gamma * 10, and d/dgamma ten times d/dgate."""
    monkeypatch.setenv(backend.ENV, backend_name)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, 5, dtype=torch.float64)
    plain = PDEBlock(3, (1.0, 1.0, 2.0), PDEConfig()).double()
    scaled = PDEBlock(3, (1.0, 1.0, 2.0), PDEConfig(gate_scale=10.0)).double()
    scaled.load_state_dict(plain.state_dict())
    assert torch.equal(scaled(x), x)  # identity at initialisation (gamma = 0)
    g = torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64)
    with torch.no_grad():
        scaled.gamma.copy_(g)
        plain.gamma.copy_(10 * g)
    ys, yp = scaled(x), plain(x)
    torch.testing.assert_close(ys, yp, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ys, x)
    ys.square().sum().backward()
    yp.square().sum().backward()
    torch.testing.assert_close(scaled.gamma.grad, 10 * plain.gamma.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scaled.gate(), plain.gamma.detach())


def test_gate_scale_is_validated():
    with pytest.raises(ValueError, match="gate_scale"):
        PDEConfig(gate_scale=0.0)
