#!/usr/bin/env python
"""The figures of the PDE layer v2 against the previous default, measured in one run.

* checkerboard factor (L2 ratio) after K=2 steps at tau=10, default solver vs the previous
  default (one Jacobi sweep), no reaction;
* relative RMS gradient of every PDE parameter at init (gate opened to 0.5, nnU-Net's
  Dice+CE on a random target) for _Explicit, _CrankNicolson and _Moment on the tiny plans;
* per-channel feature std (min over channels, relative to the start) after optimising the
  regulariser alone (Adam, 150 steps), new vs previous;
* relative mass drift of the default solver (K=2, tau=10, no reaction);
* one default block, training mode, forward+backward time (median) and bytes saved for
  backward at ``--shape`` (default 2x32x48^3), previous vs new (recording on and off), and a
  3x3x3 convolution 32->32 at the same shape for scale.

The previous layer is loaded from git (``--previous-rev``, the commit before v2), so both run
in this process on the same machine state.

    python scripts/pde_v2_report.py --output pde_v2_report.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from benchmark_pde import count_saved_tensors  # noqa: E402

from nnunet_pde.pde import PDEBlock, PDEConfig  # noqa: E402


def load_previous(rev: str, root: Path):
    """``nnunet_pde/pde`` at ``rev`` as the package ``pde_previous``."""
    pkg = root / "pde_previous"
    pkg.mkdir()
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "nnunet_pde/pde/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in names:
        text = subprocess.run(
            ["git", "show", f"{rev}:{name}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        (pkg / Path(name).name).write_text(text)
    sys.path.insert(0, str(root))
    return importlib.import_module("pde_previous")


def set_tau(block, tau: float) -> None:
    c = block.config
    with torch.no_grad():
        block.tau_logit.fill_(float(torch.log(torch.tensor(tau / (c.tau_max - tau)))))


def checkerboard_factor(module, solver: str) -> float:
    idx = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij")).sum(0)
    u = ((-1.0) ** idx).double().reshape(1, 1, 16, 16, 16)
    block = module.PDEBlock(
        1, (1.0, 1.0, 1.0), module.PDEConfig(solver=solver, response=False, tau_max=100.0)
    ).double()
    set_tau(block, 10.0)
    with torch.no_grad():
        out = block.evolve(u)
    return float(out.norm() / u.norm())


def gradients_at_init(names: list[str]) -> dict[str, dict[str, float]]:
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from plan_fixtures import load_plans, managers

    from nnunet_pde.env import list_trainers
    from nnunet_pde.network import pde_blocks
    from nnunet_pde.pde.describe import relative_parameter_gradients

    pm, cm, n_in, n_out = managers(*load_plans("tiny_plain"))
    dice_ce = DC_and_CE_loss(
        {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    report = {}
    for name in names:
        torch.manual_seed(0)
        net = list_trainers()[name].build_network_architecture(pm, cm, n_in, n_out, False)
        for blk in pde_blocks(net).values():
            blk.gamma.data.fill_(0.5)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(2, n_in, *cm.patch_size, generator=gen)
        dice_ce(net(x), torch.randint(0, n_out, (2, 1, *cm.patch_size), generator=gen)).backward()
        (blk,) = pde_blocks(net).values()
        report[name] = relative_parameter_gradients(blk)
    return report


def collapse_ratio(module, loss_of) -> float:
    """min over channels of std(x) after / before optimising the regulariser alone."""
    torch.manual_seed(0)
    block = module.PDEBlock(4, (2.0, 1.0, 1.0), module.PDEConfig())
    block.gamma.data.fill_(1.0)
    block.train()
    x = torch.randn(2, 4, 8, 8, 8).requires_grad_(True)
    start = x.detach().std(dim=(2, 3, 4))
    opt = torch.optim.Adam([x, *block.parameters()], lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss_of(block, x).backward()
        opt.step()
    return float((x.detach().std(dim=(2, 3, 4)) / start).min())


def new_loss(block, x):
    block.record_consistency = True
    block(x)
    return block.last_residuals["energy"]


def previous_loss(block, x):
    block(x)
    return sum(block.last_residuals.values())


def mass_drift() -> float:
    block = PDEBlock(3, (2.0, 1.0, 1.0), PDEConfig(response=False, tau_max=100.0))
    set_tau(block, 10.0)
    x = torch.randn(2, 3, 16, 16, 16, generator=torch.Generator().manual_seed(0)) + 2.0
    with torch.no_grad():
        out = block.evolve(x)
    dims = (2, 3, 4)
    return float(
        ((out.double().sum(dims) - x.double().sum(dims)).abs() / x.double().abs().sum(dims)).max()
    )


def time_and_bytes(module: torch.nn.Module, shape, reps: int) -> tuple[float, int]:
    x = torch.randn(*shape, requires_grad=True)
    times = []
    for i in range(reps + 1):
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        module(x).mean().backward()
        if i:
            times.append(time.perf_counter() - t0)
    with count_saved_tensors(list(module.parameters()) + [x]) as counted:
        module(x).mean()
    times.sort()
    return times[len(times) // 2], counted["bytes"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--previous-rev", default="3d98d88", help="git revision before v2")
    parser.add_argument("--shape", type=int, nargs=5, default=[2, 32, 48, 48, 48])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        prev = load_previous(args.previous_rev, Path(tmp))
        new = sys.modules["nnunet_pde.pde"]
        out: dict = {
            "shape": args.shape,
            "threads": args.threads,
            "previous_rev": args.previous_rev,
        }
        out["checkerboard_factor"] = {
            "new_semi_implicit_aos": checkerboard_factor(new, "semi_implicit"),
            "previous_semi_implicit_one_jacobi_sweep": checkerboard_factor(prev, "semi_implicit"),
        }
        out["relative_gradients_at_init"] = gradients_at_init(
            [
                "nnUNetTrainerPDE3D_Explicit",
                "nnUNetTrainerPDE3D_CrankNicolson",
                "nnUNetTrainerPDE3D_Moment",
            ]
        )
        out["feature_std_after_regulariser_alone"] = {
            "new": collapse_ratio(new, new_loss),
            "previous": collapse_ratio(prev, previous_loss),
        }
        out["mass_drift_default_solver"] = mass_drift()
        c = args.shape[1]
        torch.manual_seed(0)
        blocks = {
            "previous_default_training": prev.PDEBlock(c, (1.0, 1.0, 1.0), prev.PDEConfig()),
            "new_default_training_recording": PDEBlock(c, (1.0, 1.0, 1.0), PDEConfig()),
            "new_default_training_no_record": PDEBlock(c, (1.0, 1.0, 1.0), PDEConfig()),
        }
        blocks["new_default_training_recording"].record_consistency = True
        for blk in blocks.values():
            blk.gamma.data.fill_(0.5)
            blk.train()
        blocks["conv3x3x3_32to32"] = torch.nn.Conv3d(c, c, 3, padding=1)
        input_bytes = 4 * int(torch.tensor(args.shape).prod())
        cost = {}
        for name, module in blocks.items():
            t, b = time_and_bytes(module, args.shape, args.reps)
            cost[name] = {"median_fwd_bwd_s": t, "saved_bytes": b, "saved_x_input": b / input_bytes}
        conv_t = cost["conv3x3x3_32to32"]["median_fwd_bwd_s"]
        for v in cost.values():
            v["time_x_conv"] = v["median_fwd_bwd_s"] / conv_t
        out["block_cost"] = cost
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
