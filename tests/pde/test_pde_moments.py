"""Moment transform, constrained kernels and their order of accuracy on analytic fields."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from nnunet_pde.pde import (
    PDEBlock,
    PDEConfig,
    derivative_indices,
    derivative_kernel,
    kernel_to_moments,
    moments_to_kernel,
)
from nnunet_pde.pde.moments import check_accuracy, constraint

ROUND_TRIP_SHAPES = [(3,), (5,), (7,), (3, 5), (5, 5), (3, 3, 3), (5, 5, 5), (3, 5, 7)]


@pytest.mark.parametrize("shape", ROUND_TRIP_SHAPES)
def test_round_trip_is_exact(shape: tuple[int, ...]) -> None:
    """The pair is an exact inverse (any odd size, 1-3 dims, batch axes in front)."""
    torch.manual_seed(0)
    n = len(shape)
    q = torch.randn(4, *shape, dtype=torch.float64)
    assert (moments_to_kernel(kernel_to_moments(q, n), n) - q).abs().max() < 1e-12
    assert (kernel_to_moments(moments_to_kernel(q, n), n) - q).abs().max() < 1e-12


@pytest.mark.parametrize("shape", [(3,), (5,), (3, 3), (3, 3, 3)])
def test_round_trip_float32(shape: tuple[int, ...]) -> None:
    """< 1e-6 (relative to the largest entry) with a float32 intermediate.

    For 5^2 and 5^3 kernels float32 cannot do this: moments of O(10) rounded to float32 and
    multiplied by the inverse Vandermonde's condition number give ~1e-5 (see the docs).
    """
    torch.manual_seed(0)
    n = len(shape)
    q = torch.randn(64, *shape)
    assert (moments_to_kernel(kernel_to_moments(q, n), n) - q).abs().max() < 1e-6 * q.abs().max()
    assert (kernel_to_moments(moments_to_kernel(q, n), n) - q).abs().max() < 1e-6 * q.abs().max()


def test_moments_match_their_definition() -> None:
    """Against a direct evaluation of ``m[a] = sum_k q[k] prod_d k_d^a_d / a_d!``."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 5, 3))
    m = kernel_to_moments(torch.tensor(q)).numpy()
    for a in itertools.product(range(3), range(5), range(3)):
        ref = 0.0
        for k in itertools.product(range(3), range(5), range(3)):
            off = (k[0] - 1, k[1] - 2, k[2] - 1)
            ref += q[k] * math.prod(
                o**ad / math.factorial(ad) for o, ad in zip(off, a, strict=True)
            )
        assert m[a] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_zero_free_moments_give_central_differences(ndim: int) -> None:
    for alpha in [
        tuple(int(i == 0) for i in range(ndim)),
        tuple(2 * int(i == 0) for i in range(ndim)),
    ]:
        q = derivative_kernel(alpha, 3, 2).numpy()
        centre = (1,) * (ndim - 1)
        line = q[(slice(None), *centre)]
        expected = [-0.5, 0.0, 0.5] if sum(alpha) == 1 else [1.0, -2.0, 1.0]
        assert line == pytest.approx(expected, abs=1e-12)
        assert np.abs(q).sum() == pytest.approx(np.abs(expected).sum(), abs=1e-12)


def test_constraints_stay_exact_after_optimiser_steps() -> None:
    block = PDEBlock(2, (2.0, 1.0, 1.0), PDEConfig(operator="moment", kernel_size=5, accuracy=2))
    block.train()
    with torch.no_grad():
        block.gamma.fill_(1.0)
        block.moment.theta.normal_()
    opt = torch.optim.Adam(block.parameters(), lr=0.1)
    x = torch.randn(1, 2, 7, 7, 7)
    before = block.moment.free_moments.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        block(x).square().mean().backward()
        opt.step()
    assert not torch.allclose(block.moment.free_moments, before)  # free moments did move
    mop = block.moment
    # Structurally exact: the fixed moments are never parameters.
    m = mop.moments().detach()
    fixed_mask = torch.ones(m.numel(), dtype=torch.bool)
    fixed_mask[mop.free_index] = False
    assert torch.equal(m.reshape(-1)[fixed_mask], mop.fixed_moments.reshape(-1)[fixed_mask])
    # And the assembled kernels really have them (read back in float64).
    kernels = mop.double().kernels().detach()
    for j, alpha in enumerate(mop.alphas):
        # Undo the spacing scale, then read the moments back from the kernel itself.
        unscaled = kernels[j] * math.prod(h**a for h, a in zip(mop.spacing, alpha, strict=True))
        m = kernel_to_moments(unscaled).numpy()
        fixed, free = constraint(alpha, 5, 2)
        assert np.abs(m[~free] - fixed[~free]).max() < 1e-10


CONVERGENCE_CASES = [
    (3, 1, (1, 0, 0)),
    (3, 2, (0, 1, 0)),
    (5, 3, (0, 0, 1)),
    (5, 4, (1, 0, 0)),
    (3, 1, (0, 0, 2)),
    (3, 2, (2, 0, 0)),
    (3, 2, (0, 1, 1)),
    (5, 3, (1, 0, 1)),
    (5, 2, (0, 2, 0)),
]
ANISO = np.array([1.0, 0.8, 1.3])  # spacing (h, 0.8 h, 1.3 h) along (z, y, x)
POINT = np.array([0.3, -0.2, 0.4])


def _random_kernel(alpha, kernel_size: int, accuracy: int, h: float, seed: int) -> np.ndarray:
    """Constrained kernel with random free moments (so the error term is generic)."""
    rng = np.random.default_rng(seed)
    n_free = int(constraint(alpha, kernel_size, accuracy)[1].sum())
    free = torch.tensor(rng.uniform(-1, 1, n_free))
    q = derivative_kernel(alpha, kernel_size, accuracy, free=free, spacing=tuple(h * ANISO))
    return q.numpy()


def _apply_at_point(q: np.ndarray, f, h: float) -> float:
    r = (q.shape[0] - 1) // 2
    offs = np.arange(-r, r + 1)
    grids = np.meshgrid(*[POINT[d] + offs * h * ANISO[d] for d in range(3)], indexing="ij")
    return float((q * f(*grids)).sum())


def _monomials(degree: int):
    return [a for a in itertools.product(range(degree + 1), repeat=3) if sum(a) == degree]


def _poly(coeffs: dict, deriv=(0, 0, 0)):
    """Polynomial sum_a c_a z^a0 y^a1 x^a2 (or its derivative d^deriv) as a function."""

    def f(z, y, x):
        out = 0.0 * z
        for a, c in coeffs.items():
            if any(ai < di for ai, di in zip(a, deriv, strict=True)):
                continue
            term = c
            for v, ai, di in zip((z, y, x), a, deriv, strict=True):
                term = term * math.perm(ai, di) * v ** (ai - di)
            out = out + term
        return out

    return f


@pytest.mark.parametrize("kernel_size,accuracy,alpha", CONVERGENCE_CASES)
def test_exact_on_polynomials_and_order_of_leading_error(
    kernel_size: int, accuracy: int, alpha
) -> None:
    """Taylor: on polynomials of degree < |alpha| + acc the kernel is exact; on degree
    |alpha| + acc the error is exactly ``C h^acc``, so halving h divides it by ``2^acc``."""
    rng = np.random.default_rng(7)
    top = sum(alpha) + accuracy
    low = {a: rng.uniform(-1, 1) for d in range(top) for a in _monomials(d)}
    high = {a: rng.uniform(-1, 1) for a in _monomials(top)}
    seed = sum(alpha) + 10 * kernel_size + accuracy
    errors = []
    for h in (0.1, 0.05, 0.025):
        q = _random_kernel(alpha, kernel_size, accuracy, h, seed)
        exact_low = _poly(low, alpha)(*POINT)
        assert _apply_at_point(q, _poly(low), h) == pytest.approx(exact_low, abs=1e-8)
        errors.append(_apply_at_point(q, _poly(high), h) - _poly(high, alpha)(*POINT))
    assert abs(errors[0]) > 1e-8  # a generic kernel has a non-zero leading error
    assert errors[0] / errors[1] == pytest.approx(2**accuracy, rel=1e-4)
    assert errors[1] / errors[2] == pytest.approx(2**accuracy, rel=1e-4)


@pytest.mark.parametrize("kernel_size,accuracy,alpha", CONVERGENCE_CASES)
def test_convergence_order_on_smooth_field(kernel_size: int, accuracy: int, alpha) -> None:
    """``f = sin(w . p) exp(0.2 y)`` on refined anisotropic grids: observed order >= acc."""
    wave = np.array([-0.5, 0.3, 0.7])

    def f(z, y, x):
        return np.sin(wave[0] * z + wave[1] * y + wave[2] * x) * np.exp(0.2 * y)

    # d^alpha of Im(exp(i w.p + 0.2 y)) multiplies by (i w_d + 0.2 [d = y]) per derivative.
    s = np.array([1j * wave[0], 1j * wave[1] + 0.2, 1j * wave[2]])
    exact = float(
        (np.prod(s ** np.array(alpha)) * np.exp(1j * (wave @ POINT) + 0.2 * POINT[1])).imag
    )
    seed = sum(alpha) + 10 * kernel_size + accuracy
    errors = [
        abs(_apply_at_point(_random_kernel(alpha, kernel_size, accuracy, h, seed), f, h) - exact)
        for h in (0.04, 0.02, 0.01)
    ]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > accuracy - 0.1), (errors, orders)


def test_moment_operator_is_exact_on_quadratics_with_anisotropic_spacing() -> None:
    """``M[u] = sum_j c_j d^alpha_j u`` exactly for a quadratic ``u`` (acc 2 kernels are exact
    on polynomials of degree < |alpha| + 2), with random free moments and coefficients."""
    spacing = (2.0, 1.0, 1.5)
    block = PDEBlock(2, spacing, PDEConfig(operator="moment", kernel_size=3, accuracy=2)).double()
    torch.manual_seed(3)
    mop = block.moment
    with torch.no_grad():
        mop.free_moments.normal_()
        mop.theta.normal_()
    n = (7, 6, 8)
    z, y, x = np.meshgrid(
        *[np.arange(k) * h for k, h in zip(n, mop.spacing, strict=True)], indexing="ij"
    )
    coeffs = np.array([0.3, -0.7, 0.2, 0.5, -0.4, 0.9, 0.25, -0.6, 0.1, 1.0])
    u = (
        coeffs[0] * z
        + coeffs[1] * y
        + coeffs[2] * x
        + coeffs[3] * z**2
        + coeffs[4] * y**2
        + coeffs[5] * x**2
        + coeffs[6] * z * y
        + coeffs[7] * z * x
        + coeffs[8] * y * x
        + coeffs[9]
    )
    grads = {
        (1, 0, 0): coeffs[0] + 2 * coeffs[3] * z + coeffs[6] * y + coeffs[7] * x,
        (0, 1, 0): coeffs[1] + 2 * coeffs[4] * y + coeffs[6] * z + coeffs[8] * x,
        (0, 0, 1): coeffs[2] + 2 * coeffs[5] * x + coeffs[7] * z + coeffs[8] * y,
        (2, 0, 0): 2 * coeffs[3] + 0 * z,
        (0, 2, 0): 2 * coeffs[4] + 0 * z,
        (0, 0, 2): 2 * coeffs[5] + 0 * z,
        (1, 1, 0): coeffs[6] + 0 * z,
        (1, 0, 1): coeffs[7] + 0 * z,
        (0, 1, 1): coeffs[8] + 0 * z,
    }
    ut = torch.tensor(u).expand(1, 2, *n).contiguous()
    with torch.no_grad():
        out = mop.apply(ut, mop.channel_kernels())
        c = mop.coefficients().numpy()
    for ch in range(2):
        ref = sum(c[j, ch] * grads[a] for j, a in enumerate(mop.alphas))
        interior = (slice(1, -1),) * 3  # the replicate boundary is not a polynomial
        assert np.abs(out[0, ch].numpy()[interior] - ref[interior]).max() < 1e-9


def test_accuracy_feasibility() -> None:
    check_accuracy((1, 0, 0), 3, 2)
    check_accuracy((2, 0, 0), 3, 2)  # k^3 = k on {-1,0,1}: the 3-point Laplacian is O(h^2)
    with pytest.raises(ValueError, match="accuracy 3"):
        check_accuracy((1, 0, 0), 3, 3)
    with pytest.raises(ValueError, match="kernel_size=3, accuracy=3"):
        PDEConfig(operator="moment", kernel_size=3, accuracy=3)
    PDEConfig(operator="moment", kernel_size=5, accuracy=4)
    PDEConfig(operator="diffusion", kernel_size=3, accuracy=3)  # unused by diffusion


def test_derivative_indices() -> None:
    assert len(derivative_indices(3)) == 9 and len(derivative_indices(2)) == 5
    assert {sum(a) for a in derivative_indices(3)} == {1, 2}
    assert len(set(derivative_indices(3))) == 9
