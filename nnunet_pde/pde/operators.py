"""The spatial operators ``D_phi`` and the reaction term ``N_psi`` of a PDE block.

Spacing is the *normalised* voxel spacing ``h`` (smallest entry 1) in axis order
``(D, H, W)``; every difference quotient divides by it, so operators are in units of
(finest-axis voxel)^-2 (second order) or ^-1 (first order).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .moments import apply_matrix_rows, constraint, derivative_indices, matrix_rows
from .stencils import (
    face_difference,
    lower_faces,
    pad_faces,
    pad_replicate,
    pad_zero,
    shifted,
    upper_faces,
)

#: Lower bound of the edge threshold kappa: keeps |grad u| / kappa finite in float32.
KAPPA_FLOOR = 1e-3
#: Scale of the reaction term's output layer at initialisation (times PyTorch's default).
RESPONSE_INIT_SCALE = 0.1
#: Initial coefficient of the pure second derivatives d^2/dx_d^2 of the moment operator
#: (``c = coef_max * tanh(theta)``); the other coefficients start at 0. A non-zero start
#: keeps the free moments of those kernels and the moment step alive at initialisation
#: (with every ``c = 0`` neither would receive a gradient); pure second derivatives with a
#: positive coefficient are dissipative, so the start is a little extra diffusion.
MOMENT_INIT_COEF = 0.05


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (for initialising softplus-parametrised values)."""
    return y + math.log(-math.expm1(-y))


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-channel vector ``(C,)`` -> ``(1, C, 1, ..., 1)`` for broadcasting over voxels."""
    return v.reshape(1, -1, *([1] * ndim))


class Conductance(nn.Module):
    """Face conductances of the flux-form diffusion ``D[u] = div(g grad u)``.

    ``g = alpha_c * phi(|u(x+e_d) - u(x)| / (h_d * kappa_c))`` with ``phi(s) = 1/(1+s^2)``
    (``edge_stopping=True``, operator ``"diffusion"``) or ``g = alpha_c`` (operator
    ``"laplacian"``). ``alpha_c = softplus(.)`` and ``kappa_c = softplus(.) + 1e-3`` are
    learned per channel; ``kappa`` exists only with edge stopping, so no parameter is unused.

    The face weights ``w = g / h_d^2`` are symmetric between the two cells of a face and
    non-negative, so ``I - tau A`` is an M-matrix for every ``tau >= 0``.
    """

    def __init__(
        self,
        channels: int,
        spacing: Sequence[float],
        edge_stopping: bool,
        alpha_init: float = 1.0,
        kappa_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.spacing = tuple(float(h) for h in spacing)
        self.edge_stopping = edge_stopping
        self.alpha_raw = nn.Parameter(torch.full((channels,), inverse_softplus(alpha_init)))
        if edge_stopping:
            kappa0 = max(kappa_init - KAPPA_FLOOR, 1e-6)
            self.kappa_raw = nn.Parameter(torch.full((channels,), inverse_softplus(kappa0)))

    def alpha(self) -> torch.Tensor:
        """Diffusivity per channel ``(C,)``, >= 0."""
        return F.softplus(self.alpha_raw)

    def kappa(self) -> torch.Tensor:
        """Edge threshold per channel ``(C,)``, >= 1e-3 (only with edge stopping)."""
        return F.softplus(self.kappa_raw) + KAPPA_FLOOR

    def max_diagonal(self) -> torch.Tensor:
        """Upper bound ``sum_d 2 alpha_c / h_d^2`` of the diagonal of ``-A`` per channel ``(C,)``.

        ``phi <= 1``, so no voxel's total face weight exceeds it; the explicit and
        Crank-Nicolson step bounds are built from it.
        """
        return self.alpha() * sum(2.0 / h**2 for h in self.spacing)

    def interior_weights(self, u: torch.Tensor) -> list[torch.Tensor]:
        """Weights ``g / h_d^2`` of the interior faces per axis, conductances at ``u``.

        Returns
        -------
        list of torch.Tensor
            Entry ``d`` has ``n_d - 1`` faces along spatial axis ``d`` (face ``f`` lies
            between cells ``f`` and ``f + 1``); the other axes are full.
        """
        ndim = u.ndim - 2
        alpha = _channel_view(self.alpha().to(u.dtype), ndim)
        kappa = _channel_view(self.kappa().to(u.dtype), ndim) if self.edge_stopping else None
        weights = []
        for d, h in enumerate(self.spacing):
            if kappa is not None:
                s = torch.diff(u, dim=2 + d) / (h * kappa)
                w = alpha / (h * h) / (1.0 + s * s)
            else:
                shape = list(u.shape)
                shape[2 + d] -= 1
                w = (alpha / (h * h)).expand(shape)
            weights.append(w)
        return weights

    def face_weights(self, u: torch.Tensor) -> list[torch.Tensor]:
        """Face weights ``g / h_d^2`` per axis including the two zero-flux boundary faces.

        Returns
        -------
        list of torch.Tensor
            Entry ``d`` has ``n_d + 1`` faces along spatial axis ``d`` (see
            :func:`~nnunet_pde.pde.stencils.face_difference`); both boundary faces are 0
            (zero flux).
        """
        return [pad_faces(w, d) for d, w in enumerate(self.interior_weights(u))]


def axis_apply(v: torch.Tensor, w: torch.Tensor, axis: int) -> torch.Tensor:
    """``A_d v``: the 1-D flux-form operator along ``axis`` with interior face weights ``w``.

    ``(A_d v)_i = w_i (v_{i+1} - v_i) - w_{i-1} (v_i - v_{i-1})`` with zero flux through the
    boundary faces; sums to 0 over every grid line (conservative).
    """
    flux = w * torch.diff(v, dim=2 + axis)
    return pad_faces(flux, axis).diff(dim=2 + axis)


def apply_weights(v: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``A v = sum_d F_d(x + e_d/2) - F_d(x - e_d/2)``, fluxes ``F_d = w_d * (face diff of v)``.

    Written in flux form, so the sum over the grid is exactly 0 up to rounding (conservative).
    The boundary faces carry zero weight, so the (cheaper) zero padding is as good as
    replicate padding here.
    """
    v_pad = pad_zero(v)
    out = None
    for d, w in enumerate(weights):
        flux = w * face_difference(v_pad, d)
        term = upper_faces(flux, d) - lower_faces(flux, d)
        out = term if out is None else out + term
    assert out is not None
    return out


def diagonal(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Total face weight ``S(x) = sum_d (w_d(x + e_d/2) + w_d(x - e_d/2))`` of each voxel."""
    out = None
    for d, w in enumerate(weights):
        term = upper_faces(w, d) + lower_faces(w, d)
        out = term if out is None else out + term
    assert out is not None
    return out


def neighbour_sum(v: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Off-diagonal part of ``A v``: ``sum_d w_d(x+e_d/2) v(x+e_d) + w_d(x-e_d/2) v(x-e_d)``.

    Padding values only ever meet the zero boundary weights, hence zero padding.
    """
    v_pad = pad_zero(v)
    ndim = v.ndim - 2
    out = None
    for d, w in enumerate(weights):
        e = [0] * ndim
        e[d] = 1
        minus = [-o for o in e]
        term = upper_faces(w, d) * shifted(v_pad, e, 1) + lower_faces(w, d) * shifted(
            v_pad, minus, 1
        )
        out = term if out is None else out + term
    assert out is not None
    return out


class MomentOperator(nn.Module):
    """PDE-Net operator ``M[u] = sum_j c_j (q_j * u)`` over all first and second derivatives.

    Each ``q_j`` is an ``l^ndim`` kernel whose moments of total order ``< |alpha_j| + acc``
    are fixed by the constraint; only the remaining moments are parameters
    (``free_moments``, one flat vector, zero-initialised = central differences). The full
    moment arrays are assembled every forward, so the constraint holds exactly after any
    optimiser step. Kernels are shared by all channels; coefficients
    ``c_{j,c} = coef_max * tanh(theta_{j,c})`` are per channel; they start at 0 except the
    pure second derivatives, which start at :data:`MOMENT_INIT_COEF`.
    """

    def __init__(
        self,
        channels: int,
        spacing: Sequence[float],
        kernel_size: int,
        accuracy: int,
        coef_max: float = 1.0,
    ) -> None:
        super().__init__()
        self.spacing = tuple(float(h) for h in spacing)
        self.ndim = len(self.spacing)
        self.kernel_size = kernel_size
        self.accuracy = accuracy
        self.coef_max = float(coef_max)
        self.alphas: list[tuple[int, ...]] = derivative_indices(self.ndim)
        fixed, free_idx = [], []
        size = kernel_size**self.ndim
        for j, alpha in enumerate(self.alphas):
            f, mask = constraint(alpha, kernel_size, accuracy)
            fixed.append(f.reshape(-1))
            free_idx.append(np.flatnonzero(mask.reshape(-1)) + j * size)
        # Buffers are not persistent: they are functions of the config, not learned state,
        # and keeping them out of state_dict keeps checkpoints loadable across versions.
        self.register_buffer(
            "fixed_moments", torch.as_tensor(np.stack(fixed), dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "free_index",
            torch.as_tensor(np.concatenate(free_idx), dtype=torch.long),
            persistent=False,
        )
        scale = [
            1.0 / math.prod(h**a for h, a in zip(self.spacing, al, strict=True))
            for al in self.alphas
        ]
        # Python floats, not a float32 buffer: exact in float64 runs (a buffer created in
        # float32 would keep its rounding after .double()).
        self.scale: tuple[float, ...] = tuple(scale)
        # Plain constants, resolved here so that forward never calls into numpy (dynamo).
        self.m2k_rows = matrix_rows(kernel_size, inverse=True)
        self.free_moments = nn.Parameter(torch.zeros(int(self.free_index.numel())))
        theta0 = torch.zeros(len(self.alphas), channels)
        c0 = math.atanh(min(MOMENT_INIT_COEF / self.coef_max, 0.5))
        for j, alpha in enumerate(self.alphas):
            if sum(alpha) == 2 and max(alpha) == 2:
                theta0[j] = c0
        self.theta = nn.Parameter(theta0)
        r = (kernel_size - 1) // 2
        self.offsets: list[tuple[int, ...]] = list(
            itertools.product(range(-r, r + 1), repeat=self.ndim)
        )

    def moments(self) -> torch.Tensor:
        """Full moment arrays ``(J, l, ..., l)``: fixed values plus the free parameters."""
        flat = self.fixed_moments.reshape(-1).to(self.free_moments.dtype)
        flat = flat.index_add(0, self.free_index, self.free_moments)
        return flat.reshape(len(self.alphas), *([self.kernel_size] * self.ndim))

    def kernels(self) -> torch.Tensor:
        """Kernels ``(J, l, ..., l)`` in correlation convention, scaled by ``1/prod h^alpha``."""
        q = apply_matrix_rows(self.moments(), self.m2k_rows, self.ndim)
        scale = torch.tensor(self.scale, dtype=q.dtype, device=q.device)
        return q * scale.reshape(-1, *([1] * self.ndim))

    def coefficients(self) -> torch.Tensor:
        """Coefficients ``c`` of shape ``(J, C)``, bounded by ``coef_max``."""
        return self.coef_max * torch.tanh(self.theta)

    def channel_kernels(self) -> torch.Tensor:
        """Per-channel combined kernel ``sum_j c_{j,c} q_j`` flattened to ``(C, l^ndim)``."""
        q = self.kernels().reshape(len(self.alphas), -1)
        return torch.einsum("jc,jk->ck", self.coefficients(), q)

    @staticmethod
    def gershgorin(kernel: torch.Tensor) -> torch.Tensor:
        """Gershgorin bound ``sum_k |K_c[k]|`` on ``|lambda|`` of ``M`` per channel ``(C,)``."""
        return kernel.abs().sum(dim=1)

    def apply(self, u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """``M[u](x) = sum_k K_c[k] u(x + k)``, replicate boundary; ``kernel`` from
        :meth:`channel_kernels`."""
        r = (self.kernel_size - 1) // 2
        u_pad = pad_replicate(u, r)
        kernel = kernel.to(u.dtype)
        out = None
        for k, offset in enumerate(self.offsets):
            term = _channel_view(kernel[:, k], self.ndim) * shifted(u_pad, offset, r)
            out = term if out is None else out + term
        assert out is not None
        return out


class Response(nn.Module):
    """Pointwise reaction ``N(u) = W2 tanh(W1 u + b1) + b2`` (1x1x1 convolutions).

    ``tanh`` keeps ``|N(u)|`` bounded by ``||W2|| + |b2|`` whatever the magnitude of ``u``,
    so the reaction cannot overflow under mixed precision. The output layer starts small
    (PyTorch's default initialisation times :data:`RESPONSE_INIT_SCALE`, bias 0), not at 0:
    a zero output layer would leave the input layer without any gradient at initialisation
    (``dN/dW1`` is proportional to ``W2``). The block is still the identity at
    initialisation through its gate ``gamma = 0``.
    """

    def __init__(self, channels: int, hidden: int, ndim: int) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        self.ndim = ndim
        self.inp = conv(channels, hidden, kernel_size=1)
        self.out = conv(hidden, channels, kernel_size=1)
        with torch.no_grad():
            self.out.weight.mul_(RESPONSE_INIT_SCALE)
        nn.init.zeros_(self.out.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        conv = F.conv3d if self.ndim == 3 else F.conv2d
        # Weights are cast to the integrator's dtype (float32, or float64 in gradcheck).
        h = torch.tanh(conv(u, self.inp.weight.to(u.dtype), self.inp.bias.to(u.dtype)))
        return conv(h, self.out.weight.to(u.dtype), self.out.bias.to(u.dtype))
