"""Stencils as shifted slices of one padded tensor.

Every fixed stencil of the PDE block (face differences, neighbour sums, moment kernels) is
written as slices of a single replicate-padded tensor instead of a depthwise convolution:
Inductor fuses the slices into one memory-bound kernel, and the backward of a slice is a
cheap pad, whereas depthwise ``conv3d`` is slow in backward in PyTorch.

Tensors are ``(B, C, *S)`` with ``len(S)`` spatial axes (2 or 3) in numpy/torch order
``(D, H, W)``; "axis d" below always means spatial axis ``d``, i.e. tensor dim ``2 + d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad_replicate(u: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Replicate-pad every spatial axis by ``width`` voxels (zero-flux / Neumann boundary)."""
    return F.pad(u, (width, width) * (u.ndim - 2), mode="replicate")


def pad_zero(u: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Zero-pad every spatial axis by ``width`` voxels (for stencils whose boundary weights
    are already zero, where the padded values never matter)."""
    return F.pad(u, (width, width) * (u.ndim - 2))


def shifted(u_pad: torch.Tensor, offset: Sequence[int], width: int) -> torch.Tensor:
    """``u(x + offset)`` for every voxel ``x`` of the unpadded grid.

    Parameters
    ----------
    u_pad:
        Tensor padded by ``width`` on every spatial axis.
    offset:
        Offset in voxels per spatial axis, each in ``[-width, width]``.
    width:
        Padding width of ``u_pad``.
    """
    index: list[slice] = [slice(None), slice(None)]
    for d, o in enumerate(offset):
        n = u_pad.shape[2 + d] - 2 * width
        index.append(slice(width + o, width + o + n))
    return u_pad[tuple(index)]


def face_difference(u_pad: torch.Tensor, axis: int) -> torch.Tensor:
    """Differences across the ``n + 1`` faces along ``axis`` of a 1-voxel-padded tensor.

    Entry ``f`` (0..n) is ``u[f] - u[f-1]`` along ``axis`` (the face between cells ``f-1``
    and ``f``), with the other spatial axes restricted to the interior. With replicate
    padding the two boundary faces (``f = 0`` and ``f = n``) are exactly 0; callers that
    give those faces zero weight may pad with anything.
    """
    ndim = u_pad.ndim - 2
    hi: list[slice] = [slice(None), slice(None)]
    lo: list[slice] = [slice(None), slice(None)]
    for d in range(ndim):
        if d == axis:
            hi.append(slice(1, None))
            lo.append(slice(0, -1))
        else:
            hi.append(slice(1, -1))
            lo.append(slice(1, -1))
    return u_pad[tuple(hi)] - u_pad[tuple(lo)]


def pad_faces(w_interior: torch.Tensor, axis: int) -> torch.Tensor:
    """Extend interior face values (``n - 1`` along ``axis``) by a 0 on both boundary faces.

    Zero boundary conductances make the zero-flux condition part of the matrix itself, so
    Jacobi / Gauss-Seidel sweeps iterate on exactly the matrix a direct solver would use.
    """
    ndim = w_interior.ndim - 2
    pad = [0, 0] * ndim
    # F.pad lists the last axis first.
    pad[2 * (ndim - 1 - axis)] = 1
    pad[2 * (ndim - 1 - axis) + 1] = 1
    return F.pad(w_interior, pad)


def lower_faces(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Face values ``w[f]`` for ``f = 0..n-1``: the face on the low side of each cell."""
    return w.narrow(2 + axis, 0, w.shape[2 + axis] - 1)


def upper_faces(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Face values ``w[f]`` for ``f = 1..n``: the face on the high side of each cell."""
    return w.narrow(2 + axis, 1, w.shape[2 + axis] - 1)


def checkerboard(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Boolean red/black mask of the spatial ``shape``: True where sum of indices is even.

    Shaped ``(1, 1, *shape)``; 7-point (5-point in 2-D) neighbours always have the other
    colour, so all red (then all black) cells can be updated at once.
    """
    parity = torch.zeros((), dtype=torch.long, device=device)
    for d, n in enumerate(shape):
        idx = torch.arange(n, device=device).reshape(
            [-1 if i == d else 1 for i in range(len(shape))]
        )
        parity = parity + idx
    return (parity % 2 == 0).reshape(1, 1, *shape)
