"""The PDE block: ``K`` steps of ``du/dt = D_phi[u] + N_psi(u)`` behind a gated residual."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import PDEConfig
from .operators import Conductance, MomentOperator, Response, apply_weights, diagonal
from .solvers import residual, solve
from .stencils import checkerboard


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

    In training mode ``forward``/``evolve`` record :attr:`last_residuals` for the loss.
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
        self.last_residuals: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ parameters
    def tau(self) -> torch.Tensor:
        """Learned time step ``tau_max * sigmoid(tau_logit)`` (scalar), before any clamp."""
        return self.config.tau_max * torch.sigmoid(self.tau_logit)

    def time_step(self, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """Time step per channel ``(C,)`` actually used, after the stability clamp.

        ``tau_eff = tau / max(1, tau * R_c)``, i.e. ``min(tau, 1 / R_c)`` written without
        dividing by a possibly zero ``R_c``. The rate bound ``R_c`` is

        * explicit: ``S_max + G`` (``S_max = sum_d 2 alpha_c / h_d^2`` bounds the diagonal
          of ``-A``, ``G`` is the Gershgorin bound of the moment operator, 0 without it):
          ``tau S <= 1`` makes the diffusion update a convex combination;
        * Crank-Nicolson: ``S_max / 2 + G``: ``tau S <= 2`` keeps every Jacobi sweep of the
          CN system a convex combination;
        * semi-implicit / Gauss-Seidel: ``G`` (diffusion is unconditionally stable).
        """
        tau = self.tau()
        rate = None
        solver = self.config.solver
        if solver == "explicit":
            rate = self.conductance.max_diagonal()
        elif solver == "crank_nicolson":
            rate = 0.5 * self.conductance.max_diagonal()
        if self.moment is not None:
            if kernel is None:
                kernel = self.moment.channel_kernels()
            g = MomentOperator.gershgorin(kernel)
            rate = g if rate is None else rate + g
        if rate is None:
            return tau.expand(self.channels)
        return tau / torch.clamp(tau * rate, min=1.0)

    # ------------------------------------------------------------------ dynamics
    def flux_divergence(self, u: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """``D[u]``: the spatial operator (diffusion, plus moment terms) at state ``u``."""
        out = apply_weights(u, self.conductance.face_weights(u))
        if self.moment is not None:
            if kernel is None:
                kernel = self.moment.channel_kernels()
            out = out + self.moment.apply(u, kernel)
        return out

    def _explicit_terms(self, u: torch.Tensor, kernel: torch.Tensor | None) -> torch.Tensor | None:
        """Terms every solver treats explicitly (IMEX): reaction and moment operator."""
        out = None
        if self.response is not None:
            out = self.response(u)
        if self.moment is not None:
            assert kernel is not None
            m = self.moment.apply(u, kernel)
            out = m if out is None else out + m
        return out

    def _step(
        self,
        u: torch.Tensor,
        tau: torch.Tensor,
        kernel: torch.Tensor | None,
        red: torch.Tensor | None,
        record: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One time step from ``u``; returns ``u_next`` and ``mean(r^2)`` if ``record``."""
        weights = self.conductance.face_weights(u)  # lagged at u^n
        explicit = self._explicit_terms(u, kernel)
        b = u if explicit is None else u + tau * explicit
        solver = self.config.solver
        theta = tau
        if solver == "explicit":
            v = b + tau * apply_weights(u, weights)
            diag = diagonal(weights) if record else None
        else:
            if solver == "crank_nicolson":
                theta = 0.5 * tau
                b = b + theta * apply_weights(u, weights)
            diag = diagonal(weights)
            method = "red_black" if solver == "gauss_seidel" else "jacobi"
            v = solve(u, b, weights, diag, theta, self.config.inner_iterations, method, red)
        if not record:
            return v, None
        assert diag is not None
        # For explicit steps this is the backward-Euler residual of the explicit result.
        r = residual(v, b, weights, diag, theta)
        return v, (r * r).mean()

    def _integrate(self, u: torch.Tensor) -> torch.Tensor:
        record = self.training
        kernel = self.moment.channel_kernels().to(u.dtype) if self.moment is not None else None
        tau = self.time_step(kernel).to(u.dtype).reshape(1, -1, *([1] * self.ndim))
        red = checkerboard(u.shape[2:], u.device) if self.config.solver == "gauss_seidel" else None
        use_ckpt = self.config.checkpointing and torch.is_grad_enabled()
        res_sum = None
        for _ in range(self.config.steps):
            if use_ckpt:
                u, r2 = checkpoint(self._step, u, tau, kernel, red, record, use_reentrant=False)
            else:
                u, r2 = self._step(u, tau, kernel, red, record)
            if r2 is not None:
                res_sum = r2 if res_sum is None else res_sum + r2
        if record:
            assert res_sum is not None
            d = self.flux_divergence(u, kernel)
            self.last_residuals = {
                "implicit_residual": res_sum / self.config.steps,
                "flux_divergence": (d * d).mean(),
            }
        return u

    @staticmethod
    def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
        # float64 is kept (gradcheck); everything else, fp16/bf16 included, runs in float32.
        return torch.float64 if dtype == torch.float64 else torch.float32

    def evolve(self, u: torch.Tensor) -> torch.Tensor:
        """Integrate ``K`` steps from ``u`` (no gate); float32 inside, input dtype out.

        Parameters
        ----------
        u:
            ``(B, C, D, H, W)`` (or ``(B, C, H, W)`` for a 2-D block).
        """
        self._check_input(u)
        with torch.autocast(device_type=u.device.type, enabled=False):
            out = self._integrate(u.to(self._compute_dtype(u.dtype)))
        return out.to(u.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated residual ``x + gamma * (evolve(x) - x)``; exactly ``x`` while ``gamma = 0``."""
        self._check_input(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xc = x.to(self._compute_dtype(x.dtype))
            u = self._integrate(xc)
            gamma = self.gamma.to(xc.dtype).reshape(1, -1, *([1] * self.ndim))
            y = xc + gamma * (u - xc)
        return y.to(x.dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.ndim + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"PDEBlock(channels={self.channels}, {self.ndim}-D) expects input of shape "
                f"(B, {self.channels}, {', '.join('S' * self.ndim)}), got {tuple(x.shape)}"
            )

    # ------------------------------------------------------------------ loss interface
    def clear_residuals(self) -> None:
        """Forget the recorded residuals (the loss calls this after reading them)."""
        self.last_residuals = None

    def train(self, mode: bool = True) -> PDEBlock:
        # Switching to eval drops stale training residuals: eval never exposes any.
        if not mode:
            self.last_residuals = None
        return super().train(mode)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"channels={self.channels}, spacing={self.spacing}, operator={c.operator!r}, "
            f"solver={c.solver!r}, steps={c.steps}, inner_iterations={c.inner_iterations}"
        )
