"""Parameter count, activation memory and CPU time of the baselines on a plans file.

    python scripts/measure_baselines.py tests/fixtures/plans/plans_brats_plain.json \\
        tests/fixtures/plans/dataset_brats_regions.json --input 64 64 64

Activation memory is the number of bytes of the tensors autograd saves for the backward
pass during one training-mode forward (distinct storages, counted through
``torch.autograd.graph.saved_tensors_hooks``), i.e. what a training step must hold besides
weights, gradients and optimiser state; it is device-independent and grows linearly with
the number of voxels and the batch size (the attention windows have a fixed size), so the
figure for nnU-Net's 128^3 x batch 2 is the 64^3 x batch 1 figure times 16. Time is the
fastest of ``--repeats`` forward+backward passes on the CPU (a relative figure only).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn


def saved_activation_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves during ``net(x)`` (training mode)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            seen[id(t)] = t.numel() * t.element_size()
        return t

    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    return sum(seen.values())


def step_seconds(net: nn.Module, x: torch.Tensor, repeats: int = 2) -> float:
    """Fastest forward + backward (sum of output means) of ``repeats`` in seconds."""
    best = float("inf")
    for _ in range(repeats):
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().mean() for o in outs).backward()
        best = min(best, time.perf_counter() - t0)
    return best


def builders() -> dict[str, Callable]:
    """Trainer name -> its build_network_architecture (plus nnU-Net's own network)."""
    from nnunet_pde.trainers.nnUNetTrainerBaselines import (
        nnUNetTrainerESUNet,
        nnUNetTrainerSwinUNet3D,
        nnUNetTrainerSwinUNETR,
        nnUNetTrainerVNet,
    )
    from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D_Backbone

    return {
        c.__name__: c.build_network_architecture
        for c in (
            nnUNetTrainerPDE3D_Backbone,
            nnUNetTrainerVNet,
            nnUNetTrainerSwinUNet3D,
            nnUNetTrainerESUNet,
            nnUNetTrainerSwinUNETR,
        )
    }


def main(argv: list[str] | None = None) -> None:
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_pde.baselines.plans import plans_with_adapted_patch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("plans")
    p.add_argument("dataset_json")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--input", type=int, nargs=3, default=[64, 64, 64], help="z y x voxels")
    p.add_argument("--time-input", type=int, nargs=3, default=None, help="z y x for timing")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="trainer names")
    args = p.parse_args(argv)

    with open(args.plans) as f:
        raw_plans = json.load(f)
    with open(args.dataset_json) as f:
        dataset_json = json.load(f)
    torch.manual_seed(0)
    results = {}
    for name, build in builders().items():
        if args.only and name not in args.only:
            continue
        divisor = {"nnUNetTrainerVNet": 16, "nnUNetTrainerSwinUNETR": 32}.get(name)
        plans = plans_with_adapted_patch(raw_plans, args.configuration, divisor)
        pm = PlansManager(plans)
        cm = pm.get_configuration(args.configuration)
        n_in = determine_num_input_channels(pm, cm, dataset_json)
        n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
        net = build(pm, cm, n_in, n_out, True)
        n_params = sum(p.numel() for p in net.parameters())
        x = torch.randn(1, n_in, *args.input)
        act = saved_activation_bytes(net, x)
        row = {
            "params_M": round(n_params / 1e6, 2),
            "patch": list(cm.patch_size),
            f"act_GiB_{'x'.join(map(str, args.input))}_b1_fp32": round(act / 2**30, 3),
        }
        if args.time_input:
            xt = torch.randn(1, n_in, *args.time_input)
            row["step_s_" + "x".join(map(str, args.time_input))] = round(
                step_seconds(net, xt, args.repeats), 3
            )
        results[name] = row
        print(name, json.dumps(row), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
