#!/usr/bin/env python
"""One-command GPU check of the PDE block and PDE3D-UNet against the stock nnU-Net network.

    python scripts/gpu_check.py                 # on the GPU machine: <= 8 minutes, one GPU

Needs torch (+ triton on CUDA), numpy, dynamic-network-architectures and this checkout: it
imports only ``nnunet_pde.network``, ``nnunet_pde.pde`` and dynamic-network-architectures
(never nnunetv2 or SimpleITK), so on a machine that has torch ``pip install --no-deps
dynamic-network-architectures`` is enough (the checkout is put on ``sys.path`` when
``nnunet_pde`` is not installed; ``pip install --no-deps -e .`` works too; see
docs/performance.md).
The network is built from the plans JSON as nnU-Net's ``get_network_from_plans`` builds it,
the PDE blocks inserted by :func:`nnunet_pde.network.insert_pde_blocks`.

Rows, in order of value; each is written to ``--output`` (default ``gpu_check.json``, the
whole file rewritten atomically) as soon as it is measured, so a killed run keeps them:

1. ``block_vs_conv/fp16``, ``block_vs_conv/bf16``: one stage-0 PDE block (``PDEConfig()``,
   training mode, the regulariser's energy in the loss, gate 0.5) against one 3x3x3
   convolution C->C with bias (nnU-Net's conv) on the same input (``--block-shape``, default
   2x32x128^3, in the autocast dtype as the stage emits it): forward+backward time (median,
   the two alternated repetition by repetition), peak memory above what was allocated
   before, kernel launches (on CUDA counted by ``torch.profiler`` as CUDA kernel events; on
   every device also the estimate of ``nnunet_pde.pde.kernels.launches.count()``), under
   fp16 autocast with ``GradScaler`` and under bf16 autocast; the ratio block/conv; the
   backend (``backend.choose(x).reason``); the bytes-moved estimate below against the
   device's copy bandwidth measured here.
2. ``train/<variant>/<mode>``: ``--steps`` training steps (after 2 warm-up steps) of the
   stock network, the default placement (``nnUNetTrainerPDE3D.pde_config``, ``PDEConfig()``:
   one block after the stage feeding the bottleneck) and ``_Stages01`` (blocks after encoder
   stages 0 and 1), eager and ``torch.compile`` (default mode; ``torch._dynamo.reset()``
   before each compiled configuration): median step time, peak memory, their ratios to
   stock in the same mode, and for compiled rows the compile time (first step minus the
   median step) and its ratio to stock's. Precision as nnU-Net trains: fp16 autocast with
   GradScaler on CUDA, float32 on the CPU. Step: forward with deep supervision, BCE per
   output weighted as nnU-Net weights deep supervision, + 0.1 x the blocks' mean energy
   (``lambda_pde`` of the default trainer; its TV term on the predictions is left out),
   backward, gradient clipping at 12, AdamW step. Losses and parameters must stay finite.
3. ``infer/<variant>/eager``: nnU-Net's test-time mirroring (the prediction averaged over
   the 8 flips of a 3-D patch: none, each axis, each pair, all three) of one patch, batch 1,
   eval mode, no deep supervision, ``torch.no_grad``, fp16 autocast on CUDA; default
   placement against stock, time ratio.
4. ``estimates``: kernel launches per block step (``launches.count()``, an estimate; the
   difference between a 3-step and a 2-step block's forward+backward) for every backend
   that can run here (on the CPU: ``c``, ``torch``, and ``triton`` through Triton's
   interpreter at 1x2x4^3, which estimates what the GPU launches: the count does not depend
   on the size; on CUDA the backend the block gets), and the bytes-moved estimate.

``--time-budget`` (seconds, default 420, counted from the start of the process) is checked
before every row against that row's predicted time: eager rows from the rows measured
before (the stock step, the block's time times the elements of each block's feature map) or,
before any, from a quick measurement of the convolution scaled by the network's convolution
work (counted at a small patch); compiled rows from stock's measured compile time scaled by
the number of operators of each network or, before that, from three quick compiles of small
convolution stacks (seconds per operator). A row predicted not to fit is recorded as
``"status": "skipped"`` with the prediction and the reason, and the timed loops of a running
row stop at the budget (after at least two timed repetitions). Statuses are ``passed``,
``failed`` (an exception, or a non-finite loss, parameter or output) and ``skipped``; the
summary counts them separately, skipped is never counted as passed, and the exit code is 1
only when a row failed (2 for bad arguments, 0 otherwise).

**Bytes moved by the Triton AOS diffusion (an estimate on paper, not a measurement).** For
a feature map of N = B C D H W elements, m = 3 axes, s bytes per element of u, b, the output
and the gradients (the block computes in float32: s = 4) and f = 4 bytes per element of the
float32 scratch maps, assuming every access goes to DRAM (nearly so at 2x32x128^3, 537 MB
per map), one step moves

* forward, per axis: read u and b (2 N s), write and read back 2 scratch maps (4 N f),
  write the output (N s) and, for every axis after the first, read it first (N s):
  ``F = m (3 s + 4 f) N + (m - 1) s N`` = 92 N bytes;
* backward, per axis: read u, b and g (3 N s), write and read back 3 scratch maps (6 N f),
  read u again in the back substitution (N s), write dL/du and dL/db (2 N s) and, after the
  first axis, read them first (2 N s): ``G = m (6 s + 6 f) N + 2 (m - 1) s N`` = 160 N bytes;

252 N bytes per step against the 32 N it must move at least (forward: read u, b, write the
output; backward: read u, b, g, write two gradients). A block with K steps moves K (F + G)
in its diffusion; the reaction, standardisation, gate and energy come on top and are not in
the estimate. The script reports the estimate over the device's measured copy bandwidth:
the least time the diffusion can take if it runs at copy speed.

On the CPU (``tests/test_gpu_check.py``; the 4-stage tiny plans, because 32^3 on the BraTS
plans leaves a 1-voxel bottleneck on which instance norm refuses to train)::

    python scripts/gpu_check.py --device cpu --block-shape 1 32 8 8 8 \
        --plans tests/fixtures/plans/plans_tiny_plain.json \
        --dataset-json tests/fixtures/plans/dataset_tiny_labels.json \
        --patch 16 16 16 --batch 1 --steps 2 --reps 2 --infer-reps 2 --compile-backend aot_eager

(one torch thread by default on the CPU, ``--threads``; the CPU figures at such sizes check
the plumbing and give the launch and bytes estimates, they are not performance figures).
"""

from __future__ import annotations

import os
import sys


def _argv_device(argv: list[str]) -> str:
    """``--device`` from the command line before argparse runs (default ``cuda``)."""
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "cuda"


if __name__ == "__main__" and _argv_device(sys.argv[1:]) == "cpu":
    # The launch estimate of the Triton backend on the CPU runs Triton's interpreter, which
    # must be switched on before triton is first imported (torch may import it).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import pydoc  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

T_START = time.perf_counter()

import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
try:
    import nnunet_pde  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(REPO))

from nnunet_pde.network import SUPPORTED_ARCHITECTURES, insert_pde_blocks, pde_blocks  # noqa: E402
from nnunet_pde.pde import PDEBlock, PDEConfig  # noqa: E402
from nnunet_pde.pde.kernels import backend, launches  # noqa: E402

PLANS = REPO / "tests" / "fixtures" / "plans" / "plans_brats_plain.json"
DATASET = REPO / "tests" / "fixtures" / "plans" / "dataset_brats_regions.json"
#: The networks compared: stock (no block), the default trainer's placement
#: (``nnUNetTrainerPDE3D.pde_config``) and ``nnUNetTrainerPDE3D_Stages01``'s (a test checks
#: these against the trainer classes, which cannot be imported without nnunetv2).
VARIANTS: dict[str, PDEConfig | None] = {
    "stock": None,
    "default": PDEConfig(),
    "stages01": dataclasses.replace(PDEConfig(), stages=(0, 1)),
}
LAMBDA_PDE = 0.1  # FULL_REGULARIZER.lambda_pde of the default trainer
GATE = 0.5  # gamma of every block, as after some training (0: the block is the identity)
AMP = {"fp16": torch.float16, "bf16": torch.bfloat16}
STATUSES = ("passed", "failed", "skipped")
# Predictions before anything was measured (deliberately pessimistic):
ASSUMED_BLOCK_PER_CONV = 10.0  # block fwd+bwd / conv fwd+bwd at the same shape
NET_OVERHEAD = 2.0  # a network step / its convolutions' share of it
TRITON_JIT_S = 20.0  # building the Triton kernels on first use (CUDA)


class _NoTime(Exception):
    """The budget is spent before a row could even be predicted."""


class Budget:
    """Seconds left of ``--time-budget``, counted from the start of the process."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - T_START

    def left(self) -> float:
        return self.seconds - self.elapsed()


# ----------------------------------------------------------------------------- plumbing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; the bytes allocated now (0 on the CPU)."""
    if device.type != "cuda":
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    return int(torch.cuda.memory_allocated(device))


def peak(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def autocast(device: torch.device, precision: str | None):
    if precision is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP[precision])


def train_precision(device: torch.device) -> str | None:
    """nnU-Net trains and predicts with fp16 autocast on CUDA, in float32 elsewhere."""
    return "fp16" if device.type == "cuda" else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Rewrite ``path`` atomically (a temporary file in its folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt_ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.1f} ms"


def fmt_x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def fmt_gb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GB"


def fmt_bytes(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.2f} MB"


# ----------------------------------------------------------------------------- networks


def load_configuration(plans: Path, name: str) -> dict[str, Any]:
    """The plans' configuration ``name`` with ``inherits_from`` resolved."""
    configurations = json.loads(plans.read_text())["configurations"]
    conf = dict(configurations[name])
    while "inherits_from" in conf:
        parent = dict(configurations[conf.pop("inherits_from")])
        parent.update(conf)
        conf = parent
    if "architecture" not in conf:
        raise ValueError(f"{plans}: configuration {name!r} has no 'architecture' (old plans)")
    return conf


def channels(dataset: Path) -> tuple[int, int]:
    """Input channels and segmentation heads as nnU-Net's label manager counts them."""
    dj = json.loads(dataset.read_text())
    n_in = len(dj.get("channel_names", dj.get("modality", {})))
    labels = {k: v for k, v in dj["labels"].items() if k != "ignore"}
    regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    if regions:
        n_out = len([k for k in labels if k != "background"])
    else:
        n_out = len({int(v[0] if isinstance(v, (list, tuple)) else v) for v in labels.values()})
    return n_in, n_out


def build_network(
    conf: dict[str, Any],
    n_in: int,
    n_out: int,
    config: PDEConfig | None,
    deep_supervision: bool = True,
    seed: int = 0,
) -> nn.Module:
    """What ``nnunet_pde.network.build_pde3d_network`` builds (nnU-Net's
    ``get_network_from_plans`` plus :func:`insert_pde_blocks`), without nnunetv2."""
    arch = conf["architecture"]
    if arch["network_class_name"] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch['network_class_name']}")
    kwargs = dict(arch["arch_kwargs"])
    for key in arch.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    cls = pydoc.locate(arch["network_class_name"])
    torch.manual_seed(seed)
    net = cls(input_channels=n_in, num_classes=n_out, deep_supervision=deep_supervision, **kwargs)
    if hasattr(net, "initialize"):
        net.apply(net.initialize)
    if config is not None:
        insert_pde_blocks(net, conf["spacing"], arch["arch_kwargs"]["strides"], config)
    for block in pde_blocks(net).values():
        block.record_consistency = True  # the default trainer's lambda_pde > 0
        with torch.no_grad():
            block.gamma.fill_(GATE)
    return net


def total_stride(conf: dict[str, Any]) -> list[int]:
    out = [1, 1, 1]
    for s in conf["architecture"]["arch_kwargs"]["strides"]:
        s = [s] * 3 if isinstance(s, int) else s
        out = [a * int(b) for a, b in zip(out, s, strict=True)]
    return out


def block_elements(net: nn.Module, batch: int, patch: list[int]) -> list[int]:
    """Elements of the feature map each PDE block of ``net`` evolves."""
    sizes = []
    for name, block in pde_blocks(net).items():
        stage = int(name.split("stages.")[1].split(".")[0])
        stride = [1, 1, 1]
        for s in net.encoder.strides[: stage + 1]:
            s = [s] * 3 if isinstance(s, int) else s
            stride = [a * int(b) for a, b in zip(stride, s, strict=True)]
        vox = math.prod(p // s for p, s in zip(patch, stride, strict=True))
        sizes.append(batch * block.channels * vox)
    return sizes


def conv_macs_and_ops(net: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Multiply-adds of the convolutions in one forward of ``x`` and the estimated launches
    (``launches.count``) of one eager forward+backward."""
    macs = [0]

    def hook(mod, inp, out):
        k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
        if isinstance(mod, nn.ConvTranspose3d):
            macs[0] += inp[0].numel() * mod.out_channels * math.prod(mod.kernel_size)
        else:
            macs[0] += out.numel() * k

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
    ]
    try:
        with launches.count() as c:
            out = net(x)
            out = out if isinstance(out, (list, tuple)) else [out]
            sum(o.float().mean() for o in out).backward()
    finally:
        for h in handles:
            h.remove()
    net.zero_grad(set_to_none=True)
    for b in pde_blocks(net).values():
        b.clear_residuals()
    return macs[0], c.total


# ----------------------------------------------------------------------------- the check


class Check:
    """The rows, their predictions, and the measurements the predictions use."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.budget = Budget(args.time_budget)
        self.conf = load_configuration(args.plans, args.configuration)
        self.n_in, self.n_out = channels(args.dataset_json)
        self.patch = list(args.patch or self.conf["patch_size"])
        self.batch = args.batch or int(self.conf["batch_size"])
        self.block_shape = tuple(args.block_shape)
        spacing = [float(h) for h in self.conf["spacing"]]
        s0 = self.conf["architecture"]["arch_kwargs"]["strides"][0]
        s0 = [s0] * 3 if isinstance(s0, int) else s0
        self.block_spacing = [h * int(s) for h, s in zip(spacing, s0, strict=True)]
        self.rows: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self.nets: dict[tuple[str, bool], nn.Module] = {}
        self.probes: dict[str, dict[str, Any]] = {}
        self.conv_probe_s: float | None = None
        self.compile_probe: dict[str, float] | None = None

    # -------------------------------------------------------------- measured facts
    def measured(self, key: str, field: str) -> Any:
        row = self.by_key.get(key)
        if row is None or row["status"] != "passed":
            return None
        return row.get(field)

    def block_seconds(self) -> tuple[float, str]:
        """Block fwd+bwd seconds at the block shape: measured (in either precision: the block
        computes in float32 inside), or the conv's times an assumed ratio."""
        for p in ("fp16", "bf16"):
            t = self.measured(f"block_vs_conv/{p}", "block_s")
            if t:
                return t, f"block_vs_conv/{p}"
        return self.conv_seconds() * ASSUMED_BLOCK_PER_CONV, (
            f"conv x {ASSUMED_BLOCK_PER_CONV:g} (assumed block/conv)"
        )

    def conv_seconds(self) -> float:
        """Conv fwd+bwd seconds at the block shape in the training precision: row 1's (fp16,
        on CUDA), else a quick measurement."""
        prec = train_precision(self.device)
        t = self.measured(f"block_vs_conv/{prec}", "conv_s") if prec else None
        if t:
            return t
        if self.conv_probe_s is None:
            self.conv_probe_s = self._probe_conv(prec)
        return self.conv_probe_s

    def _probe_conv(self, prec: str | None) -> float:
        """Quick measurement: best of 3 conv fwd+bwd at the block shape (after one)."""
        dev = self.device
        c = self.block_shape[1]
        conv = nn.Conv3d(c, c, 3, padding=1).to(dev)
        x = torch.randn(self.block_shape, device=dev, requires_grad=True)
        best = math.inf
        for _ in range(4):
            sync(dev)
            t0 = time.perf_counter()
            with autocast(dev, prec):
                y = conv(x)
            y.float().mean().backward()
            sync(dev)
            best = min(best, time.perf_counter() - t0)
        del conv, x, y
        free(dev)
        return best

    def network(self, variant: str, deep_supervision: bool = True) -> nn.Module:
        """The variant's network on the CPU (built once; same seed: same backbone)."""
        key = (variant, deep_supervision)
        if key not in self.nets:
            self.nets[key] = build_network(
                self.conf,
                self.n_in,
                self.n_out,
                VARIANTS[variant],
                deep_supervision,
                self.args.seed,
            )
        return self.nets[key]

    def probe(self, variant: str) -> dict[str, Any]:
        """Quick measurement of a network: build time, conv work at the real patch and
        batch, estimated launches of an eager fwd+bwd (at the smallest valid patch)."""
        if variant not in self.probes:
            t0 = time.perf_counter()
            net = self.network(variant)
            build_s = time.perf_counter() - t0
            small = [2 * s for s in total_stride(self.conf)]
            net = copy.deepcopy(net).to(self.device)
            x = torch.randn(1, self.n_in, *small, device=self.device)
            macs, ops = conv_macs_and_ops(net, x)
            scale = self.batch * math.prod(self.patch) / math.prod(small)
            self.probes[variant] = {
                "build_s": build_s,
                "conv_macs": macs * scale,
                "ops": ops,
                "block_elements": block_elements(net, self.batch, self.patch),
            }
            del net, x
            free(self.device)
        return self.probes[variant]

    def eager_step(self, variant: str) -> tuple[float, str]:
        """Predicted eager training-step seconds of ``variant`` and the basis."""
        stock = self.measured("train/stock/eager", "step_s")
        if stock is not None:
            base, basis = stock, "stock's measured step"
        else:
            c = self.block_shape[1]
            conv_macs = math.prod(self.block_shape) * c * 27
            base = self.conv_seconds() * self.probe("stock")["conv_macs"] / conv_macs
            base *= NET_OVERHEAD
            basis = f"conv probe x the network's conv work x {NET_OVERHEAD:g}"
        if variant == "stock":
            return base, basis
        t_block, b_basis = self.block_seconds()
        elems = sum(self.probe(variant)["block_elements"]) / math.prod(self.block_shape)
        return base + t_block * elems, f"{basis} + {elems:.2f} x the block ({b_basis})"

    def compile_seconds(self, variant: str) -> tuple[float, str]:
        stock_c = self.measured("train/stock/compile", "compile_s")
        ops = self.probe(variant)["ops"]
        if stock_c is not None and variant != "stock":
            r = ops / self.probe("stock")["ops"]
            return stock_c * r, f"stock's compile time x {r:.2f} (operator count)"
        if self.compile_probe is None:
            self.compile_probe = self._probe_compile()
        cp = self.compile_probe
        est = cp["fixed_s"] + cp["s_per_op"] * ops
        return est, (
            f"quick compiles of conv stacks: {cp['fixed_s']:.1f} s + {cp['s_per_op'] * 1e3:.1f} "
            f"ms x {ops} operators"
        )

    def _probe_compile(self) -> dict[str, float]:
        """Three quick compiles (fwd+bwd) of Conv-Norm-LeakyReLU stacks at a small size:
        the first pays the compiler's start-up; the other two give seconds per operator."""
        dev = self.device
        points = []
        for depth in (1, 2, 6):
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [
                    nn.Conv3d(8, 8, 3, padding=1),
                    nn.InstanceNorm3d(8, affine=True),
                    nn.LeakyReLU(inplace=True),
                ]
            mod = nn.Sequential(*layers).to(dev)
            x = torch.randn(1, 8, 8, 8, 8, device=dev)
            with launches.count() as c:
                mod(x).float().mean().backward()
            torch._dynamo.reset()
            compiled = torch.compile(mod, backend=self.args.compile_backend)
            sync(dev)
            t0 = time.perf_counter()
            with autocast(dev, train_precision(dev)):
                y = compiled(x)
            y.float().mean().backward()
            sync(dev)
            points.append((c.total, time.perf_counter() - t0))
        torch._dynamo.reset()
        (o1, t1), (o2, t2) = points[1], points[2]
        # pessimistic: at least half the larger stack's mean seconds per operator
        slope = max((t2 - t1) / max(o2 - o1, 1), 0.5 * t2 / o2)
        fixed = max(t1 - slope * o1, 0.0)
        return {"startup_s": points[0][1], "fixed_s": fixed, "s_per_op": slope}

    # -------------------------------------------------------------- predictions
    def predict(self, key: str) -> tuple[float, str]:
        a = self.args
        kind, *rest = key.split("/")
        if kind == "block_vs_conv":
            other = "bf16" if rest[0] == "fp16" else "fp16"
            w = self.measured(f"block_vs_conv/{other}", "wall_s")
            if w is not None:
                return w, f"block_vs_conv/{other}'s time"
            t_block, basis = self.block_seconds()
            reps = a.reps + 3 + (2 if self.device.type == "cuda" else 1)
            t = reps * (t_block + self.conv_seconds())
            if self.device.type == "cuda":
                t += TRITON_JIT_S
                basis += f" + {TRITON_JIT_S:g} s Triton JIT"
            return t, f"{reps} fwd+bwd of block and conv: {basis}"
        if kind == "train":
            variant, mode = rest
            step, basis = self.eager_step(variant)
            setup = self.probe(variant)["build_s"] + 1.0
            t = setup + (a.steps + 3) * step * 1.2
            if mode == "compile":
                c, c_basis = self.compile_seconds(variant)
                return t + c, f"eager step {step * 1e3:.0f} ms ({basis}); compile {c_basis}"
            return t, f"{a.steps + 3} steps of {step * 1e3:.0f} ms ({basis}) + set-up"
        if kind == "infer":
            variant = rest[0]
            step, basis = self.eager_step(variant)
            fwd = step / 3 / self.batch  # a forward ~ 1/3 of a step, per sample
            t = self.probe(variant)["build_s"] + 1.0 + (a.infer_reps + 1) * 8 * fwd * 1.5
            return t, f"{a.infer_reps + 1} x 8 forwards of ~{fwd * 1e3:.0f} ms ({basis})"
        if kind == "estimates":
            w = self.measured("block_vs_conv/fp16", "wall_s") or 0.0
            return 5.0 + 0.2 * w, "a few block steps per backend"
        raise KeyError(key)

    # -------------------------------------------------------------- rows
    def row_keys(self) -> list[str]:
        keys = ["block_vs_conv/fp16", "block_vs_conv/bf16"]
        keys += [f"train/{v}/eager" for v in VARIANTS]
        keys += [f"train/{v}/compile" for v in VARIANTS]
        keys += ["infer/stock/eager", "infer/default/eager", "estimates"]
        if self.args.rows:
            import fnmatch

            keys = [k for k in keys if any(fnmatch.fnmatch(k, p) for p in self.args.rows)]
        return keys

    def run(self, write: Callable[[], None]) -> None:
        torch.backends.cudnn.benchmark = True  # as nnU-Net sets it
        for key in self.row_keys():
            row: dict[str, Any] = {"key": key, "started_at_s": round(self.budget.elapsed(), 2)}
            try:
                if self.budget.left() <= 0:
                    raise _NoTime(
                        f"no time left: {self.budget.elapsed():.1f} s elapsed of the "
                        f"--time-budget {self.args.time_budget:g} s"
                    )
                pred, basis = self.predict(key)
                row["predicted_s"] = round(pred, 2)
                row["prediction_basis"] = basis
                left = self.budget.left()
                if pred > left:
                    row["status"] = "skipped"
                    row["reason"] = (
                        f"predicted {pred:.1f} s ({basis}) > {max(left, 0):.1f} s left of the "
                        f"--time-budget {self.args.time_budget:g} s"
                    )
                else:
                    t0 = time.perf_counter()
                    row.update(self.measure(key))
                    row["wall_s"] = round(time.perf_counter() - t0, 3)
                    row.setdefault("status", "passed")
            except _NoTime as exc:
                row["status"] = "skipped"
                row["reason"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                traceback.print_exc()
                row["status"] = "failed"
                row["reason"] = f"{type(exc).__name__}: {exc}"
            self.add_ratios(row)
            self.rows.append(row)
            self.by_key[key] = row
            print(self.line(row), flush=True)
            write()
            free(self.device)

    def measure(self, key: str) -> dict[str, Any]:
        kind, *rest = key.split("/")
        if kind == "block_vs_conv":
            return self.block_vs_conv(rest[0])
        if kind == "train":
            return self.train(*rest)
        if kind == "infer":
            return self.infer(rest[0])
        return self.estimates()

    def add_ratios(self, row: dict[str, Any]) -> None:
        if row["status"] != "passed":
            return
        kind, *rest = row["key"].split("/")
        if kind == "train" and rest[0] != "stock":
            ref = f"train/stock/{rest[1]}"
            row["step_ratio_to_stock"] = ratio(row["step_s"], self.measured(ref, "step_s"))
            row["memory_ratio_to_stock"] = ratio(
                row.get("peak_bytes"), self.measured(ref, "peak_bytes")
            )
            if rest[1] == "compile":
                row["compile_ratio_to_stock"] = ratio(
                    row["compile_s"], self.measured(ref, "compile_s")
                )
        if kind == "infer" and rest[0] != "stock":
            ref = "infer/stock/eager"
            row["time_ratio_to_stock"] = ratio(row["pass_s"], self.measured(ref, "pass_s"))
            row["memory_ratio_to_stock"] = ratio(
                row.get("peak_bytes"), self.measured(ref, "peak_bytes")
            )

    # -------------------------------------------------------------- row 1
    def block_vs_conv(self, precision: str) -> dict[str, Any]:
        dev, a = self.device, self.args
        c = self.block_shape[1]
        block = PDEBlock(c, self.block_spacing, PDEConfig()).to(dev).train()
        block.record_consistency = True
        with torch.no_grad():
            block.gamma.fill_(GATE)
        conv = nn.Conv3d(c, c, 3, padding=1, bias=True).to(dev)
        g = torch.Generator(device="cpu").manual_seed(a.seed)
        x = torch.randn(self.block_shape, generator=g).to(dev, AMP[precision])
        x.requires_grad_(True)
        scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")

        def step(mod: nn.Module) -> torch.Tensor:
            x.grad = None
            mod.zero_grad(set_to_none=True)
            with autocast(dev, precision):
                y = mod(x)
                loss = y.float().mean()
                if mod is block:
                    loss = loss + LAMBDA_PDE * block.last_residuals["energy"]
                    block.clear_residuals()
            scaler.scale(loss).backward()
            return y

        # the backend of the float32 map the block evolves (it computes in float32 inside)
        out: dict[str, Any] = {
            "shape": list(self.block_shape),
            "precision": precision,
            "backend": backend.choose(x.detach().float()).reason,
            "backend_of_input": backend.choose(x).reason,
            "grad_scaler": precision == "fp16",
        }
        for mod in (conv, block):  # warm-up (Triton JIT, cudnn benchmark)
            step(mod)
        finite = True
        for name, mod in (("conv", conv), ("block", block)):
            x.grad = None
            mod.zero_grad(set_to_none=True)
            base = reset_peak(dev)
            y = step(mod)
            p = peak(dev)
            out[f"{name}_peak_bytes"] = None if p is None else p - base
            grads = [x.grad, *(q.grad for q in mod.parameters())]
            finite &= bool(torch.isfinite(y).all()) and all(
                bool(torch.isfinite(t).all()) for t in grads if t is not None
            )
            del y
            with launches.count() as cnt:
                step(mod)
            out[f"{name}_launches_estimate"] = cnt.total
            out[f"{name}_launches_estimate_detail"] = {
                "aten": cnt.aten,
                "triton": cnt.triton,
                "syncs": cnt.syncs,
                "top": cnt.by_op.most_common(8),
            }
            out[f"{name}_cuda_kernels"] = self.profile_kernels(lambda m=mod: step(m))
        times: dict[str, list[float]] = {"conv": [], "block": []}
        deadline = self.budget.seconds
        for i in range(a.reps):
            for name, mod in (("conv", conv), ("block", block)):
                sync(dev)
                t0 = time.perf_counter()
                step(mod)
                sync(dev)
                times[name].append(time.perf_counter() - t0)
            if i >= 1 and self.budget.elapsed() > deadline:
                out["truncated"] = f"time budget: {i + 1} of {a.reps} repetitions"
                break
        out["conv_s"] = statistics.median(times["conv"])
        out["block_s"] = statistics.median(times["block"])
        out["repetitions"] = len(times["block"])
        out["time_ratio"] = ratio(out["block_s"], out["conv_s"])
        out["memory_ratio"] = ratio(out["block_peak_bytes"], out["conv_peak_bytes"])
        out["launch_estimate_ratio"] = ratio(
            out["block_launches_estimate"], out["conv_launches_estimate"]
        )
        kb, kc = out["block_cuda_kernels"], out["conv_cuda_kernels"]
        if isinstance(kb, dict) and isinstance(kc, dict):
            out["cuda_kernel_ratio"] = ratio(kb["kernels"], kc["kernels"])
        bw = copy_bandwidth(dev, math.prod(self.block_shape))
        est = bytes_estimate(self.block_shape, PDEConfig().steps)
        out["copy_bytes_per_s"] = bw
        out["diffusion_bytes_estimate"] = est["block_bytes"]
        out["diffusion_seconds_at_copy_bandwidth"] = est["block_bytes"] / bw
        if not finite:
            out["status"] = "failed"
            out["reason"] = "non-finite output or gradient"
        return out

    def profile_kernels(self, fn: Callable[[], Any]) -> dict[str, Any] | None:
        """CUDA kernels (and memcpy/memset) of one call, counted by ``torch.profiler``."""
        if self.device.type != "cuda":
            return None
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        try:
            sync(self.device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                sync(self.device)
            kernels = memops = 0
            for e in prof.events():
                if e.device_type != DeviceType.CUDA:
                    continue
                what = f"{e.name} {getattr(e, 'activity_type', '') or ''}".lower()
                if "memcpy" in what or "memset" in what:
                    memops += 1
                else:
                    kernels += 1
            return {"kernels": kernels, "memcpy_memset": memops}
        except Exception as exc:  # noqa: BLE001 - no CUPTI etc.: reported, not a failure
            return {"error": f"{type(exc).__name__}: {exc}"}

    # -------------------------------------------------------------- row 2
    def train(self, variant: str, mode: str) -> dict[str, Any]:
        dev, a = self.device, self.args
        precision = train_precision(dev)
        if mode == "compile":
            torch._dynamo.reset()
        model = copy.deepcopy(self.network(variant)).to(dev).train()
        blocks = list(pde_blocks(model).values())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
        runnable = torch.compile(model, backend=a.compile_backend) if mode == "compile" else model
        g = torch.Generator(device="cpu").manual_seed(a.seed + 1)
        x = torch.randn(self.batch, self.n_in, *self.patch, generator=g).to(dev)
        targets: list[torch.Tensor] = []
        weights: list[float] = []
        times, losses = [], []
        reset_peak(dev)
        n_total = a.steps + 2
        for i in range(n_total):
            sync(dev)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast(dev, precision):
                outs = runnable(x)
                outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
                if not targets:  # random regions at every deep-supervision resolution
                    targets = [
                        torch.randint(0, 2, o.shape, generator=g).float().to(dev) for o in outs
                    ]
                    w = [1 / 2**j for j in range(len(outs))]
                    if len(w) > 1:
                        w[-1] = 0.0  # nnU-Net drops the lowest resolution
                    weights = [v / sum(w) for v in w]
                loss = sum(
                    wj * nn.functional.binary_cross_entropy_with_logits(o, t)
                    for wj, o, t in zip(weights, outs, targets, strict=True)
                    if wj > 0
                )
                energies = [b.last_residuals["energy"] for b in blocks if b.last_residuals]
                if energies:
                    loss = loss + LAMBDA_PDE * torch.stack([e.float() for e in energies]).mean()
                for b in blocks:
                    b.clear_residuals()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 12)
            scaler.step(opt)
            scaler.update()
            sync(dev)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
            if i >= 3 and self.budget.elapsed() > self.budget.seconds:
                break
        measured = times[2:]
        out: dict[str, Any] = {
            "variant": variant,
            "mode": mode,
            "precision": precision or "float32",
            "patch": self.patch,
            "batch": self.batch,
            "pde_blocks": len(blocks),
            "steps_timed": len(measured),
            "first_step_s": times[0],
            "step_s": statistics.median(measured),
            "peak_bytes": peak(dev),
            "losses_first_last": [losses[0], losses[-1]],
        }
        if len(times) < n_total:
            out["truncated"] = f"time budget: {len(measured)} of {a.steps} timed steps"
        if mode == "compile":
            out["compile_backend"] = a.compile_backend
            # the first step compiles forward and backward (at least 0: noise on a busy host)
            out["compile_s"] = max(times[0] - out["step_s"], 0.0)
        finite = all(math.isfinite(v) for v in losses) and all(
            bool(torch.isfinite(p).all()) for p in model.parameters()
        )
        if not finite:
            out["status"] = "failed"
            out["reason"] = "non-finite loss or parameter"
        del runnable, model, opt, x, targets
        if mode == "compile":
            torch._dynamo.reset()
        return out

    # -------------------------------------------------------------- row 3
    def infer(self, variant: str) -> dict[str, Any]:
        dev, a = self.device, self.args
        precision = train_precision(dev)
        net = copy.deepcopy(self.network(variant, deep_supervision=False)).to(dev).eval()
        g = torch.Generator(device="cpu").manual_seed(a.seed + 2)
        x = torch.randn(1, self.n_in, *self.patch, generator=g).to(dev)
        axes = [2, 3, 4]
        combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]

        def mirrored() -> torch.Tensor:
            with torch.no_grad(), autocast(dev, precision):
                pred = net(x)
                for c in combos:
                    pred += torch.flip(net(torch.flip(x, c)), c)
                return pred / (len(combos) + 1)

        mirrored()  # warm-up (cudnn benchmark)
        reset_peak(dev)
        times = []
        finite = True
        for i in range(a.infer_reps):
            sync(dev)
            t0 = time.perf_counter()
            pred = mirrored()
            sync(dev)
            times.append(time.perf_counter() - t0)
            finite &= bool(torch.isfinite(pred).all())
            if i >= 1 and self.budget.elapsed() > self.budget.seconds:
                break
        out: dict[str, Any] = {
            "variant": variant,
            "mode": "eager",
            "precision": precision or "float32",
            "patch": self.patch,
            "forwards_per_pass": len(combos) + 1,
            "passes_timed": len(times),
            "pass_s": statistics.median(times),
            "peak_bytes": peak(dev),
        }
        if not finite:
            out["status"] = "failed"
            out["reason"] = "non-finite prediction"
        return out

    # -------------------------------------------------------------- row 4
    def estimates(self) -> dict[str, Any]:
        """Launches per block step by backend (``launches.count``; an estimate)."""
        dev = self.device
        c = self.block_shape[1]
        if dev.type == "cpu":
            names = ["c", "torch", "triton"]
        else:  # the backend the block gets here (row 1 has the rest)
            names = [backend.choose(torch.empty(0, c, 1, 1, 1, device=dev)).name]
        per_backend: dict[str, Any] = {}
        old = os.environ.get(backend.ENV)
        try:
            for name in names:
                os.environ[backend.ENV] = name
                shape, ch = self.block_shape, c
                if dev.type == "cpu" and name == "triton":
                    # interpreted (slow): 1x2x4^3; the launches do not depend on the size
                    shape, ch = (1, 2, *[min(s, 4) for s in shape[2:]]), 2
                x = torch.randn(shape, device=dev)
                try:
                    reason = backend.choose(x).reason
                except backend.BackendError as exc:
                    per_backend[name] = {"unavailable": str(exc)}
                    continue
                counts = {}
                for k in (2, 3):
                    cfg = dataclasses.replace(PDEConfig(), steps=k)
                    blk = PDEBlock(ch, self.block_spacing, cfg)
                    blk = blk.to(dev).train()
                    blk.record_consistency = True
                    xg = x.clone().requires_grad_(True)
                    with launches.count() as cnt:
                        y = blk(xg)
                        (y.mean() + LAMBDA_PDE * blk.last_residuals["energy"]).backward()
                    counts[k] = cnt
                per_backend[name] = {
                    "backend": reason,
                    "shape": list(shape),
                    "block_launches": counts[2].total,
                    "block_triton_launches": counts[2].triton,
                    "block_syncs": counts[2].syncs,
                    "step_launches": counts[3].total - counts[2].total,
                    "step_triton_launches": counts[3].triton - counts[2].triton,
                    "top_block_ops": counts[2].by_op.most_common(6),
                }
                if name == "c":
                    per_backend[name]["note"] = (
                        "the C kernels are calls through ctypes, not launches, and are not "
                        "counted: only the ATen operators around them"
                    )
        finally:
            if old is None:
                os.environ.pop(backend.ENV, None)
            else:
                os.environ[backend.ENV] = old
        return {
            "launches_per_backend": per_backend,
            "bytes_estimate": bytes_estimate(self.block_shape, PDEConfig().steps),
        }

    # -------------------------------------------------------------- output
    def line(self, row: dict[str, Any]) -> str:
        head = f"[{self.budget.elapsed():6.1f} s] {row['status']:<7} {row['key']:<22}"
        if row["status"] != "passed":
            return f"{head} {row.get('reason', '')}"
        k = row["key"].split("/")[0]
        if k == "block_vs_conv":
            return (
                f"{head} block {fmt_ms(row['block_s'])} / conv {fmt_ms(row['conv_s'])} = "
                f"{fmt_x(row['time_ratio'])}; memory {fmt_x(row['memory_ratio'])}; launches "
                f"(estimate) {row['block_launches_estimate']} / {row['conv_launches_estimate']}"
                f"; {row['backend']}"
            )
        if k == "train":
            extra = ""
            if row["mode"] == "compile":
                r = fmt_x(row.get("compile_ratio_to_stock"))
                extra = f"; compile {row['compile_s']:.1f} s ({r})"
            return (
                f"{head} step {fmt_ms(row['step_s'])} ({fmt_x(row.get('step_ratio_to_stock'))}"
                f" stock); peak {fmt_gb(row['peak_bytes'])} "
                f"({fmt_x(row.get('memory_ratio_to_stock'))}){extra}"
            )
        if k == "infer":
            return (
                f"{head} 8-flip pass {fmt_ms(row['pass_s'])} "
                f"({fmt_x(row.get('time_ratio_to_stock'))} stock); peak {fmt_gb(row['peak_bytes'])}"
            )
        per = row["launches_per_backend"]
        parts = [
            f"{n}: {v['step_launches']}/step, {v['block_launches']}/block"
            for n, v in per.items()
            if "step_launches" in v
        ]
        return f"{head} launches (estimate) {'; '.join(parts)}"


# ----------------------------------------------------------------------------- estimates


def bytes_estimate(shape: tuple[int, ...], steps: int, s: int = 4, f: int = 4) -> dict:
    """The module docstring's estimate of the bytes the Triton AOS diffusion moves."""
    n = math.prod(shape)
    m = len(shape) - 2
    fwd = (m * (3 * s + 4 * f) + (m - 1) * s) * n
    bwd = (m * (6 * s + 6 * f) + 2 * (m - 1) * s) * n
    essential = 8 * s * n
    return {
        "elements": n,
        "forward_bytes_per_step": fwd,
        "backward_bytes_per_step": bwd,
        "essential_bytes_per_step": essential,
        "steps": steps,
        "block_bytes": steps * (fwd + bwd),
        "note": "estimate on paper (every access to DRAM), not a measurement",
    }


def copy_bandwidth(device: torch.device, numel: int) -> float:
    """Bytes per second of ``dst.copy_(src)`` (one read, one write), best of 5."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(6):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument(
        "--block-shape",
        type=int,
        nargs=5,
        default=[2, 32, 128, 128, 128],
        metavar=("B", "C", "D", "H", "W"),
        help="row 1 (default 2 32 128 128 128)",
    )
    p.add_argument(
        "--patch",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="training/inference patch (default: the plans')",
    )
    p.add_argument("--batch", type=int, help="training batch (default: the plans')")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (default 10)")
    p.add_argument("--reps", type=int, default=10, help="row 1 repetitions (default 10)")
    p.add_argument("--infer-reps", type=int, default=3, help="mirrored passes (default 3)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    p.add_argument(
        "--time-budget",
        type=float,
        default=420.0,
        help="seconds from the start of the process (default 420)",
    )
    p.add_argument("--plans", type=Path, default=PLANS)
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--dataset-json", type=Path, default=DATASET)
    p.add_argument(
        "--rows",
        nargs="+",
        metavar="PATTERN",
        help="only the rows matching these glob patterns, e.g. 'train/*/eager'",
    )
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: 1 on the CPU, torch's own on CUDA)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("gpu_check.json"))
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> str | None:
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available (use --device cpu)"
    if min(args.steps, args.reps, args.infer_reps) < 2 or min(args.block_shape) < 1:
        return "--steps, --reps, --infer-reps must be >= 2 and --block-shape positive"
    for flag, path in (("--plans", args.plans), ("--dataset-json", args.dataset_json)):
        if not path.is_file():
            return f"{flag}: file not found: {path}"
    try:
        conf = load_configuration(args.plans, args.configuration)
    except (KeyError, ValueError) as exc:
        return f"--plans/--configuration: {exc}"
    patch = args.patch or conf["patch_size"]
    stride = total_stride(conf)
    if args.batch is not None and args.batch < 1:
        return "--batch must be positive"
    if any(p % s or p // s < 2 for p, s in zip(patch, stride, strict=True)):
        return (
            f"--patch {' '.join(map(str, patch))}: every axis must be a multiple of the plans' "
            f"total stride {'x'.join(map(str, stride))} with at least 2 voxels left at the "
            "bottleneck (nnU-Net's instance norm cannot train on 1 voxel); e.g. "
            f"{' '.join(str(2 * s) for s in stride)}, or smaller plans (--plans)"
        )
    return None


def summary_table(check: Check) -> str:
    lines = [f"{'row':<22} {'status':<7} {'time':>10} {'ratio':>7} {'memory':>7}  note"]
    for r in check.rows:
        t = rt = rm = "-"
        note = r.get("reason", "")
        if r["status"] == "passed":
            kind = r["key"].split("/")[0]
            if kind == "block_vs_conv":
                t, rt, rm = fmt_ms(r["block_s"]), fmt_x(r["time_ratio"]), fmt_x(r["memory_ratio"])
                note = (
                    f"conv {fmt_ms(r['conv_s'])}; launches (estimate) "
                    f"{r['block_launches_estimate']}/{r['conv_launches_estimate']}"
                )
                kb, kc = r["block_cuda_kernels"], r["conv_cuda_kernels"]
                if isinstance(kb, dict) and "kernels" in kb and isinstance(kc, dict):
                    note += f"; CUDA kernels {kb['kernels']}/{kc.get('kernels')}"
                note += (
                    f"; diffusion >= {fmt_ms(r['diffusion_seconds_at_copy_bandwidth'])} at copy "
                    f"bandwidth; {r['backend']}"
                )
            elif kind == "train":
                t, rt = fmt_ms(r["step_s"]), fmt_x(r.get("step_ratio_to_stock"))
                rm = fmt_x(r.get("memory_ratio_to_stock"))
                if r["mode"] == "compile":
                    note = (
                        f"compile {r['compile_s']:.1f} s "
                        f"({fmt_x(r.get('compile_ratio_to_stock'))} stock's)"
                    )
            elif kind == "infer":
                t, rt = fmt_ms(r["pass_s"]), fmt_x(r.get("time_ratio_to_stock"))
                rm = fmt_x(r.get("memory_ratio_to_stock"))
            else:
                note = check.line(r).split("launches (estimate) ", 1)[-1]
            note = (note + ("; " + r["truncated"] if "truncated" in r else "")).strip("; ")
        lines.append(f"{r['key']:<22} {r['status']:<7} {t:>10} {rt:>7} {rm:>7}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = validate(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    check = Check(args, device)
    est = bytes_estimate(check.block_shape, PDEConfig().steps)
    result: dict[str, Any] = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "backend": backend.describe(device).reason,
        "time_budget_s": args.time_budget,
        "plans": str(args.plans),
        "patch": check.patch,
        "batch": check.batch,
        "block_shape": list(check.block_shape),
        "bytes_estimate": est,
        "complete": False,
        "rows": check.rows,
    }

    def write() -> None:
        counts = {s: sum(r["status"] == s for r in check.rows) for s in STATUSES}
        result["summary"] = counts
        result["elapsed_s"] = round(check.budget.elapsed(), 2)
        write_json(args.output, result)

    print(
        f"gpu_check on {result['device']} (torch {torch.__version__}; PDE kernels: "
        f"{result['backend']}); budget {args.time_budget:g} s"
    )
    print(
        f"bytes-moved estimate (on paper, not measured) of the AOS diffusion at "
        f"{'x'.join(map(str, check.block_shape))}: forward "
        f"{fmt_bytes(est['forward_bytes_per_step'])} + backward "
        f"{fmt_bytes(est['backward_bytes_per_step'])} per step (it must move at least "
        f"{fmt_bytes(est['essential_bytes_per_step'])}), {fmt_bytes(est['block_bytes'])} per "
        f"block of {est['steps']} steps",
        flush=True,
    )
    write()
    check.run(write)
    result["complete"] = True
    if check.compile_probe is not None:
        result["compile_probe"] = check.compile_probe
    if check.conv_probe_s is not None:
        result["conv_probe_s"] = check.conv_probe_s
    write()
    counts = result["summary"]
    print()
    print(summary_table(check))
    print(
        f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {result['elapsed_s']:.0f} s; wrote {args.output}"
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
