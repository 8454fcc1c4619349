"""The kernel declarations (pde/kernels/spec.py): every op registered from its spec, the
derived schemas, fake outputs and argument checks; and the C prototypes read for ctypes."""

from __future__ import annotations

import ctypes

import pytest
import torch

from nnunet_pde.pde import PDEBlock, PDEConfig
from nnunet_pde.pde.kernels import backend, cpu_build, ops, spec, triton_ops  # noqa: F401


def test_every_op_is_registered_from_its_spec() -> None:
    assert set(ops.Kernel.registry) == set(spec.KERNELS)
    for name, kernel in ops.Kernel.registry.items():
        assert kernel.spec is spec.KERNELS[name]
        schema = str(getattr(torch.ops.nnunet_pde, name).default._schema)
        assert schema == f"nnunet_pde::{name}{kernel.spec.schema()}"


def test_schema_and_fake_of_the_aos_step() -> None:
    s = spec.AOS_DIFFUSION_BACKWARD
    assert s.schema() == (
        "(Tensor u, Tensor b, Tensor g, Tensor cA, Tensor? ce, Tensor? k) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    )
    u = torch.zeros(2, 3, 4, 5, 6, dtype=torch.float64)
    cA = torch.zeros(3, 3, dtype=torch.float64)
    gb, gu, gcA, gce, gk = s.fake(u, u, u, cA, None, cA)
    assert gb.shape == gu.shape == u.shape and gcA.shape == gce.shape == gk.shape == (3, 3)
    assert gb.dtype == gk.dtype == torch.float64
    x_hat, mean, std = spec.TRITON_STANDARDISE.fake(u.half(), 1e-5)
    assert x_hat.dtype == torch.float16 and mean.shape == (2, 3, 1, 1, 1)
    assert mean.dtype == std.dtype == torch.float32  # the compute dtype
    sums, m, _ = spec.EDGE_ENERGY_SUMS.fake(u, [1.0, 2.0, 1.0], 1e-5)
    assert sums.shape == (3,) and sums.dtype == torch.float64 and m.shape == (2, 3, 1, 1, 1)


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5), torch.zeros(3, 3), None, None), "m"),
        ((torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 4, 5), torch.zeros(2, 3), None, None), "b"),
        ((torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5), None, None, None), "cA"),
        ((torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5), torch.zeros(2, 3)), "arguments"),
    ],
)
def test_the_check_names_what_does_not_fit(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        spec.AOS_DIFFUSION.check(args)


def test_a_reaction_weight_must_be_a_1x1_convolution() -> None:
    u = torch.zeros(1, 2, 3, 4, 5)
    w1, w2 = torch.zeros(4, 2, 1, 1, 1), torch.zeros(2, 4, 1, 1, 1)
    good = (u, w1, torch.zeros(4), w2, torch.zeros(2), torch.zeros(2))
    assert spec.RESPONSE_BH.fake(*good)[1].shape == (1, 4, 3, 4, 5)
    with pytest.raises(ValueError, match="w1"):
        spec.RESPONSE_B.check((u, torch.zeros(4, 2, 3, 1, 1), *good[2:]))
    with pytest.raises(ValueError, match="trailing ones"):
        spec.RESPONSE_B.check((u, torch.zeros(4, 2, 1, 1), *good[2:]))


def test_a_block_passes_the_argument_checks(monkeypatch) -> None:
    """Every kernel call of training steps and inference on the C backend fits its spec."""
    if backend.describe("cpu").name != "c":
        pytest.skip(backend.describe("cpu").reason)
    monkeypatch.setattr(ops.Kernel, "check", True)
    checked: set[str] = set()
    original = spec.KernelSpec.check

    def check(self, args):
        checked.add(self.name)
        return original(self, args)

    monkeypatch.setattr(spec.KernelSpec, "check", check)
    for config in (PDEConfig(), PDEConfig(solver="crank_nicolson", operator="laplacian")):
        block = PDEBlock(3, (1.0, 2.0, 1.0), config).train()
        block.record_consistency = True
        with torch.no_grad():
            block.gamma.fill_(0.5)
        x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
        (block(x).square().sum() + block.last_residuals["energy"]).backward()
        block.record_consistency = False
        block(x).sum().backward()
        block.evolve(x).sum().backward()
    assert {"aos_diffusion", "gate", "standardise"} <= checked


def test_ctypes_argument_types_come_from_the_c_prototypes() -> None:
    protos = cpu_build.prototypes()
    p, lg, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    assert protos["aos_forward_f32"] == (i, [p, p, p, p, i, lg, p, p, p, lg, lg])
    assert protos["standardise_forward_f64"][1][5] is ctypes.c_double  # eps
    assert protos["mlp_chunk_len_f32"] == (lg, [lg, lg])
    assert protos["tanh_f32_array"] == (None, [p, p, lg])
    assert protos["aos_lanes"] == (i, [])
    assert not any(n.startswith(("aos_run", "panel", "sweep")) for n in protos)  # static
