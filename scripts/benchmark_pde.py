#!/usr/bin/env python
"""Step time and memory of PDE3D-UNet against the stock nnU-Net network, same run.

For one plans file and configuration, builds the stock network nnU-Net plans
(``build_pde3d_network(..., config=None)``) and PDE3D-UNet (same seed, so the same backbone
weights, plus PDE blocks at the chosen placement), then alternates them -- stock, PDE3D,
stock, PDE3D, ... -- so that drifts of the machine (other jobs, clocks, thermals) hit both
alike. One measured step is a training step without the optimiser: a ``randn`` batch of
shape ``(batch, C_in, *patch)`` (axis order ``(N, C, D, H, W)``, voxels), forward with deep
supervision, loss = sum over the deep-supervision outputs of their means, backward.

What "memory" means depends on the device (the JSON says which under ``memory_kind``):

* CUDA: ``torch.cuda.max_memory_allocated`` during the step after
  ``reset_peak_memory_stats``, less what was allocated before the step (the other
  network's weights, the input), plus the network's own weights: its weights, gradients,
  activations and workspace, per rep.
* CPU: the bytes of the tensors autograd saves for backward (``saved_tensors_hooks``,
  each storage counted once, parameters excluded), measured once in a separate untimed
  eager step: the activation memory of training, which is what a PDE block adds (with
  ``--checkpointing`` the inputs that checkpoint keeps for recomputation, one feature map
  per step and block, are invisible to the hooks and not counted). With
  ``--rss`` also the peak resident set size increase of one step, measured in a fresh
  child process per model (``VmHWM`` of ``/proc/self/status`` after resetting it through
  ``/proc/self/clear_refs``; ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` where that is
  impossible).

Example (the figures of docs/performance.md)::

    python scripts/benchmark_pde.py --plans tests/fixtures/plans/plans_brats_plain.json \\
        --dataset-json tests/fixtures/plans/dataset_brats_regions.json \\
        --patch 64 64 64 --batch 2 --device cpu --placement default --reps 5 \\
        --output bench_default.json

Exit code 0 on success, 2 for bad arguments (with ``error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import multiprocessing
import os
import platform
import re
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODELS: tuple[str, ...] = ("stock", "pde3d")


class BenchmarkError(ValueError):
    """Bad input the user can fix (reported as ``error: ...``, exit code 2)."""


# --------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Placement:
    """Where PDE blocks go: ``stages`` for :class:`PDEConfig`, or every stage."""

    label: str
    stages: tuple[int, ...] | None  # None: PDEConfig's default
    all_stages: bool = False


def parse_placement(text: str) -> Placement:
    """``default``, ``all`` or comma-separated encoder stage indices (``0,2,4``; negative
    indices count from the bottleneck, ``-1``)."""
    text = text.strip()
    if text == "default":
        return Placement("default", None)
    if text == "all":
        return Placement("all", None, all_stages=True)
    try:
        stages = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise BenchmarkError(
            f"--placement must be 'default', 'all' or stage indices like 0,2,4; got '{text}'"
        ) from None
    if not stages:
        raise BenchmarkError(f"--placement names no stage: '{text}'")
    return Placement(",".join(str(s) for s in stages), stages)


def total_stride(strides: Sequence[Sequence[int] | int], ndim: int) -> tuple[int, ...]:
    """Product of the plans' per-stage strides along each axis (numpy axis order)."""
    out = [1] * ndim
    for stride in strides:
        per_axis = [int(stride)] * ndim if isinstance(stride, int) else [int(s) for s in stride]
        out = [a * b for a, b in zip(out, per_axis, strict=True)]
    return tuple(out)


def check_patch(patch: Sequence[int], strides: Sequence) -> None:
    """Raise :class:`BenchmarkError` unless every patch axis is a positive multiple of the
    network's total stride along it."""
    stride = total_stride(strides, len(patch))
    if len(patch) != len(stride):
        raise BenchmarkError(f"--patch needs {len(stride)} sizes (D H W), got {list(patch)}")
    bad = [p for p, s in zip(patch, stride, strict=True) if p <= 0 or p % s]
    if bad:
        raise BenchmarkError(
            f"--patch {' '.join(map(str, patch))} is not divisible by the network's total "
            f"stride {'x'.join(map(str, stride))} (product of the plans' strides); choose "
            f"multiples, e.g. {' '.join(str(s * max(1, round(p / s))) for p, s in zip(patch, stride, strict=True))}"  # noqa: E501
        )


def load_managers(plans_path: Path, dataset_json_path: Path, configuration: str) -> tuple:
    """(plans, dataset_json, plans_manager, configuration_manager, n_in, n_out)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    for flag, path in (("--plans", plans_path), ("--dataset-json", dataset_json_path)):
        if not path.is_file():
            raise BenchmarkError(f"{flag}: file not found: {path}")
    try:
        plans = json.loads(plans_path.read_text())
        dataset_json = json.loads(dataset_json_path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"not valid JSON: {exc}") from None
    if "configurations" not in plans:
        raise BenchmarkError(f"{plans_path} is not an nnU-Net plans file (no 'configurations')")
    if configuration not in plans["configurations"]:
        raise BenchmarkError(
            f"--configuration {configuration}: the plans have {', '.join(plans['configurations'])}"
        )
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    return plans, dataset_json, pm, cm, n_in, n_out


def build_models(
    pm: Any,
    cm: Any,
    n_in: int,
    n_out: int,
    placement: Placement,
    seed: int,
    checkpointing: bool = False,
) -> dict[str, nn.Module]:
    """Stock and PDE3D networks (deep supervision on) from the same seed; PDE blocks with
    :class:`PDEConfig`'s defaults except the stages and ``checkpointing``."""
    from nnunet_pde.network import UnsupportedPlansError, build_pde3d_network
    from nnunet_pde.pde import PDEConfig

    config = PDEConfig(checkpointing=checkpointing)
    if placement.stages is not None:
        config = dataclasses.replace(config, stages=placement.stages)
    models: dict[str, nn.Module] = {}
    try:
        torch.manual_seed(seed)
        models["stock"] = build_pde3d_network(pm, cm, n_in, n_out, True, config=None)
        torch.manual_seed(seed)
        models["pde3d"] = build_pde3d_network(
            pm, cm, n_in, n_out, True, config=config, all_stages=placement.all_stages
        )
    except UnsupportedPlansError as exc:
        raise BenchmarkError(str(exc)) from None
    return models


# ---------------------------------------------------------------------- measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def training_step(model: nn.Module, x: torch.Tensor, amp: bool) -> None:
    """Forward (deep supervision), loss = sum of the outputs' means, backward."""
    model.zero_grad(set_to_none=True)
    with _autocast(x.device, amp):
        out = model(x)
    outputs = out if isinstance(out, (list, tuple)) else [out]
    loss = sum(o.float().mean() for o in outputs)
    loss.backward()


def timed_step(model: nn.Module, x: torch.Tensor, amp: bool) -> tuple[float, float, int | None]:
    """One training step: wall-clock seconds, CPU seconds of this process (all threads,
    user + system) and, on CUDA, the step's memory: the peak allocated during the step above
    what was allocated before it (other models' weights, the input), plus the bytes of
    ``model``'s own parameters. Gradients are freed before and after the step.

    On a CPU shared with other jobs the wall time depends on how many cores the others
    leave free; the process CPU time counts the work done and is much less sensitive.
    """
    device = x.device
    model.zero_grad(set_to_none=True)
    before = 0
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    training_step(model, x, amp)
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = None
    if device.type == "cuda":
        own = sum(p.numel() * p.element_size() for p in model.parameters())
        peak = int(torch.cuda.max_memory_allocated(device)) - before + own
    model.zero_grad(set_to_none=True)
    return seconds, cpu_seconds, peak


@contextlib.contextmanager
def count_saved_tensors(exclude: Sequence[torch.Tensor]) -> Iterator[dict[str, int]]:
    """Count the bytes of the storages autograd saves for backward inside the block.

    Every storage is counted once (several saved views of one tensor share it); storages of
    ``exclude`` (the parameters, which exist anyway) are left out. Yields a dict whose
    ``bytes`` and ``tensors`` are final after the block.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    result = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            result["bytes"] += storage.nbytes()
            result["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result


def block_input_shapes(
    network: nn.Module, batch: int, patch: Sequence[int], strides: Sequence
) -> dict[str, tuple[int, ...]]:
    """Input shape ``(N, C, D, H, W)`` of every PDE block, from its encoder stage index."""
    from nnunet_pde.network import pde_blocks

    channels = network.encoder.output_channels
    shapes = {}
    for name in pde_blocks(network):
        match = re.search(r"encoder\.stages\.(\d+)\.", name)
        if match is None:  # pragma: no cover - network.py only inserts into encoder stages
            raise BenchmarkError(f"cannot tell the encoder stage of block {name}")
        s = int(match.group(1))
        stride = total_stride(strides[: s + 1], len(patch))
        shapes[name] = (
            batch,
            int(channels[s]),
            *(p // f for p, f in zip(patch, stride, strict=True)),
        )
    return shapes


def time_block(
    block: nn.Module, shape: Sequence[int], device: torch.device, amp: bool, reps: int
) -> dict[str, Any]:
    """Forward+backward wall time of one PDE block alone on a ``randn`` input of ``shape``
    (loss = mean of the output), one warm-up call, then ``reps`` measured calls."""
    x = torch.randn(*shape, device=device, requires_grad=True)
    times = []
    for i in range(reps + 1):
        block.zero_grad(set_to_none=True)
        x.grad = None
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(device, amp):
            out = block(x)
        out.float().mean().backward()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return {"times_s": times, "median_time_s": _median(times)}


def parse_shape(text: str) -> tuple[int, ...]:
    """``2x32x48x48x48`` -> ``(2, 32, 48, 48, 48)`` (N, C, D, H, W)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 5 or min(shape) < 1:
        raise BenchmarkError(
            f"--block-vs-conv: '{text}' is not a shape NxCxDxHxW of positive integers, "
            "e.g. 2x32x48x48x48"
        )
    return shape


def _block_step(block: nn.Module, x: torch.Tensor) -> None:
    """Forward+backward of a block in training mode, the regulariser recorded and added to
    the loss as the default trainer does (``lambda_pde > 0``)."""
    block.zero_grad(set_to_none=True)
    x.grad = None
    out = block(x)
    loss = out.mean()
    residuals = getattr(block, "last_residuals", None)
    if residuals:
        loss = loss + residuals["energy"]
    loss.backward()


def block_vs_conv(
    shape: Sequence[int], device: torch.device, reps: int, seed: int, reference: bool = True
) -> dict[str, Any]:
    """One default :class:`PDEBlock` (fused steps; and, if ``reference``, the reference
    implementation) against one 3x3x3 convolution ``C -> C`` (padding 1, bias) at the same
    input shape: forward+backward wall times and the bytes each saves for backward relative
    to the input's bytes.

    The convolution and the fused block are alternated repetition by repetition (the order
    flipped every repetition), and besides the ratio of their medians the median of the
    per-repetition ratios is reported, which cancels the slow drifts of a shared machine.
    The reference implementation, whose allocations are tens of times larger, is timed
    after them, so that it cannot change the allocator's state between the two compared."""
    from nnunet_pde.pde import PDEBlock, PDEConfig

    torch.manual_seed(seed)
    c = int(shape[1])
    block = PDEBlock(c, (1.0, 1.0, 1.0), PDEConfig()).to(device).train()
    block.record_consistency = True
    with torch.no_grad():
        block.gamma.fill_(0.5)  # a trained gate; 0 would make backward skip nothing anyway
    conv = nn.Conv3d(c, c, 3, padding=1).to(device)
    x = torch.randn(*shape, device=device, requires_grad=True)
    variants: dict[str, Callable[[], None]] = {
        "conv3x3x3": lambda: _block_step(conv, x),
        "block_fused": lambda: _block_step(block, x),
    }
    if reference:

        def reference_step() -> None:
            block.fused = False
            try:
                _block_step(block, x)
            finally:
                block.fused = True

        variants["block_reference"] = reference_step
    saved: dict[str, int] = {}
    for name, step in variants.items():
        with count_saved_tensors([*block.parameters(), *conv.parameters(), x]) as counted:
            step()
        saved[name] = counted["bytes"]
    times: dict[str, list[float]] = {k: [] for k in variants}
    # per repetition: bytes of memory the process faulted in, and its system CPU time (on
    # the CPU mostly the kernel filling those pages), from getrusage
    faulted: dict[str, list[float]] = {k: [] for k in variants}
    system: dict[str, list[float]] = {k: [] for k in variants}
    page = os.sysconf("SC_PAGE_SIZE")

    def timed(name: str) -> None:
        _sync(device)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        variants[name]()
        _sync(device)
        times[name].append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        faulted[name].append(float((r1.ru_minflt - r0.ru_minflt) * page))
        system[name].append(r1.ru_stime - r0.ru_stime)

    compared = ["conv3x3x3", "block_fused"]
    for name in compared:  # warm-up (kernel build, allocator)
        variants[name]()
    for r in range(reps):
        for name in compared if r % 2 == 0 else compared[::-1]:
            timed(name)
    if reference:
        variants["block_reference"]()  # warm-up
        for _ in range(reps):
            timed("block_reference")
    input_bytes = x.numel() * x.element_size()
    conv_time = _median(times["conv3x3x3"])
    paired = [b / a for a, b in zip(times["conv3x3x3"], times["block_fused"], strict=True)]
    return {
        "shape": list(shape),
        "median_time_s": {k: _median(v) for k, v in times.items()},
        "times_s": times,
        "time_ratio_to_conv": {k: _median(v) / conv_time for k, v in times.items()},
        "fused_paired_ratio_median": _median(paired),
        "faulted_bytes_median": {k: _median(v) for k, v in faulted.items()},
        "system_time_s_median": {k: _median(v) for k, v in system.items()},
        "saved_bytes": saved,
        "saved_bytes_over_input": {k: v / input_bytes for k, v in saved.items()},
    }


def saved_tensor_bytes(model: nn.Module, x: torch.Tensor, amp: bool) -> int:
    """Bytes autograd saves for backward in one eager training step (parameters excluded)."""
    with count_saved_tensors(list(model.parameters())) as counted:
        training_step(model, x, amp)
    return counted["bytes"]


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    # ru_maxrss is in KiB on Linux; it covers the whole life of the process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: build one model, run one step, report its peak RSS."""
    torch.set_num_threads(spec["threads"])
    _, _, pm, cm, n_in, n_out = load_managers(
        Path(spec["plans"]), Path(spec["dataset_json"]), spec["configuration"]
    )
    placement = Placement(**spec["placement"])
    model = build_models(pm, cm, n_in, n_out, placement, spec["seed"], spec["checkpointing"])[
        spec["model"]
    ]
    torch.manual_seed(spec["seed"] + 1)
    x = torch.randn(spec["batch"], n_in, *spec["patch"])
    gc.collect()
    reset = _reset_peak_rss()
    before = _current_rss_bytes()
    training_step(model, x, spec["amp"])
    return {
        "rss_before_step_bytes": before,
        "peak_rss_bytes": _peak_rss_bytes(reset),
        "peak_rss_source": "VmHWM after clear_refs" if reset else "ru_maxrss (process life)",
    }


def peak_rss_increase(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one CPU training step above the RSS before it, in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        out = pool.apply(_rss_child, (spec,))
    out["peak_rss_increase_bytes"] = out["peak_rss_bytes"] - out["rss_before_step_bytes"]
    return out


# ----------------------------------------------------------------------------- run


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:,.0f} MiB"


def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build both networks, alternate their training steps and return the results."""
    if args.reps < 1:
        raise BenchmarkError(f"--reps must be >= 1, got {args.reps}")
    if args.warmup < 0:
        raise BenchmarkError(f"--warmup must be >= 0, got {args.warmup}")
    if args.batch < 1:
        raise BenchmarkError(f"--batch must be >= 1, got {args.batch}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: no CUDA device is available")
    shapes_vs_conv = [parse_shape(t) for t in args.block_vs_conv or []]
    if args.no_networks and not shapes_vs_conv:
        raise BenchmarkError("--no-networks leaves nothing to measure: add --block-vs-conv")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vs_conv = []
    for shape in shapes_vs_conv:
        res = block_vs_conv(shape, device, args.reps, args.seed)
        vs_conv.append(res)
        log(
            f"block vs 3x3x3 conv at {'x'.join(map(str, shape))}: "
            + ", ".join(
                f"{k} {res['median_time_s'][k] * 1e3:.0f} ms ({res['time_ratio_to_conv'][k]:.2f}x "
                f"conv, saves {res['saved_bytes_over_input'][k]:.1f}x the input)"
                for k in res["median_time_s"]
            )
        )
    if args.no_networks:
        return {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "environment": _environment(device),
            "block_vs_conv": vs_conv,
        }
    if args.plans is None or args.dataset_json is None:
        raise BenchmarkError("--plans and --dataset-json are required (or --no-networks)")
    placement = parse_placement(args.placement)
    _, _, pm, cm, n_in, n_out = load_managers(args.plans, args.dataset_json, args.configuration)
    patch = tuple(args.patch) if args.patch else tuple(int(p) for p in cm.patch_size)
    strides = cm.network_arch_init_kwargs["strides"]
    check_patch(patch, strides)

    from nnunet_pde.network import pde_blocks

    models = build_models(pm, cm, n_in, n_out, placement, args.seed, args.checkpointing)
    blocks = pde_blocks(models["pde3d"])
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    log(
        f"plans {args.plans.name} / {args.configuration}: {len(strides)} encoder stages, "
        f"patch {'x'.join(map(str, patch))}, batch {args.batch}, {n_in} input channel(s), "
        f"{n_out} output(s), device {device}, amp {args.amp}, compile {args.compile}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    log(
        f"stock: {n_params['stock']:,} parameters; pde3d ({placement.label}): "
        f"{n_params['pde3d']:,} parameters, blocks at {', '.join(blocks) or 'none'}"
    )

    eager = {k: m.to(device).train() for k, m in models.items()}
    runnable: dict[str, nn.Module] = dict(eager)
    if args.compile:
        runnable = {k: torch.compile(m) for k, m in eager.items()}
    torch.manual_seed(args.seed + 1)
    x = torch.randn(args.batch, n_in, *patch, device=device)

    memory: dict[str, dict[str, Any]] = {k: {} for k in MODELS}
    if device.type == "cpu":
        memory_kind = (
            "cpu: bytes of the tensors autograd saves for backward in one eager step "
            "(saved_tensors_hooks, storages counted once, parameters excluded)"
        )
        for k in MODELS:
            memory[k]["saved_tensor_bytes"] = saved_tensor_bytes(eager[k], x, args.amp)
            log(f"saved-for-backward bytes {k}: {_fmt_bytes(memory[k]['saved_tensor_bytes'])}")
        if args.rss:
            for k in MODELS:
                log(f"peak RSS of one step, {k}, in a fresh process ...")
                spec = {
                    "plans": str(args.plans),
                    "dataset_json": str(args.dataset_json),
                    "configuration": args.configuration,
                    "placement": {
                        "label": placement.label,
                        "stages": placement.stages,
                        "all_stages": placement.all_stages,
                    },
                    "model": k,
                    "seed": args.seed,
                    "batch": args.batch,
                    "patch": list(patch),
                    "amp": args.amp,
                    "threads": torch.get_num_threads(),
                    "checkpointing": args.checkpointing,
                }
                memory[k].update(peak_rss_increase(spec))
                log(f"  +{_fmt_bytes(memory[k]['peak_rss_increase_bytes'])}")
    else:
        memory_kind = (
            "cuda: torch.cuda.max_memory_allocated during the step (after "
            "reset_peak_memory_stats) above the memory allocated before it, plus the "
            "network's own weights: weights, gradients, activations, workspace"
        )

    for i in range(args.warmup):
        for k in MODELS:
            t0 = time.perf_counter()
            timed_step(runnable[k], x, args.amp)
            log(f"warm-up {i + 1}/{args.warmup} {k}: {time.perf_counter() - t0:.2f} s")

    times: dict[str, list[float]] = {k: [] for k in MODELS}
    cpu_times: dict[str, list[float]] = {k: [] for k in MODELS}
    peaks: dict[str, list[int]] = {k: [] for k in MODELS}
    for r in range(args.reps):
        # Alternate, and swap who goes first every rep, so neither model always
        # runs right after the other's allocations.
        order = MODELS if r % 2 == 0 else MODELS[::-1]
        for k in order:
            seconds, cpu_seconds, peak = timed_step(runnable[k], x, args.amp)
            times[k].append(seconds)
            cpu_times[k].append(cpu_seconds)
            if peak is not None:
                peaks[k].append(peak)
        log(
            f"rep {r + 1}/{args.reps}: "
            + "  ".join(f"{k} {times[k][-1]:.3f} s (CPU {cpu_times[k][-1]:.2f} s)" for k in MODELS)
            + f"  (ratio {times['pde3d'][-1] / times['stock'][-1]:.3f})"
        )

    block_times: dict[str, Any] = {}
    if not args.no_block_times:
        shapes = block_input_shapes(models["pde3d"], args.batch, patch, strides)
        for name, block in blocks.items():
            bt = time_block(block, shapes[name], device, args.amp, args.reps)
            block_times[name] = {"input_shape": list(shapes[name]), **bt}
            log(
                f"block {name} alone, input {'x'.join(map(str, shapes[name]))}: median "
                f"{bt['median_time_s'] * 1e3:.1f} ms forward+backward"
            )

    result_models: dict[str, Any] = {}
    for k in MODELS:
        entry: dict[str, Any] = {
            "parameters": n_params[k],
            "times_s": times[k],
            "median_time_s": _median(times[k]),
            "cpu_times_s": cpu_times[k],
            "median_cpu_time_s": _median(cpu_times[k]),
        }
        if peaks[k]:
            memory[k]["peak_allocated_bytes"] = peaks[k]
            memory[k]["median_peak_allocated_bytes"] = _median(peaks[k])
        entry["memory"] = memory[k]
        entry["median_memory_bytes"] = _primary_memory(memory[k])
        result_models[k] = entry
    ratio_time = result_models["pde3d"]["median_time_s"] / result_models["stock"]["median_time_s"]
    ratio_cpu = (
        result_models["pde3d"]["median_cpu_time_s"] / result_models["stock"]["median_cpu_time_s"]
    )
    # Each rep's two steps ran back to back, so their ratio sees the same machine state.
    paired = _median([p / s for s, p in zip(times["stock"], times["pde3d"], strict=True)])
    mem_s, mem_p = (result_models[k]["median_memory_bytes"] for k in MODELS)
    ratio_memory = mem_p / mem_s if mem_s and mem_p is not None else None
    ratio_rss = None
    if "peak_rss_increase_bytes" in memory["stock"]:
        ratio_rss = (
            memory["pde3d"]["peak_rss_increase_bytes"] / memory["stock"]["peak_rss_increase_bytes"]
        )
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {
            "plans": str(args.plans),
            "dataset_json": str(args.dataset_json),
            "configuration": args.configuration,
            "patch": list(patch),
            "batch": args.batch,
            "device": str(device),
            "placement": placement.label,
            "checkpointing": args.checkpointing,
            "pde_stages": sorted(blocks),
            "reps": args.reps,
            "warmup": args.warmup,
            "amp": args.amp,
            "compile": args.compile,
            "seed": args.seed,
        },
        "environment": _environment(device),
        "memory_kind": memory_kind,
        "models": result_models,
        "blocks_alone": block_times,
        "block_vs_conv": vs_conv,
        "ratio": {
            "time": ratio_time,
            "time_paired_median": paired,
            "cpu_time": ratio_cpu,
            "memory": ratio_memory,
            "peak_rss_increase": ratio_rss,
        },
    }


def _primary_memory(memory: dict[str, Any]) -> float | None:
    if "median_peak_allocated_bytes" in memory:
        return float(memory["median_peak_allocated_bytes"])
    if "saved_tensor_bytes" in memory:
        return float(memory["saved_tensor_bytes"])
    return None


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        from importlib.metadata import version

        env["nnunetv2"] = version("nnunetv2")
    except Exception:  # noqa: BLE001 - informational only
        pass
    return env


# ------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark_pde.py",
        description="Forward+backward time and peak memory of PDE3D-UNet vs the stock nnU-Net "
        "network for a plans file, alternating the two over several repetitions.",
    )
    p.add_argument("--plans", type=Path, default=None, help="nnU-Net plans JSON")
    p.add_argument("--dataset-json", type=Path, default=None, help="the dataset.json of the plans")
    p.add_argument(
        "--configuration", default="3d_fullres", help="plans configuration (default 3d_fullres)"
    )
    p.add_argument(
        "--patch",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=None,
        help="patch size in voxels, axis order D H W (default: the plans' patch size)",
    )
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument(
        "--placement",
        default="default",
        help="PDE blocks: 'default' (PDEConfig's stages: the stage feeding the bottleneck), "
        "'all' (every encoder stage) or stage indices like 0,2,4 (default 'default')",
    )
    p.add_argument("--reps", type=int, default=5, help="measured steps per model (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per model (default 1)")
    p.add_argument(
        "--checkpointing",
        action="store_true",
        help="PDEConfig(checkpointing=True): recompute each PDE step in backward",
    )
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument(
        "--rss",
        action="store_true",
        help="CPU: also measure the peak RSS increase of one step per model in a fresh process",
    )
    p.add_argument(
        "--no-block-times",
        action="store_true",
        help="skip timing each PDE block alone after the alternating steps",
    )
    p.add_argument(
        "--block-vs-conv",
        nargs="+",
        metavar="NxCxDxHxW",
        default=None,
        help="also time one default PDE block (fused, and the reference implementation) "
        "against one 3x3x3 convolution C->C at each of these input shapes, and count the "
        "bytes each saves for backward, e.g. 2x32x48x48x48 2x32x64x64x64",
    )
    p.add_argument(
        "--no-networks",
        action="store_true",
        help="only the --block-vs-conv measurements (no plans needed)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and input (default 0)")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rss:
        # Turn `kill` into SystemExit so the Pool's context manager ends its child too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run_benchmark(args, log=lambda msg: print(msg, flush=True))
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    for res in results.get("block_vs_conv", []):
        print(
            f"block vs one 3x3x3 conv {res['shape'][1]}->{res['shape'][1]}, input "
            f"{'x'.join(map(str, res['shape']))}:"
        )
        for k, t in res["median_time_s"].items():
            print(
                f"  {k:<16} {t * 1e3:>8.0f} ms  {res['time_ratio_to_conv'][k]:>5.2f}x conv  "
                f"saved for backward {res['saved_bytes_over_input'][k]:>5.1f}x the input  "
                f"faulted in {res['faulted_bytes_median'][k] / 2**20:>6.0f} MiB, system "
                f"{res['system_time_s_median'][k] * 1e3:.0f} ms (medians per repetition)"
            )
        print(
            "  block_fused / conv3x3x3, median of the per-repetition ratios: "
            f"{res['fused_paired_ratio_median']:.2f}x"
        )
    if "models" not in results:
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.output}")
        return 0
    print(f"{'model':<8} {'median wall':>12} {'median CPU':>12} {'memory':>12}")
    for k in MODELS:
        m = results["models"][k]
        print(
            f"{k:<8} {m['median_time_s']:>10.3f} s {m['median_cpu_time_s']:>10.3f} s "
            f"{_fmt_bytes(m['median_memory_bytes']):>12}"
        )
    ratio = results["ratio"]
    mem_ratio = "n/a" if ratio["memory"] is None else f"{ratio['memory']:.3f}"
    print(
        f"ratio pde3d/stock: wall time {ratio['time']:.3f} (median of per-rep ratios "
        f"{ratio['time_paired_median']:.3f}), CPU time {ratio['cpu_time']:.3f}, "
        f"memory {mem_ratio}"
    )
    if ratio["peak_rss_increase"] is not None:
        print(f"ratio pde3d/stock of the peak RSS increase: {ratio['peak_rss_increase']:.3f}")
    print(f"memory measured as {results['memory_kind']}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")
    else:
        print("results not written (pass --output FILE for the JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
