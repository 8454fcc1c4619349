"""Configuration of a PDE block: one frozen dataclass, validated on construction.

A trainer holds a :class:`PDEConfig` as a class attribute and an ablation derives its own
with :func:`dataclasses.replace`; every invalid field or combination raises ``ValueError``
right there, naming it, instead of failing (or silently diverging) mid-training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OPERATORS: tuple[str, ...] = ("diffusion", "laplacian", "moment")
SOLVERS: tuple[str, ...] = (
    "semi_implicit",
    "crank_nicolson",
    "explicit",
    "jacobi",
    "gauss_seidel",
)
#: Solvers that approximate the unsplit implicit system by ``inner_iterations`` sweeps
#: started from ``u^n`` (the paper's "one inner iterate"; one sweep is a rescaled explicit
#: step, see docs/pde_layer.md).
ITERATIVE_SOLVERS: tuple[str, ...] = ("jacobi", "gauss_seidel")
#: Solvers that solve their (split) systems exactly: one tridiagonal solve per axis.
EXACT_SOLVERS: tuple[str, ...] = ("semi_implicit", "crank_nicolson")
KERNEL_SIZES: tuple[int, ...] = (3, 5)


@dataclass(frozen=True)
class PDEConfig:
    """Hyper-parameters of the PDE blocks ``du/dt = D_phi[u] + N_psi(u)`` of PDE3D-UNet.

    Attributes
    ----------
    operator:
        ``"diffusion"`` (flux-form edge-stopping diffusion), ``"laplacian"`` (linear heat
        equation) or ``"moment"`` (edge-stopping diffusion plus PDE-Net moment-constrained
        first and second derivatives, integrated IMEX).
    solver:
        ``"semi_implicit"`` (default): additive operator splitting (AOS, Weickert et al.
        1998), one exact tridiagonal solve per axis and step, conductances lagged at
        ``u^n``; ``"crank_nicolson"``: the same splitting with ``theta = 1/2``;
        ``"explicit"``: forward Euler; ``"jacobi"`` / ``"gauss_seidel"``: the paper's
        ``inner_iterations`` (damped) Jacobi or red-black Gauss-Seidel sweeps of the
        unsplit implicit system started from ``u^n`` (one sweep is a rescaled explicit
        step).
    steps:
        Number of time steps ``K``.
    inner_iterations:
        Number of sweeps ``J`` per step of ``"jacobi"`` / ``"gauss_seidel"`` (must be 1
        for the other solvers, which have no sweeps).
    jacobi_omega:
        Damping ``omega`` in ``(0, 1]`` of the Jacobi sweeps (``2/3`` is the classic damped
        Jacobi smoother); only ``"jacobi"`` uses it.
    kernel_size:
        Edge length (3 or 5 voxels) of the moment kernels; only used by ``"moment"``.
    accuracy:
        Order of accuracy the moment constraint guarantees for every derivative kernel.
    gate_scale:
        The block's gate is ``gate_scale * gamma`` (``gamma`` the parameter, 0 at
        initialisation, so the block stays the identity there). A reparametrisation: with
        Adam, whose steps are about one learning rate whatever the gradient's size, the gate
        then moves ``gate_scale`` times as far per step as ``gamma``; the other parameters
        are unchanged. 1 is the plain gate.
    tau_init, tau_max:
        Initial value and upper bound of the learnable time step ``tau = tau_max *
        sigmoid(theta)``, in units of (finest-axis voxel)^2 (spacing is normalised so its
        smallest entry is 1). Requires ``0 < tau_init < tau_max``. Solvers with a
        stability bound ``R`` use ``tau / (1 + tau R)``, always inside it.
    response:
        Whether the learned pointwise reaction term ``N_psi`` exists.
    response_hidden:
        Hidden width of ``N_psi``; ``None`` means ``channels``.
    stages:
        Encoder stages after which a block is inserted; negative indices count from the
        end (``-2`` is the stage feeding the bottleneck). Resolve with
        :meth:`resolve_stages`.
    checkpointing:
        Recompute each step in backward instead of storing its activations (the
        reference implementation only: a fused step stores nothing but its input anyway).
    fused:
        Run the exact solvers (``semi_implicit``, ``crank_nicolson``) as fused steps with
        a hand-written backward that saves only each step's input
        (:mod:`~nnunet_pde.pde.fused`; compiled kernels on the CPU). ``False`` runs the
        reference implementation, differentiated by autograd. Same results up to rounding;
        the other solvers always run the reference implementation.
    alpha_init:
        Initial diffusivity ``alpha_c = softplus(.)`` (per channel, > 0).
    kappa_init:
        Initial edge threshold ``kappa_c`` of the conductance ``1/(1+(|grad u|/kappa)^2)``
        (per channel, > 0, in units of the channel's spatial standard deviation per
        finest voxel: the block evolves features normalised per sample and channel).
    coef_max:
        Bound of the moment coefficients ``c_j = coef_max * tanh(theta_j)``.
    """

    operator: str = "diffusion"
    solver: str = "semi_implicit"
    steps: int = 2
    inner_iterations: int = 1
    jacobi_omega: float = 1.0
    kernel_size: int = 3
    accuracy: int = 2
    tau_init: float = 0.5
    tau_max: float = 5.0
    response: bool = True
    response_hidden: int | None = None
    stages: tuple[int, ...] = (-2,)
    checkpointing: bool = False
    fused: bool = True
    alpha_init: float = 1.0
    kappa_init: float = 1.0
    coef_max: float = 1.0
    gate_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError(f"PDEConfig.operator={self.operator!r}: expected one of {OPERATORS}")
        if self.solver not in SOLVERS:
            raise ValueError(f"PDEConfig.solver={self.solver!r}: expected one of {SOLVERS}")
        for name in ("steps", "inner_iterations", "kernel_size", "accuracy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PDEConfig.{name}={value!r}: expected an integer >= 1")
        if self.solver not in ITERATIVE_SOLVERS and self.inner_iterations != 1:
            raise ValueError(
                f"PDEConfig(solver={self.solver!r}, inner_iterations={self.inner_iterations}): "
                f"only the sweep solvers {ITERATIVE_SOLVERS} iterate; {self.solver!r} "
                "solves its systems exactly (or has none): use inner_iterations=1"
            )
        if (
            isinstance(self.jacobi_omega, bool)
            or not isinstance(self.jacobi_omega, (int, float))
            or not 0 < self.jacobi_omega <= 1
        ):
            raise ValueError(
                f"PDEConfig.jacobi_omega={self.jacobi_omega!r}: expected a number in (0, 1]"
            )
        if self.jacobi_omega != 1 and self.solver != "jacobi":
            raise ValueError(
                f"PDEConfig(solver={self.solver!r}, jacobi_omega={self.jacobi_omega}): "
                "only solver='jacobi' is damped"
            )
        if self.kernel_size not in KERNEL_SIZES:
            raise ValueError(
                f"PDEConfig.kernel_size={self.kernel_size!r}: expected one of {KERNEL_SIZES}"
            )
        for name in ("tau_init", "tau_max", "alpha_init", "kappa_init", "coef_max", "gate_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"PDEConfig.{name}={value!r}: expected a number")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"PDEConfig.{name}={value!r}: expected a finite number > 0")
        if not self.tau_init < self.tau_max:
            raise ValueError(
                f"PDEConfig(tau_init={self.tau_init}, tau_max={self.tau_max}): tau is "
                "tau_max * sigmoid(theta), so tau_init must be strictly below tau_max"
            )
        if self.response_hidden is not None:
            if not self.response:
                raise ValueError(
                    f"PDEConfig(response=False, response_hidden={self.response_hidden}): "
                    "response_hidden sizes the reaction term, which response=False removes"
                )
            if (
                isinstance(self.response_hidden, bool)
                or not isinstance(self.response_hidden, int)
                or self.response_hidden < 1
            ):
                raise ValueError(
                    f"PDEConfig.response_hidden={self.response_hidden!r}: expected None or "
                    "an integer >= 1"
                )
        if not isinstance(self.stages, tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in self.stages
        ):
            raise ValueError(f"PDEConfig.stages={self.stages!r}: expected a tuple of ints")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"PDEConfig.stages={self.stages!r}: duplicate stage index")
        if self.operator == "moment":
            # Imported here: moments.py is torch/numpy maths, config stays light to import.
            from .moments import check_accuracy, derivative_indices

            for ndim in (2, 3):
                for alpha in derivative_indices(ndim):
                    check_accuracy(alpha, self.kernel_size, self.accuracy)

    def resolve_stages(self, n_stages: int) -> tuple[int, ...]:
        """Map :attr:`stages` to sorted non-negative encoder stage indices.

        Parameters
        ----------
        n_stages:
            Number of encoder stages of the network (including the bottleneck).

        Raises
        ------
        ValueError
            If an index is out of range for ``n_stages`` or two entries name the same stage.
        """
        resolved = []
        for s in self.stages:
            r = s + n_stages if s < 0 else s
            if not 0 <= r < n_stages:
                raise ValueError(
                    f"PDEConfig.stages={self.stages!r}: stage {s} is out of range for a "
                    f"network with {n_stages} encoder stages"
                )
            resolved.append(r)
        if len(set(resolved)) != len(resolved):
            raise ValueError(
                f"PDEConfig.stages={self.stages!r}: entries name the same stage for "
                f"{n_stages} encoder stages"
            )
        return tuple(sorted(resolved))
