"""Count the kernel launches of a piece of eager code without a GPU (an estimate).

On a GPU ``torch.profiler`` counts the CUDA kernels. Here, on any device, :func:`count`
counts every ATen operator that computes (views, allocations and metadata ops launch
nothing and are left out) plus every Triton launch of :mod:`.triton_aos`, and the host
synchronisations (``.item()``-like reads of a device value). One ATen operator is one
launch for the elementwise and reduction ops that dominate here; cuDNN convolutions and
some reductions launch two or three, so the GPU count can be somewhat higher.

    with count() as c:
        block(x).sum().backward()
    print(c.total, c.triton, c.syncs, c.by_op.most_common(5))
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.utils._python_dispatch import TorchDispatchMode

_NO_LAUNCH = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "detach",
    "lift_fresh",
    "alias",
    "_to_copy_noop",
    "set_",
    "resize_",
    "_reshape_alias",
    "_unsafe_view",
    "view",
    "expand",
    "t",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "as_strided",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "narrow",
    "movedim",
    "is_same_size",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "record_stream",
}
_SYNC = {"_local_scalar_dense", "item", "equal", "is_nonzero", "nonzero"}

_state = threading.local()


@dataclass
class Launches:
    """What :func:`count` saw: ``aten`` computing ops, ``triton`` launches, ``syncs``
    (device-to-host reads), and ``by_op`` per op name."""

    aten: int = 0
    triton: int = 0
    syncs: int = 0
    by_op: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Estimated kernel launches: ``aten + triton``."""
        return self.aten + self.triton


class _Mode(TorchDispatchMode):
    def __init__(self, result: Launches) -> None:
        super().__init__()
        self.result = result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(_state, "in_triton", False):
            return out  # the interpreter's own tensor traffic, not the program's
        name = func.overloadpacket.__name__
        if name in _SYNC:
            self.result.syncs += 1
            self.result.by_op[name] += 1
        elif name not in _NO_LAUNCH and not getattr(func, "is_view", False):
            self.result.aten += 1
            self.result.by_op[name] += 1
        return out


_active: list[Launches] = []


@contextlib.contextmanager
def count() -> Iterator[Launches]:
    """Count launches of the code in the ``with`` block (this thread, eager mode)."""
    result = Launches()
    _active.append(result)
    try:
        with _Mode(result):
            yield result
    finally:
        _active.remove(result)


@contextlib.contextmanager
def triton_launch(name: str) -> Iterator[None]:
    """Wrap one Triton launch: counted once; the tensor ops inside (the interpreter's) are
    not counted."""
    for result in _active:
        result.triton += 1
        result.by_op["triton:" + name] += 1
    prev = getattr(_state, "in_triton", False)
    _state.in_triton = True
    try:
        yield
    finally:
        _state.in_triton = prev
