"""Every kernel of the PDE block written once: its name, its inputs (kind, shape, dtype) and
its outputs (shape, dtype).

From a :class:`KernelSpec` :mod:`.ops` derives the ``torch.library`` schema of the custom op
(:meth:`KernelSpec.schema`), its fake (meta) implementation (:meth:`KernelSpec.fake`) and
the argument check (:meth:`KernelSpec.check`); the backends (C in
:mod:`~nnunet_pde.pde.native`, Triton in :mod:`.triton_aos`, :mod:`.triton_tail`,
:mod:`.triton_reaction`, torch in :mod:`.torch_aos` and :mod:`~nnunet_pde.pde.tail`) take
the arguments in the order written here. The spec is read when the ops are registered (at
import); nothing here runs per call, except :meth:`KernelSpec.check` where
:data:`~nnunet_pde.pde.kernels.ops.Kernel.check` is switched on (tests) and in the fake
implementations (``torch.compile``, ``opcheck``).

Shapes are written as space-separated dimensions, each bound at its first use and checked
at every later one: a name (``B``, ``C``, ``H``, ``m``, ...), a number, ``*S`` (all the
remaining dimensions: the spatial axes, ``m = len(S)``) or ``*1`` (as many ones as ``S`` has
axes: the trailing dimensions of a 1x1 convolution's weight, or of per-volume statistics).
``""`` is a 0-d tensor; a float list's shape is its length. An output's shape is such a
string over the inputs' dimensions, or a function ``(args, dims) -> shape`` where it depends
on the arguments' values. Dtypes: an input's ``dtype`` is checked where given (``float64``);
an output's is ``float64``, ``compute`` (float64 for a float64 first input, else float32)
or the name of the input whose dtype it has (default: the first tensor input's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: Schema types of the arguments.
KINDS = ("Tensor", "Tensor?", "float", "bool", "float[]")


@dataclass(frozen=True)
class Arg:
    """One input: ``kind`` one of :data:`KINDS`, ``shape`` (``None``: not checked) and, for
    a tensor, a required ``dtype`` (``None``: any)."""

    name: str
    kind: str = "Tensor"
    shape: str | None = "B C *S"
    dtype: torch.dtype | None = None


@dataclass(frozen=True)
class Out:
    """One output: ``shape`` (a pattern over the inputs' dimensions, or a function
    ``(args, dims) -> shape``) and ``dtype`` (see the module docstring)."""

    name: str
    shape: str | Callable[[dict, dict], Sequence[int]] = "B C *S"
    dtype: str | None = None


@dataclass(frozen=True)
class KernelSpec:
    """A kernel ``torch.ops.nnunet_pde.<name>``: inputs, outputs, the device types its op
    is registered for (``None``: all) and one line on what it computes."""

    name: str
    doc: str
    inputs: tuple[Arg, ...]
    outputs: tuple[Out, ...]
    devices: str | None = "cpu"

    def schema(self) -> str:
        """The op's schema, e.g. ``"(Tensor u, Tensor? k) -> Tensor"``."""
        for a in self.inputs:
            if a.kind not in KINDS:
                raise ValueError(f"{self.name}: argument {a.name} of unknown kind {a.kind!r}")
        args = ", ".join(f"{a.kind} {a.name}" for a in self.inputs)
        outs = ", ".join("Tensor" for _ in self.outputs)
        return f"({args}) -> " + (outs if len(self.outputs) == 1 else f"({outs})")

    def bind(self, args: Sequence) -> dict[str, object]:
        """The dimensions the arguments bind (``S`` a tuple, the rest ints); ``ValueError``
        naming the argument where one does not fit its declaration."""
        if len(args) != len(self.inputs):
            raise ValueError(f"{self.name}: {len(args)} arguments for {len(self.inputs)}")
        dims: dict[str, object] = {}
        trailing_ones: list[tuple[str, int]] = []
        for a, value in zip(self.inputs, args, strict=True):
            if value is None:
                if a.kind != "Tensor?":
                    raise ValueError(f"{self.name}: {a.name} may not be None")
                continue
            if a.kind.startswith("Tensor"):
                if not torch.is_tensor(value):
                    raise ValueError(f"{self.name}: {a.name} must be a tensor")
                if a.dtype is not None and value.dtype != a.dtype:
                    raise ValueError(f"{self.name}: {a.name} must be {a.dtype}, not {value.dtype}")
                shape = tuple(value.shape)
            elif a.kind == "float[]":
                shape = (len(value),)
            else:
                continue
            if a.shape is not None:
                ones = _match(self.name, a.name, a.shape, shape, dims)
                if ones is not None:
                    trailing_ones.append((a.name, ones))
        if "S" in dims:
            m = len(dims["S"])  # type: ignore[arg-type]
            if dims.setdefault("m", m) != m:
                raise ValueError(f"{self.name}: m = {dims['m']} but {m} spatial axes")
            for name, count in trailing_ones:
                if count != m:
                    raise ValueError(f"{self.name}: {name} has {count} trailing ones, not {m}")
        return dims

    def check(self, args: Sequence) -> None:
        """Raise ``ValueError`` where ``args`` do not fit the declaration."""
        self.bind(args)

    def fake(self, *args) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Empty outputs of the declared shapes and dtypes (the op's fake implementation);
        checks the arguments first."""
        dims = self.bind(args)
        named = {a.name: v for a, v in zip(self.inputs, args, strict=True)}
        first = next(v for v in args if torch.is_tensor(v))
        outs = []
        for o in self.outputs:
            if callable(o.shape):
                shape = tuple(o.shape(named, dims))
            else:
                shape = _expand(o.shape, dims)
            if o.dtype is None:
                dtype = first.dtype
            elif o.dtype == "float64":
                dtype = torch.float64
            elif o.dtype == "compute":
                dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
            else:
                dtype = named[o.dtype].dtype
            outs.append(first.new_empty(shape, dtype=dtype))
        return outs[0] if len(outs) == 1 else tuple(outs)


def _match(kernel: str, arg: str, pattern: str, shape: tuple, dims: dict) -> int | None:
    """Bind ``pattern`` to ``shape`` in ``dims``; returns the count of a ``*1`` (else None)."""
    tokens = pattern.split()
    star = next((i for i, t in enumerate(tokens) if t.startswith("*")), None)
    fixed = len(tokens) - (star is not None)
    if len(shape) < fixed or (star is None and len(shape) != fixed):
        raise ValueError(f"{kernel}: {arg} has shape {list(shape)}, expected ({pattern})")
    ones = None
    for i, tok in enumerate(tokens):
        if star is not None and i == star:
            rest = shape[i : len(shape) - (len(tokens) - i - 1)]
            if tok == "*1":
                if any(s != 1 for s in rest):
                    raise ValueError(f"{kernel}: {arg} has shape {list(shape)}, not ({pattern})")
                ones = len(rest)
            elif dims.setdefault(tok[1:], rest) != rest:
                raise ValueError(
                    f"{kernel}: {arg} has {tok[1:]} = {list(rest)}, not {dims[tok[1:]]}"
                )
            continue
        size = shape[i if star is None or i < star else len(shape) - (len(tokens) - i)]
        want = int(tok) if tok.isdigit() else dims.setdefault(tok, size)
        if want != size:
            raise ValueError(f"{kernel}: {arg} has {tok} = {size}, not {want} ({pattern})")
    return ones


def _expand(pattern: str, dims: dict) -> tuple[int, ...]:
    shape: list[int] = []
    for tok in pattern.split():
        if tok == "*1":
            shape += [1] * int(dims["m"])  # type: ignore[call-overload]
        elif tok.startswith("*"):
            shape += list(dims[tok[1:]])  # type: ignore[call-overload]
        else:
            shape.append(int(tok) if tok.isdigit() else int(dims[tok]))  # type: ignore[call-overload]
    return tuple(shape)


# --------------------------------------------------------------------------- the arguments

MAP = "B C *S"  # a feature map
STAT = "B C *1"  # per-volume statistics
PAIR = "B C"  # per sample and channel
AXES = "m C"  # per axis and channel

_AOS = (
    Arg("u"), Arg("b"), Arg("cA", shape=AXES), Arg("ce", "Tensor?", AXES), Arg("k", "Tensor?", AXES)
)  # fmt: skip
_W1, _W2 = Arg("w1", shape="H C *1"), Arg("w2", shape="C H *1")
_REACTION = (Arg("u"), _W1, Arg("b1", shape="H"), _W2, Arg("b2", shape="C"), Arg("tau", shape="C"))
_SPACING = Arg("spacing", "float[]", "m")
_EPS = Arg("eps", "float", None)
_GRADS = (Out("gcA", AXES, "cA"), Out("gce", AXES, "cA"), Out("gk", AXES, "cA"))
_COEF_ARGS = (Arg("logit", shape=""), Arg("alpha_raw", shape="C"), Arg("kappa_raw", "Tensor?", "C"))
_COEF_SCALARS = (_SPACING, *(Arg(n, "float", None) for n in ("tau_max", "rate", "theta")))


def _axes_if(present: bool, dims: dict) -> tuple[int, ...]:
    """``(m, C)`` for a coefficient that is present, else the empty ``(0,)``."""
    return (dims["m"], dims["C"]) if present else (0,)  # type: ignore[return-value]


def _chunks(dims: dict) -> int:
    from .triton_tail import chunks  # the Triton tail's programs per volume

    return chunks(math.prod(dims["S"]))  # type: ignore[arg-type]


def _layout_size(args: dict, dims: dict) -> tuple[int]:
    from .triton_reaction import gradient_layout

    hidden = None if args["w1"] is None else args["w1"].shape[0]
    return (sum(s for _, _, s in gradient_layout(dims["m"], dims["C"], hidden)),)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the kernels

AOS_DIFFUSION = KernelSpec(
    "aos_diffusion",
    "(1/m) sum_d T_d^{-1} (b + ce_d A_d u): the AOS diffusion step, on the backend chosen for u",
    _AOS,
    (Out("out"),),
    devices=None,
)
AOS_DIFFUSION_BACKWARD = KernelSpec(
    "aos_diffusion_backward",
    "(dL/db, dL/du including dL/db, dL/dcA, dL/dce, dL/dk) of aos_diffusion for upstream g",
    (*_AOS[:2], Arg("g"), *_AOS[2:]),
    (Out("gb"), Out("gu"), *_GRADS),
    devices=None,
)
RESPONSE_B = KernelSpec(
    "response_b", "b = u + tau N(u), N(u) = W2 tanh(W1 u + b1) + b2 (C)", _REACTION, (Out("b"),)
)
RESPONSE_BH = KernelSpec(
    "response_bh",
    "(b, h): response_b and the hidden activation h = tanh(W1 u + b1) (C)",
    _REACTION,
    (Out("b"), Out("h", "B H *S")),
)
RESPONSE_BACKWARD = KernelSpec(
    "response_backward",
    "(gu, gw1, gb1, gw2, gb2, gtau) of response_b for dL/db = gb from u and h (C)",
    (Arg("u"), Arg("gb"), Arg("gu_in"), Arg("h", shape="B H *S"), _W1, _W2, *_REACTION[4:]),
    tuple(Out(n, s, "gb") for n, s in (("gu", MAP), ("gw1", "H C *1"), ("gb1", "H"),
                                         ("gw2", "C H *1"), ("gb2", "C"), ("gtau", "C"))),
)  # fmt: skip
STANDARDISE = KernelSpec(
    "standardise",
    "(x_hat, mean, std) per sample and channel, std = sqrt(var + eps) (C)",
    (Arg("x"), _EPS),
    (Out("x_hat"), Out("mean", STAT), Out("std", STAT)),
)
STANDARDISE_BACKWARD = KernelSpec(
    "standardise_backward",
    "dL/dx of standardise, plus a gy where gy is given (C)",
    (Arg("x_hat"), Arg("std", shape=STAT), Arg("g_hat"), Arg("g_mean", "Tensor?", STAT),
     Arg("g_std", "Tensor?", STAT), Arg("gy", "Tensor?"), Arg("a", "Tensor?", PAIR)),
    (Out("dx"),),
)  # fmt: skip
EDGE_ENERGY_SUMS = KernelSpec(
    "edge_energy_sums",
    "per axis the sum of log(1 + s^2) over the faces, and z's per-volume (mean, 1 / std) (C)",
    (Arg("z"), _SPACING, _EPS),
    (Out("sums", "m", "float64"), Out("mean", STAT), Out("inv_std", STAT)),
)
_ENERGY = (
    Arg("z"),
    Arg("g", shape=""),
    _SPACING,
    *(Arg(n, shape=STAT) for n in ("mean", "inv_std")),
)
EDGE_ENERGY_BACKWARD = KernelSpec(
    "edge_energy_backward", "g dE/dz of the edge energy (C)", _ENERGY, (Out("gz"),)
)
GATE = KernelSpec(
    "gate",
    "a x + (c + g u), a, g, c per sample and channel (C)",
    (Arg("x"), Arg("u"), Arg("a", shape=PAIR), Arg("g", shape=PAIR), Arg("c", shape=PAIR)),
    (Out("y"),),
)
_GATE_SUMS = Out("S", "B C 3", "float64")
GATE_BACKWARD = KernelSpec(
    "gate_backward",
    "(a gy, g gy, (sum gy, sum gy u, sum gy x_hat)) of the gate (C)",
    (Arg("gy"), Arg("x_hat"), Arg("u"), Arg("a", shape=PAIR), Arg("g", shape=PAIR)),
    (Out("dx"), Out("gu"), _GATE_SUMS),
)
GATE_BACKWARD_DX = KernelSpec(
    "gate_backward_dx",
    "gate_backward without dL/du (the regulariser's kernel adds it) (C)",
    (Arg("gy"), Arg("x_hat"), Arg("a", shape=PAIR), Arg("g", shape=PAIR)),
    (Out("dx"), _GATE_SUMS),
)
GATE_ENERGY_BACKWARD = KernelSpec(
    "gate_energy_backward",
    "(g dE/dz + gg gy, sum gy z per sample and channel) (C)",
    (*_ENERGY, Arg("gy"), Arg("gg", shape=PAIR)),
    (Out("gz"), Out("su", PAIR, "float64")),
)
TRITON_COEFFICIENTS = KernelSpec(
    "triton_coefficients",
    "(tau, cA, ce, k) of the fused step from the raw parameters (ce, k empty where absent)",
    (*_COEF_ARGS, *_COEF_SCALARS),
    (
        Out("ts", "C", "alpha_raw"),
        Out("cA", AXES, "alpha_raw"),
        Out("ce", lambda a, d: _axes_if(a["theta"] < 1.0, d), "alpha_raw"),
        Out("k", lambda a, d: _axes_if(a["kappa_raw"] is not None, d), "alpha_raw"),
    ),
    devices=None,
)  # fmt: skip
TRITON_COEFFICIENTS_BACKWARD = KernelSpec(
    "triton_coefficients_backward",
    "(g_logit, g_alpha_raw, g_kappa_raw) of triton_coefficients",
    (*_COEF_ARGS, Arg("gts", shape="C"), Arg("gcA", shape=AXES), Arg("gce", "Tensor?", AXES),
     Arg("gk", "Tensor?", AXES), *_COEF_SCALARS),
    (Out("glogit", "", "logit"), Out("gar", "C", "alpha_raw"), Out("gkr", "C", "alpha_raw")),
    devices=None,
)  # fmt: skip
TRITON_STANDARDISE = KernelSpec(
    "triton_standardise",
    "(x_hat, mean, std) of standardise, the statistics in the compute dtype",
    (Arg("x"), _EPS),
    (Out("x_hat"), Out("mean", STAT, "compute"), Out("std", STAT, "compute")),
    devices=None,
)
TRITON_RESPONSE_B = KernelSpec(
    "triton_response_b", "response_b on the Triton kernels", _REACTION, (Out("b"),), devices=None
)


def _energy_only(args: dict, dims: dict) -> tuple[int, ...]:
    """The regulariser's statistics ``(B, C, 1, ...)``, empty ``(0,)`` without it."""
    return (dims["B"], dims["C"], *([1] * dims["m"])) if args["energy"] else (0,)  # type: ignore[list-item]


TRITON_TAIL_FORWARD = KernelSpec(
    "triton_tail_forward",
    "(y, per-chunk energy sums, e_mean, e_inv_std) of the gate and regulariser",
    (Arg("x"), Arg("u"), Arg("gamma", shape="C"), Arg("mean", shape=STAT),
     Arg("std", shape=STAT), _SPACING, _EPS, Arg("energy", "bool", None)),
    (Out("y"),
     Out("esum", lambda a, d: (d["B"], d["C"], _chunks(d)) if a["energy"] else (0,), "compute"),
     Out("e_mean", _energy_only, "compute"), Out("e_inv", _energy_only, "compute")),
    devices=None,
)  # fmt: skip
TRITON_TAIL_BACKWARD = KernelSpec(
    "triton_tail_backward",
    "(dL/du, per-chunk sums S (B, C, chunks, 5)) of triton_tail_forward",
    (Arg("gy"), Arg("u"), Arg("x_hat"), Arg("gamma", shape="C"), Arg("std", shape=STAT),
     Arg("e_mean", shape=None), Arg("e_inv", shape=None), Arg("g_energy", shape=""),
     _SPACING, Arg("energy", "bool", None)),
    (Out("gu"), Out("S", lambda a, d: (d["B"], d["C"], _chunks(d), 5), "float64")),
    devices=None,
)  # fmt: skip
TRITON_STANDARDISE_BACKWARD = KernelSpec(
    "triton_standardise_backward",
    "(dL/dx, std (sum gy u - sum gy x_hat) per volume) from the sums S of the tail",
    (Arg("x_hat"), Arg("std", shape=STAT), Arg("g_hat"),
     Arg("S", shape="B C N 5", dtype=torch.float64), Arg("gamma", shape="C"), Arg("gy")),
    (Out("dx"), Out("ggp", PAIR, "std")),
    devices=None,
)  # fmt: skip
TRITON_STEP_BACKWARD = KernelSpec(
    "triton_step_backward",
    "(dL/du, the flat parameter gradient plus acc) of one fused step",
    (Arg("u"), Arg("g"), Arg("tau", shape="C"), *_AOS[2:],
     *(Arg(a.name, "Tensor?", a.shape) for a in _REACTION[1:5]), Arg("acc", "Tensor?", "L")),
    (Out("gu"), Out("G", _layout_size, "cA")),
    devices=None,
)  # fmt: skip

#: Every kernel, by name.
KERNELS: dict[str, KernelSpec] = {
    s.name: s for s in globals().values() if isinstance(s, KernelSpec)
}
