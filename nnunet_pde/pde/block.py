"""The PDE block: ``K`` steps of ``du/dt = D_phi[u] + N_psi(u)`` behind a gated residual."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import native
from .config import EXACT_SOLVERS, PDEConfig
from .fused import (
    AOSStep,
    EdgeEnergy,
    FusedBlock,
    GatedResidual,
    Standardise,
    step_coefficients,
)
from .kernels import backend, triton_ops
from .operators import Conductance, MomentOperator, Response, apply_weights, diagonal, pad_faces
from .solvers import aos_step, explicit_step, sweep_step
from .stencils import checkerboard

#: Variance floor of the per-channel feature normalisation (as InstanceNorm's eps).
NORM_EPS = 1e-5


def normalise(u: torch.Tensor, eps: float = NORM_EPS) -> tuple[torch.Tensor, ...]:
    """Per sample and channel ``(u - mean) / std`` over the spatial axes.

    Returns ``(u_hat, mean, std)``, the statistics shaped ``(B, C, 1, ..., 1)``.

    Differentiated by :class:`~nnunet_pde.pde.fused.Standardise`, which saves only
    ``u_hat`` and ``std`` for backward.
    """
    return Standardise.apply(u, eps)


def edge_energy(z: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Mean Perona-Malik energy ``log(1 + |dz/h|^2)`` per face of ``z`` normalised by itself.

    ``z`` is first normalised per sample and channel (zero mean, unit spatial standard
    deviation), then ``(1/m) sum_d mean_faces log(1 + ((z(x+e_d) - z(x)) / h_d)^2)``. It is
    dimensionless and invariant to the scale and offset of ``z``; within-region variation
    costs like its square, a sharp edge only logarithmically, so for a fixed variance the
    cheapest fields are a few regions separated by sharp boundaries.

    Differentiated by :class:`~nnunet_pde.pde.fused.EdgeEnergy`, which saves only ``z``.
    """
    return EdgeEnergy.apply(z, tuple(float(h) for h in spacing), NORM_EPS)


def relative_change(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||y - x|| / ||x||`` over the whole batch (Frobenius norms), detached, as a 0-d
    tensor on ``x``'s device: how much a block changed its input. 0 when ``x`` is 0."""
    with torch.no_grad():
        x = x.detach()
        # square().sum() (cascade summation on the CPU) rather than vector_norm, whose
        # float32 CPU reduction is off by ~1e-5 relative on a feature map of 1e5 voxels;
        # both divided by max |x| first, so features above ~1e19 do not overflow
        s = x.abs().amax().clamp_min(torch.finfo(x.dtype).tiny)
        num = ((y.detach() - x) / s).square().sum()
        den = (x / s).square().sum()
        return torch.sqrt(num / torch.clamp(den, min=torch.finfo(den.dtype).tiny))


class PDEBlock(nn.Module):
    """Learnable PDE evolution of a feature map, identity at initialisation.

    ``forward(x) = x + gamma * (u(K) - x)`` where ``u(0) = x`` is evolved ``K`` steps by the
    configured solver; ``gamma`` (per channel) starts at 0, so a fresh block returns ``x``
    exactly.

    Parameters
    ----------
    channels:
        Number of feature channels ``C``.
    spacing:
        Physical voxel spacing of the feature map in mm, axis order ``(D, H, W)`` (or
        ``(H, W)`` for 2-D inputs). It is normalised so its smallest entry is 1 (``tau`` is
        in units of the finest axis) and used in every difference quotient.
    config:
        Operator, solver and step settings, see :class:`PDEConfig`.

    Notes
    -----
    Parameters (all per block; none exists that the configuration leaves unused):
    ``tau_logit`` (scalar, ``tau = tau_max * sigmoid``), ``gamma`` ``(C,)``,
    ``conductance.alpha_raw`` ``(C,)``, ``conductance.kappa_raw`` ``(C,)`` (diffusion and
    moment operators), ``moment.free_moments`` and ``moment.theta`` ``(J, C)`` (moment
    operator), ``response.*`` (if ``response``).

    The block evolves the features normalised per sample and channel (zero mean, unit
    spatial standard deviation) and maps the result back, so it is equivariant to the
    scale and offset of its input and ``kappa`` is in units of the channel's own spread.

    In training mode, and only while :attr:`record_consistency` is True (the loss wrapper
    sets it when ``lambda_pde > 0``), ``forward``/``evolve`` record
    ``last_residuals = {"energy": ...}``: :func:`edge_energy` of the final state.

    In training mode, and only while :attr:`record_diagnostics` is True (the trainers'
    :class:`~nnunet_pde.training.diagnostics.PDEDiagnosticsMixin` sets it), ``forward``
    records ``last_contribution``: the detached scalar ``||y - x|| / ||x||`` of the batch
    (``y`` the output, ``x`` the input, both in the compute dtype), on the input's device.
    It is computed without gradient and changes neither the output nor any gradient.
    """

    def __init__(self, channels: int, spacing: Sequence[float], config: PDEConfig) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"PDEBlock: channels must be >= 1, got {channels}")
        spacing = tuple(float(h) for h in spacing)
        if len(spacing) not in (2, 3):
            raise ValueError(f"PDEBlock: spacing must have 2 or 3 entries, got {spacing}")
        if not all(math.isfinite(h) and h > 0 for h in spacing):
            raise ValueError(f"PDEBlock: spacing entries must be finite and > 0, got {spacing}")
        self.channels = channels
        self.config = config
        self.physical_spacing = spacing
        self.spacing = tuple(h / min(spacing) for h in spacing)
        self.ndim = len(spacing)

        self.tau_logit = nn.Parameter(
            torch.tensor(math.log(config.tau_init / (config.tau_max - config.tau_init)))
        )
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.conductance = Conductance(
            channels,
            self.spacing,
            edge_stopping=config.operator != "laplacian",
            alpha_init=config.alpha_init,
            kappa_init=config.kappa_init,
        )
        self.moment = (
            MomentOperator(
                channels, self.spacing, config.kernel_size, config.accuracy, config.coef_max
            )
            if config.operator == "moment"
            else None
        )
        self.response = (
            Response(channels, config.response_hidden or channels, self.ndim)
            if config.response
            else None
        )
        #: Whether the steps run fused (see ``PDEConfig.fused``): exact solvers only.
        self.fused = config.fused and config.solver in EXACT_SOLVERS
        if self.fused:
            native.library()  # build/load the CPU kernels now, outside any traced code
        #: Whether training forwards record the consistency energy for the loss; the
        #: loss wrapper switches it on only when its weight ``lambda_pde`` is positive.
        self.record_consistency = False
        self.last_residuals: dict[str, torch.Tensor] | None = None
        #: Whether training forwards record ``last_contribution`` (``||y - x|| / ||x||``,
        #: detached); the trainers' diagnostics mixin switches it on.
        self.record_diagnostics = False
        self.last_contribution: torch.Tensor | None = None

    # ------------------------------------------------------------------ parameters
    def gate(self) -> torch.Tensor:
        """The per-channel gate ``gate_scale * gamma`` ``(C,)`` (``PDEConfig.gate_scale``)."""
        scale = self.config.gate_scale
        return self.gamma if scale == 1.0 else self.gamma * scale

    def tau(self) -> torch.Tensor:
        """Learned time step ``tau_max * sigmoid(tau_logit)`` (scalar), before any bound."""
        return self.config.tau_max * torch.sigmoid(self.tau_logit)

    def stability_rate(self) -> torch.Tensor | None:
        """Per-channel rate ``R_c`` with ``tau R_c <= 1`` the solver's stability bound.

        * ``explicit``: ``R = alpha_c sum_d 2 / h_d^2`` bounds the diagonal ``S`` of ``-A``
          (``phi <= 1``); ``tau S <= 1`` makes forward Euler a convex combination.
        * ``crank_nicolson``: ``R = m alpha_c max_d 1 / h_d^2``; ``m tau S_d / 2 <= 1`` makes
          the explicit half ``I + (m tau / 2) A_d`` non-negative, so every AOS term is a
          convex combination (no oscillation, maximum principle). In L2 CN is stable for
          any ``tau`` anyway.
        * ``semi_implicit``, ``jacobi``, ``gauss_seidel``: ``None`` (no bound needed).
        """
        solver = self.config.solver
        alpha = self.conductance.alpha()
        if solver == "explicit":
            return alpha * sum(2.0 / h**2 for h in self.spacing)
        if solver == "crank_nicolson":
            return alpha * (self.ndim * max(1.0 / h**2 for h in self.spacing))
        return None

    def time_step(self) -> torch.Tensor:
        """Time step of the diffusion and reaction per channel ``(C,)``.

        ``tau / (1 + tau R_c)`` where the solver has a stability rate ``R_c``
        (:meth:`stability_rate`): a smooth, strictly increasing function of ``tau`` and of
        the diffusivity that is always below ``min(tau, 1 / R_c)``, so the bound holds by
        construction and no clamp ever cuts a gradient. ``tau`` itself otherwise.
        """
        tau = self.tau()
        rate = self.stability_rate()
        if rate is None:
            return tau.expand(self.channels)
        return tau / (1.0 + tau * rate)

    def moment_time_step(self, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """Time step of the moment sub-step per channel: ``tau / (1 + tau G_c)``.

        ``G_c = sum_k |K_c[k]|`` (Gershgorin) bounds ``||M||`` in the max and L2 norms, so
        the sub-step amplifies by at most ``1 + tau_M G_c < 2`` per step, whatever ``tau``
        is, and it no longer shares (or throttles) the diffusion's step.
        """
        assert self.moment is not None, "no moment operator in this block"
        if kernel is None:
            kernel = self.moment.channel_kernels()
        tau = self.tau()
        return tau / (1.0 + tau * MomentOperator.gershgorin(kernel))

    # ------------------------------------------------------------------ dynamics
    def flux_divergence(self, u: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """``D[u]``: the spatial operator (diffusion, plus moment terms) at state ``u``."""
        out = apply_weights(u, self.conductance.face_weights(u))
        if self.moment is not None:
            if kernel is None:
                kernel = self.moment.channel_kernels()
            out = out + self.moment.apply(u, kernel)
        return out

    def _step(
        self,
        u: torch.Tensor,
        tau: torch.Tensor,
        tau_m: torch.Tensor | None,
        kernel: torch.Tensor | None,
        red: torch.Tensor | None,
    ) -> torch.Tensor:
        """One time step from ``u`` (normalised features): diffusion + reaction, then the
        moment sub-step (Lie splitting)."""
        if self.fused:
            v = self._fused_step(u, tau)
        else:
            v = self._reference_step(u, tau, red)
        if self.moment is not None:
            assert kernel is not None and tau_m is not None
            v = v + tau_m * self.moment.apply(v, kernel)
        return v

    def _fused_step(self, u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return AOSStep.apply(u, *self._fused_parameters(u, tau.reshape(-1)))

    def _fused_parameters(self, u: torch.Tensor, tau: torch.Tensor) -> tuple:
        """``(tau, cA, ce, k, w1, b1, w2, b2)`` of :class:`~nnunet_pde.pde.fused.AOSStep`
        (and :class:`~nnunet_pde.pde.fused.FusedBlock`) in ``u``'s dtype, from the per-channel
        time step ``tau`` ``(C,)``: one AOS theta-step with reaction, equal to the reference
        ``aos_step(u, u + tau N(u), interior_weights(u), tau, theta)``."""
        cond = self.conductance
        theta = 1.0 if self.config.solver == "semi_implicit" else 0.5
        kappa = cond.kappa().to(u.dtype) if cond.edge_stopping else None
        cA, ce, k = step_coefficients(u, tau, cond.alpha().to(u.dtype), kappa, self.spacing, theta)
        return tau, cA, ce, k, *self._reaction_weights(u.dtype)

    def _reaction_weights(self, dtype: torch.dtype) -> tuple:
        """``(w1, b1, w2, b2)`` of the reaction's 1x1 convolutions in ``dtype`` (``None``
        without a reaction)."""
        if self.response is None:
            return None, None, None, None
        r = self.response
        return tuple(t.to(dtype) for t in (r.inp.weight, r.inp.bias, r.out.weight, r.out.bias))

    def _triton_parameters(self, u: torch.Tensor) -> tuple:
        """:meth:`_fused_parameters` with the parameter transforms (``time_step``,
        ``step_coefficients``) in one Triton kernel forward and one backward
        (:func:`~nnunet_pde.pde.kernels.triton_ops.coefficients`); the same values."""
        cond = self.conductance
        theta = 1.0 if self.config.solver == "semi_implicit" else 0.5
        # the rate R of ``stability_rate`` per unit alpha (0: no bound for semi-implicit)
        rate = self.ndim * max(1.0 / h**2 for h in self.spacing) if theta < 1.0 else 0.0
        coefs = triton_ops.coefficients(
            self.tau_logit,
            cond.alpha_raw,
            cond.kappa_raw if cond.edge_stopping else None,
            self.spacing,
            self.config.tau_max,
            rate,
            theta,
        )
        tau, cA, ce, k = (None if t is None else t.to(u.dtype) for t in coefs)
        return tau, cA, ce, k, *self._reaction_weights(u.dtype)

    def _reference_step(
        self, u: torch.Tensor, tau: torch.Tensor, red: torch.Tensor | None
    ) -> torch.Tensor:
        b = u if self.response is None else u + tau * self.response(u)
        interior = self.conductance.interior_weights(u)  # lagged at u^n
        solver = self.config.solver
        if solver == "semi_implicit":
            v = aos_step(u, b, interior, tau, 1.0)
        elif solver == "crank_nicolson":
            v = aos_step(u, b, interior, tau, 0.5)
        else:
            weights = [pad_faces(w, d) for d, w in enumerate(interior)]
            if solver == "explicit":
                v = explicit_step(u, b, weights, tau)
            else:
                v = sweep_step(
                    u,
                    b,
                    weights,
                    diagonal(weights),
                    tau,
                    self.config.inner_iterations,
                    solver,
                    self.config.jacobi_omega,
                    red,
                )
        return v

    def integrate(self, u: torch.Tensor, record: bool = True) -> torch.Tensor:
        """``K`` steps from features ``u`` that are already normalised (see :func:`normalise`).

        Runs in ``u``'s dtype (no autocast handling: :meth:`evolve` and :meth:`forward` do
        that). In training mode with :attr:`record_consistency` (and ``record``) it records
        ``last_residuals = {"energy": edge_energy(u_K)}``.
        """
        view = (1, -1, *([1] * self.ndim))
        kernel = None
        tau_m = None
        if self.moment is not None:
            kernel = self.moment.channel_kernels().to(u.dtype)
            tau_m = self.moment_time_step(kernel).to(u.dtype).reshape(view)
        tau = self.time_step().to(u.dtype).reshape(view)
        red = checkerboard(u.shape[2:], u.device) if self.config.solver == "gauss_seidel" else None
        use_ckpt = self.config.checkpointing and not self.fused and torch.is_grad_enabled()
        for _ in range(self.config.steps):
            if use_ckpt:
                u = checkpoint(self._step, u, tau, tau_m, kernel, red, use_reentrant=False)
            else:
                u = self._step(u, tau, tau_m, kernel, red)
        if record and self._records():
            self.last_residuals = {"energy": edge_energy(u, self.spacing)}
        return u

    def _records(self) -> bool:
        return self.training and self.record_consistency

    @staticmethod
    def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
        # float64 is kept (gradcheck); everything else, fp16/bf16 included, runs in float32.
        return torch.float64 if dtype == torch.float64 else torch.float32

    def evolve(self, u: torch.Tensor) -> torch.Tensor:
        """Integrate ``K`` steps from ``u`` (no gate); float32 inside, input dtype out.

        The features are normalised per sample and channel (zero mean, unit spatial
        standard deviation), evolved, and mapped back, so ``evolve(a u + b) = a evolve(u) +
        b`` for per-channel ``a > 0``, ``b`` (up to the variance floor ``NORM_EPS``).

        Parameters
        ----------
        u:
            ``(B, C, D, H, W)`` (or ``(B, C, H, W)`` for a 2-D block).
        """
        self._check_input(u)
        if u.numel() == 0:
            return u.clone()  # an empty batch (or grid): nothing to evolve
        with torch.autocast(device_type=u.device.type, enabled=False):
            uc = u.to(self._compute_dtype(u.dtype))
            u_hat, mean, std = normalise(uc)
            out = mean + std * self.integrate(u_hat)
        return out.to(u.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated residual ``x + gamma * (evolve(x) - x)``; exactly ``x`` while ``gamma = 0``."""
        self._check_input(x)
        if x.numel() == 0:
            return x.clone()  # an empty batch (or grid): the gate's identity
        with torch.autocast(device_type=x.device.type, enabled=False):
            xc = x.to(self._compute_dtype(x.dtype))
            if self.fused and self.moment is None:
                y = self._fused_forward(xc)
            else:
                x_hat, mean, std = normalise(xc)
                u_hat = self.integrate(x_hat, record=False)
                # The gate and the regulariser of u_hat in one function: u_hat's two
                # gradients come from one kernel, and it keeps only u_hat and x_hat.
                record = self._records()
                y, energy = GatedResidual.apply(
                    xc,
                    u_hat,
                    x_hat,
                    self.gate().to(xc.dtype),
                    mean,
                    std,
                    self.spacing,
                    NORM_EPS,
                    record,
                )
                if record:
                    self.last_residuals = {"energy": energy}
            if self.training and self.record_diagnostics:
                self.last_contribution = relative_change(xc, y)
        return y.to(x.dtype)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` as one :class:`~nnunet_pde.pde.fused.FusedBlock` (every step fused,
        no moment sub-step), ``x`` already in the compute dtype."""
        record = self._records()
        if backend.name(x) == "triton":
            params = self._triton_parameters(x)
        else:
            params = self._fused_parameters(x, self.time_step().to(x.dtype))
        y, energy = FusedBlock.apply(
            x,
            self.gate().to(x.dtype),
            *params,
            self.config.steps,
            self.spacing,
            NORM_EPS,
            record,
            torch.is_grad_enabled(),
        )
        if record:
            self.last_residuals = {"energy": energy}
        return y

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.ndim + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"PDEBlock(channels={self.channels}, {self.ndim}-D) expects input of shape "
                f"(B, {self.channels}, {', '.join('S' * self.ndim)}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"PDEBlock expects a real floating-point feature map (float16, bfloat16, "
                f"float32 or float64), got {x.dtype}; convert it first, e.g. x.float()"
            )

    # ------------------------------------------------------------------ loss interface
    def clear_residuals(self) -> None:
        """Forget the recorded residuals (the loss calls this after reading them)."""
        self.last_residuals = None

    def train(self, mode: bool = True) -> PDEBlock:
        # Switching to eval drops stale training records: eval never exposes any.
        if not mode:
            self.last_residuals = None
            self.last_contribution = None
        return super().train(mode)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"channels={self.channels}, spacing={self.spacing}, operator={c.operator!r}, "
            f"solver={c.solver!r}, steps={c.steps}, inner_iterations={c.inner_iterations}"
        )
