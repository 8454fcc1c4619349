"""PDE-Net moment maths: the exact kernel <-> moment transform and moment constraints.

Conventions
-----------
A kernel ``q`` of odd edge length ``l = 2r + 1`` is applied as a *correlation*,
``(q * u)(x) = sum_k q[k] u(x + k h)`` with offsets ``k_d in {-r, ..., r}``; array index
``i`` along an axis is offset ``i - r``. Its moment array is

    m[a] = sum_k q[k] * prod_d k_d^{a_d} / a_d!      (a_d in 0 .. l-1)

and a Taylor expansion gives ``(q * u)(x) = sum_a h^{|a|} m[a] d^a u(x)``, so a kernel with
``m[alpha] = 1`` and every other moment of total order ``< |alpha| + acc`` equal to 0
approximates ``h^{|alpha|} d^alpha u`` with error ``O(h^{|alpha| + acc})``. Per axis the
transform is the Vandermonde matrix ``V[i][j] = (j - r)^i / i!`` (PDE-Net's K2M); its
inverse is M2K. Both are applied along each of the trailing ``ndim`` axes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

AXIS_NAMES_3D: tuple[str, ...] = ("z", "y", "x")  # numpy/torch axis order (D, H, W)
AXIS_NAMES_2D: tuple[str, ...] = ("y", "x")


@cache
def moment_matrix(length: int) -> np.ndarray:
    """Per-axis K2M matrix ``V[i][j] = (j - (length-1)//2)^i / i!`` (float64, read-only)."""
    if length < 1:
        raise ValueError(f"kernel length must be >= 1, got {length}")
    r = (length - 1) // 2
    v = np.array(
        [[float(j - r) ** i / math.factorial(i) for j in range(length)] for i in range(length)]
    )
    v.setflags(write=False)
    return v


@cache
def inverse_moment_matrix(length: int) -> np.ndarray:
    """Per-axis M2K matrix, the exact inverse of :func:`moment_matrix` (float64)."""
    inv = np.linalg.inv(moment_matrix(length))
    inv.setflags(write=False)
    return inv


@cache
def matrix_rows(length: int, inverse: bool) -> tuple[tuple[float, ...], ...]:
    """K2M (``inverse=False``) or M2K matrix as nested tuples of Python floats."""
    mat = inverse_moment_matrix(length) if inverse else moment_matrix(length)
    return tuple(tuple(float(v) for v in row) for row in mat)


def apply_matrix_rows(
    x: torch.Tensor, rows: tuple[tuple[float, ...], ...], ndim: int
) -> torch.Tensor:
    """Apply the square matrix ``rows`` along each of the trailing ``ndim`` axes of ``x``.

    ``out[..., i, ...] = sum_j rows[i][j] * x[..., j, ...]`` per axis, computed in float64
    (the Vandermonde matrices are ill-conditioned for wide kernels and these tensors are tiny;
    MPS has no float64) and returned in ``x``'s dtype. Pure torch on Python constants, so it
    traces into a compiled graph without touching numpy.
    """
    work = torch.float32 if x.device.type == "mps" else torch.float64
    mat = torch.tensor(rows, dtype=work, device=x.device)
    out = x.to(work)
    for axis in range(x.ndim - ndim, x.ndim):
        out = torch.movedim(torch.movedim(out, axis, -1) @ mat.T, -1, axis)
    return out.to(x.dtype)


def _transform(x: torch.Tensor, ndim: int, inverse: bool) -> torch.Tensor:
    if ndim < 1 or ndim > x.ndim:
        raise ValueError(
            f"ndim={ndim} must be in 1..{x.ndim} for a tensor of shape {tuple(x.shape)}"
        )
    out = x
    for axis in range(x.ndim - ndim, x.ndim):
        length = x.shape[axis]
        if length % 2 == 0:
            raise ValueError(f"kernel/moment axes must have odd length, got shape {tuple(x.shape)}")
        # One axis at a time: axes may have different lengths.
        moved = torch.movedim(out, axis, -1)
        out = torch.movedim(apply_matrix_rows(moved, matrix_rows(length, inverse), 1), -1, axis)
    return out


def kernel_to_moments(q: torch.Tensor, ndim: int | None = None) -> torch.Tensor:
    """Moment array of a kernel (PDE-Net's K2M), exact per-axis Vandermonde transform.

    Parameters
    ----------
    q:
        Kernel(s); the trailing ``ndim`` axes are the kernel axes (odd lengths, may differ
        per axis), leading axes are batch axes.
    ndim:
        Number of kernel axes (1-3 in practice); ``None`` means all axes of ``q``.

    Returns
    -------
    torch.Tensor
        ``m`` of the same shape, ``m[..., a] = sum_k q[..., k] prod_d k_d^{a_d} / a_d!``.
    """
    return _transform(q, q.ndim if ndim is None else ndim, inverse=False)


def moments_to_kernel(m: torch.Tensor, ndim: int | None = None) -> torch.Tensor:
    """Kernel of a moment array (PDE-Net's M2K), the exact inverse of :func:`kernel_to_moments`.

    Parameters
    ----------
    m:
        Moment array(s); the trailing ``ndim`` axes are moment axes, index ``a_d = 0..l-1``.
    ndim:
        Number of moment axes; ``None`` means all axes of ``m``.
    """
    return _transform(m, m.ndim if ndim is None else ndim, inverse=True)


def derivative_indices(ndim: int) -> list[tuple[int, ...]]:
    """Multi-indices of all first and second derivatives in ``ndim`` dimensions.

    Order: first derivatives along axis 0..ndim-1, then pure second derivatives, then the
    mixed ones in lexicographic axis order (3 + 6 = 9 in 3-D, 2 + 3 = 5 in 2-D).
    """
    first = [tuple(int(i == d) for i in range(ndim)) for d in range(ndim)]
    pure = [tuple(2 * int(i == d) for i in range(ndim)) for d in range(ndim)]
    mixed = [
        tuple(int(i in (d0, d1)) for i in range(ndim))
        for d0, d1 in itertools.combinations(range(ndim), 2)
    ]
    return first + pure + mixed


def derivative_name(alpha: Sequence[int]) -> str:
    """Readable name of ``d^alpha``: ``(0, 2, 0) -> 'd2/dy2'``, ``(1, 0, 1) -> 'd2/dzdx'``."""
    names = AXIS_NAMES_3D if len(alpha) == 3 else AXIS_NAMES_2D if len(alpha) == 2 else None
    if names is None:
        names = tuple(f"x{d}" for d in range(len(alpha)))
    order = sum(alpha)
    if order == 0:
        return "identity"
    denominator = "".join(
        f"d{names[d]}" + (f"{a}" if a > 1 else "") for d, a in enumerate(alpha) if a > 0
    )
    return f"d{order if order > 1 else ''}/{denominator}"


def constraint(
    alpha: Sequence[int], kernel_size: int, accuracy: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed moment values and free-moment mask of a constrained derivative kernel.

    Moments of total order ``< |alpha| + accuracy`` are fixed (``m[alpha] = 1``, the rest
    0); the others are free (learnable).

    Returns
    -------
    fixed, free:
        ``fixed`` (float64) holds the fixed values and 0 at free positions; ``free`` is a
        boolean mask; both of shape ``(kernel_size,) * len(alpha)``.
    """
    ndim = len(alpha)
    if any(a > kernel_size - 1 for a in alpha):
        raise ValueError(f"derivative {tuple(alpha)} needs a kernel wider than {kernel_size}")
    shape = (kernel_size,) * ndim
    orders = np.indices(shape).sum(axis=0)
    free = orders >= sum(alpha) + accuracy
    fixed = np.zeros(shape)
    fixed[tuple(alpha)] = 1.0
    return fixed, free


def true_moments(q: np.ndarray, max_order: int) -> dict[tuple[int, ...], float]:
    """Moments ``sum_k q[k] prod k_d^{a_d}/a_d!`` of a kernel for every ``|a| <= max_order``.

    Unlike the moment array these include per-axis orders ``a_d >= l``, which on ``l``
    points alias to lower orders; they decide which derivative a kernel really approximates.
    """
    q = np.asarray(q, dtype=np.float64)
    offsets = [np.arange(n) - (n - 1) // 2 for n in q.shape]
    out: dict[tuple[int, ...], float] = {}
    for a in itertools.product(range(max_order + 1), repeat=q.ndim):
        if sum(a) > max_order:
            continue
        weight = np.ones(q.shape)
        for d, ad in enumerate(a):
            axis_w = offsets[d].astype(np.float64) ** ad / math.factorial(ad)
            weight = weight * axis_w.reshape([-1 if i == d else 1 for i in range(q.ndim)])
        out[a] = float((q * weight).sum())
    return out


@cache
def check_accuracy(alpha: tuple[int, ...], kernel_size: int, accuracy: int) -> None:
    """Raise ``ValueError`` if a ``kernel_size`` kernel cannot reach ``accuracy`` for ``d^alpha``.

    The guarantee needs every *true* moment of total order ``< |alpha| + accuracy`` to be
    ``delta(a, alpha)``. Those with some ``a_d >= kernel_size`` are not entries of the moment
    array; on ``kernel_size`` symmetric points they alias to moments of strictly lower total
    order, which the constraint fixes, so they are the same for every value of the free
    moments and checking the kernel with free moments 0 decides it (e.g. a 3-point ``d/dx``
    reaches accuracy 2 but not 3, because ``k^3 = k`` on ``{-1, 0, 1}``).
    """
    fixed, _ = constraint(alpha, kernel_size, accuracy)
    kernel = fixed
    for axis in range(len(alpha)):
        inv = inverse_moment_matrix(kernel_size)
        kernel = np.moveaxis(np.moveaxis(kernel, axis, -1) @ inv.T, -1, axis)
    order = sum(alpha) + accuracy - 1
    for a, value in true_moments(kernel, order).items():
        target = 1.0 if a == tuple(alpha) else 0.0
        if abs(value - target) > 1e-9:
            raise ValueError(
                f"PDEConfig(kernel_size={kernel_size}, accuracy={accuracy}): a "
                f"{kernel_size}-point kernel cannot approximate {derivative_name(alpha)} "
                f"with accuracy {accuracy} (its moment {a} is {value:.4g}, not {target}); "
                "lower accuracy or use a larger kernel_size"
            )


def derivative_kernel(
    alpha: Sequence[int],
    kernel_size: int = 3,
    accuracy: int = 2,
    free: torch.Tensor | None = None,
    spacing: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Constrained kernel approximating ``d^alpha`` with order ``accuracy``.

    Parameters
    ----------
    alpha:
        Derivative multi-index in axis order (e.g. ``(0, 0, 1)`` = d/dx in (D, H, W)).
    kernel_size:
        Odd edge length of the kernel.
    accuracy:
        Order of accuracy; validated with :func:`check_accuracy`.
    free:
        Values of the free moments in C order of the free mask (``None``: zeros, which
        gives the central finite-difference stencil).
    spacing:
        Voxel spacing per axis; the kernel is scaled by ``1 / prod_d h_d^{alpha_d}`` so it
        approximates the derivative in those units. ``None`` means unit spacing.

    Returns
    -------
    torch.Tensor
        Kernel of shape ``(kernel_size,) * len(alpha)`` in correlation convention.
    """
    alpha = tuple(int(a) for a in alpha)
    check_accuracy(alpha, kernel_size, accuracy)
    fixed, free_mask = constraint(alpha, kernel_size, accuracy)
    m = torch.as_tensor(fixed, dtype=dtype)
    if free is not None:
        if free.numel() != int(free_mask.sum()):
            raise ValueError(f"expected {int(free_mask.sum())} free moments, got {free.numel()}")
        m = m.masked_scatter(torch.as_tensor(free_mask), free.to(dtype).reshape(-1))
    q = moments_to_kernel(m)
    if spacing is not None:
        q = q / math.prod(float(h) ** a for h, a in zip(spacing, alpha, strict=True))
    return q
