#!/usr/bin/env python
"""One-command GPU check of PDE3D-UNet against the stock nnU-Net network.

For the BraTS-sized plans fixture (``tests/fixtures/plans/plans_brats_plain.json``, 4 input
channels, 3 regions) at its real 3d_fullres patch (128^3) and batch 2, measures for the stock
network and PDE3D with the default placement, ``_Stages01`` (blocks after encoder stages 0
and 1) and ``_AllStages``, in each precision mode (fp16 autocast with GradScaler, as
nnU-Net trains on CUDA; bf16 autocast) and each execution mode (eager; ``torch.compile``
with default settings, which nnU-Net enables on CUDA):

* training step time (forward with deep supervision, Dice-free CE + the PDE regulariser
  weighted as the default trainer does, backward, gradient clipping at 12, optimiser
  step), median over the steps after the first two;
* peak memory of the step (``torch.cuda.max_memory_allocated``);
* that every loss and every parameter stays finite over ``--steps`` steps (default 20);
* the fused PDE step's achieved memory bandwidth at the stage-0 feature map (2x32x128^3):
  the bytes its kernels must move at least (forward: read u and b, write the result;
  backward: read u, b and the upstream gradient, write two gradients), over its measured
  time, against the device's own copy bandwidth measured in the same run.

Prints one table and writes JSON (``--output``, default ``gpu_check.json``). Exits 1 when
any configuration fails (an exception, or a non-finite loss or parameter), 2 for bad
arguments. ``--time-budget`` (seconds, default 420) skips what no longer fits and says so.
On a CPU (``--device cpu --patch 32 32 32``, the test in tests/test_gpu_check.py) only bf16
runs (no fp16 GradScaler training there) and the copy bandwidth is the host's.

    python scripts/gpu_check.py                       # on the GPU machine
    python scripts/gpu_check.py --device cpu --patch 32 32 32 --steps 3 \
        --plans tests/fixtures/plans/plans_tiny_plain.json \
        --dataset-json tests/fixtures/plans/dataset_tiny_labels.json --compile-backend aot_eager

(32^3 on the BraTS plans would leave a 1-voxel bottleneck, on which nnU-Net's instance norm
refuses to train; the CPU check therefore uses the 4-stage tiny plans.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "tests" / "fixtures" / "plans" / "plans_brats_plain.json"
DATASET = REPO / "tests" / "fixtures" / "plans" / "dataset_brats_regions.json"
VARIANTS = ("stock", "default", "stages01", "allstages")
PRECISIONS = ("fp16", "bf16")
MODES = ("eager", "compile")
LAMBDA_PDE = 0.1  # the default trainer's weight of the PDE regulariser


def total_stride(plans: Path) -> list[int]:
    """Product of the 3d_fullres strides per axis (numpy axis order)."""
    strides = json.loads(plans.read_text())["configurations"]["3d_fullres"]["architecture"][
        "arch_kwargs"
    ]["strides"]
    out = [1, 1, 1]
    for s in strides:
        s = [s] * 3 if isinstance(s, int) else s
        out = [a * int(b) for a, b in zip(out, s, strict=True)]
    return out


def build(variant: str, plans: Path, dataset: Path, seed: int) -> tuple[nn.Module, int, int]:
    """The network of ``variant`` (same seed: same backbone weights), input and output
    channels."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_pde.network import build_pde3d_network
    from nnunet_pde.pde import PDEConfig

    pm = PlansManager(json.loads(plans.read_text()))
    cm = pm.get_configuration("3d_fullres")
    dj = json.loads(dataset.read_text())
    n_in = determine_num_input_channels(pm, cm, dj)
    n_out = pm.get_label_manager(dj).num_segmentation_heads
    config = None if variant == "stock" else PDEConfig()
    if variant == "stages01":
        config = dataclasses.replace(PDEConfig(), stages=(0, 1))
    torch.manual_seed(seed)
    net = build_pde3d_network(
        pm, cm, n_in, n_out, True, config=config, all_stages=variant == "allstages"
    )
    return net, n_in, n_out


def pde_blocks(model: nn.Module) -> list[nn.Module]:
    from nnunet_pde.pde import PDEBlock

    return [m for m in model.modules() if isinstance(m, PDEBlock)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(
    variant: str, precision: str, mode: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """``--steps`` training steps of one configuration; times, memory, finiteness."""
    model, n_in, n_out = build(variant, args.plans, args.dataset_json, args.seed)
    model = model.to(device).train()
    blocks = pde_blocks(model)
    for b in blocks:
        b.record_consistency = True
        with torch.no_grad():
            b.gamma.fill_(0.5)  # as after some training; 0 makes the blocks the identity
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_scaler = precision == "fp16" and device.type == "cuda"
    dtype = torch.float16 if use_scaler else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    runnable = model
    if mode == "compile":
        runnable = torch.compile(model, backend=args.compile_backend)
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    x = torch.randn(args.batch, n_in, *args.patch, generator=g).to(device)
    target = torch.randint(0, 2, (args.batch, n_out, *args.patch), generator=g).float()
    target = target.to(device)
    times, losses = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_first = None
    for step in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype):
            outputs = runnable(x)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            loss = nn.functional.binary_cross_entropy_with_logits(outputs[0].float(), target)
            loss = loss + sum(o.float().mean() * 0.0 for o in outputs[1:])
            for b in blocks:
                if b.last_residuals is not None:
                    loss = loss + LAMBDA_PDE * b.last_residuals["energy"] / len(blocks)
                    b.clear_residuals()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 12)
        scaler.step(opt)
        scaler.update()
        _sync(device)
        dt = time.perf_counter() - t0
        if step == 0:
            t_first = dt
        times.append(dt)
        losses.append(float(loss.detach()))
    finite = all(math.isfinite(v) for v in losses) and all(
        bool(torch.isfinite(p).all()) for p in model.parameters()
    )
    measured = times[2:] if len(times) > 2 else times
    out: dict[str, Any] = {
        "variant": variant,
        "precision": precision if use_scaler or precision == "bf16" else "bf16 (no fp16 on CPU)",
        "mode": mode,
        "steps": args.steps,
        "first_step_s": t_first,
        "median_step_s": statistics.median(measured),
        "finite": finite,
        "losses_first_last": [losses[0], losses[-1]],
        "pde_blocks": len(blocks),
    }
    if device.type == "cuda":
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def copy_bandwidth(device: torch.device, numel: int) -> float:
    """Bytes per second of ``dst.copy_(src)`` (one read, one write), best of 5."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def fused_bandwidth(device: torch.device, shape: tuple[int, ...]) -> dict[str, Any]:
    """Achieved bandwidth of the fused diffusion kernels (forward + backward) at ``shape``."""
    from nnunet_pde.pde import fused
    from nnunet_pde.pde.kernels import backend

    m, c = len(shape) - 2, shape[1]
    u = torch.randn(*shape, device=device)
    b = torch.randn_like(u)
    gr = torch.randn_like(u)
    cA = torch.rand(m, c, device=device)
    k = torch.rand(m, c, device=device) + 0.5
    fused.diffusion_forward(u, b, cA, None, k)  # warm-up (kernel build)
    fused.diffusion_backward(u, b, gr, cA, None, k)
    best = math.inf
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        fused.diffusion_forward(u, b, cA, None, k)
        fused.diffusion_backward(u, b, gr, cA, None, k)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    essential = 8 * u.numel() * u.element_size()  # 3 tensors forward, 5 backward
    peak = copy_bandwidth(device, u.numel())
    return {
        "shape": list(shape),
        "implementation": backend.choose(u).reason,
        "seconds": best,
        "achieved_bytes_per_s": essential / best,
        "copy_bytes_per_s": peak,
        "fraction_of_copy_bandwidth": essential / best / peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128], metavar=("D", "H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="training steps per configuration")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds (default 420)")
    p.add_argument("--plans", type=Path, default=PLANS)
    p.add_argument("--dataset-json", type=Path, default=DATASET)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("gpu_check.json"))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda: no CUDA device is available (use --device cpu)", file=sys.stderr
        )
        return 2
    if args.steps < 1 or args.batch < 1 or min(args.patch) < 1:
        print("error: --steps, --batch and --patch must be positive", file=sys.stderr)
        return 2
    for flag, path in (("--plans", args.plans), ("--dataset-json", args.dataset_json)):
        if not path.is_file():
            print(f"error: {flag}: file not found: {path}", file=sys.stderr)
            return 2
    stride = total_stride(args.plans)
    if any(p % s or p // s < 2 for p, s in zip(args.patch, stride, strict=True)):
        print(
            f"error: --patch {' '.join(map(str, args.patch))}: every axis must be a multiple of "
            f"the plans' total stride {'x'.join(map(str, stride))} with at least 2 voxels "
            "left at the bottleneck (nnU-Net's instance norm cannot train on 1 voxel); e.g. "
            f"{' '.join(str(2 * s) for s in stride)}, or smaller plans (--plans)",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failed = False
    for mode in args.modes:
        for precision in args.precisions:
            if args.device == "cpu" and precision == "fp16":
                continue  # no fp16 GradScaler training on the CPU: bf16 covers it
            for variant in args.variants:
                if time.perf_counter() - start > args.time_budget:
                    rows.append({"variant": variant, "precision": precision, "mode": mode,
                                 "skipped": "time budget"})  # fmt: skip
                    continue
                try:
                    row = run_config(variant, precision, mode, args, device)
                    failed |= not row["finite"]
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    traceback.print_exc()
                    row = {"variant": variant, "precision": precision, "mode": mode,
                           "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                    failed = True
                rows.append(row)
                print(json.dumps(row), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    bandwidth = None
    try:
        bandwidth = fused_bandwidth(device, (args.batch, 32, *args.patch))
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        bandwidth = {"error": f"{type(exc).__name__}: {exc}"}
        failed = True
    stock = {(r["precision"], r["mode"]): r for r in rows if r.get("variant") == "stock"}
    print(f"\n{'variant':<10} {'precision':<22} {'mode':<8} {'step':>9} {'x stock':>8} "
          f"{'memory':>9} {'x stock':>8} finite")  # fmt: skip
    for r in rows:
        if "median_step_s" not in r:
            print(f"{r['variant']:<10} {r['precision']:<22} {r['mode']:<8} "
                  f"{r.get('error') or r.get('skipped')}")  # fmt: skip
            continue
        ref = stock.get((r["precision"], r["mode"]))
        rt = r["median_step_s"] / ref["median_step_s"] if ref else float("nan")
        mem = r.get("peak_memory_bytes")
        rm = (
            mem / ref["peak_memory_bytes"] if ref and mem and ref.get("peak_memory_bytes") else None
        )
        r["time_ratio_to_stock"] = rt
        r["memory_ratio_to_stock"] = rm
        print(
            f"{r['variant']:<10} {r['precision']:<22} {r['mode']:<8} "
            f"{r['median_step_s'] * 1e3:>7.0f}ms {rt:>8.2f} "
            f"{(mem or 0) / 2**30:>7.2f}GB {(rm or float('nan')):>8.2f} {r['finite']}"
        )
    if bandwidth and "error" not in bandwidth:
        print(
            f"\nfused diffusion step at {'x'.join(map(str, bandwidth['shape']))} "
            f"({bandwidth['implementation']}): {bandwidth['seconds'] * 1e3:.1f} ms forward+"
            f"backward, {bandwidth['achieved_bytes_per_s'] / 1e9:.1f} GB/s of essential "
            f"traffic = {bandwidth['fraction_of_copy_bandwidth']:.2f} x the device's copy "
            f"bandwidth ({bandwidth['copy_bytes_per_s'] / 1e9:.1f} GB/s)"
        )
    result = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "patch": args.patch,
        "batch": args.batch,
        "rows": rows,
        "fused_bandwidth": bandwidth,
        "failed": failed,
        "wall_s": time.perf_counter() - start,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output} ({'FAILED' if failed else 'all configurations passed'})")
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
