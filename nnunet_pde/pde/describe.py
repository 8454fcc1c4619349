"""What a (trained) PDE block has learned, as plain JSON-serialisable data.

:func:`describe_block` is a pure function of the block's parameters; the CLI
(``nnunet-pde inspect``) formats and plots its output. :func:`relative_parameter_gradients`
says which of a block's parameters receive a gradient.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from .block import PDEBlock
from .moments import derivative_name, moments_to_kernel, true_moments


def _floats(t: torch.Tensor) -> list:
    return t.detach().to("cpu", torch.float64).numpy().tolist()


def _terms(moments: dict[tuple[int, ...], float], tol: float = 1e-8) -> dict[str, float]:
    """``{derivative name: coefficient}`` of the non-negligible moments, lowest order first."""
    ordered = sorted(moments.items(), key=lambda item: (sum(item[0]), [-a for a in item[0]]))
    return {derivative_name(a): v for a, v in ordered if abs(v) > tol}


def _expression(terms: dict[str, float]) -> str:
    if not terms:
        return "0"
    return " ".join(f"{'+' if v >= 0 else '-'} {abs(v):.4g}*{name}" for name, v in terms.items())


@torch.no_grad()
def describe_block(block: PDEBlock) -> dict[str, Any]:
    """Learned time step, diffusivities, edge thresholds and moment kernels of a block.

    Parameters
    ----------
    block:
        A :class:`~nnunet_pde.pde.PDEBlock` (not modified).

    Returns
    -------
    dict
        JSON-serialisable, with keys

        ``config``
            The block's :class:`PDEConfig` as a dict.
        ``channels``, ``spacing_mm``, ``spacing_normalised``
            Width and voxel spacing (axis order ``(D, H, W)``; normalised: min entry 1).
        ``tau``, ``tau_effective``
            Learned step ``tau_max * sigmoid(theta)`` and the per-channel step actually
            used after the stability clamp, in (finest-axis voxel)^2.
        ``gamma``, ``alpha``, ``kappa``
            Per-channel gate, diffusivity and edge threshold (``kappa`` ``None`` for the
            linear Laplacian). Gradients below ``kappa`` diffuse, above it they are kept.
        ``moment``
            ``None`` unless ``operator="moment"``; otherwise ``kernels``: one entry per
            derivative ``d^alpha`` with its full moment array (``moments``, index ``a_d``
            along each axis), the free moments' largest magnitude and ``effective_terms``:
            the true moments ``mu_a`` of the kernel up to order ``|alpha| + accuracy``, i.e.
            ``(q * u) / h^|alpha| = sum_a mu_a h^(|a|-|alpha|) d^a u`` - the target
            derivative with coefficient 1 plus the learned leading error terms; and
            ``channels``: per channel the coefficients ``c_j`` and the effective
            differential expression (order <= 2, normalised spacing units) of the combined
            kernel ``sum_j c_j q_j``, with that kernel itself for plotting.
        ``response_hidden``
            Hidden width of the reaction term, ``None`` without it.
    """
    cfg = block.config
    cond = block.conductance
    out: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "channels": block.channels,
        "spacing_mm": list(block.physical_spacing),
        "spacing_normalised": list(block.spacing),
        "tau": float(block.tau()),
        "tau_effective": _floats(block.time_step()),
        "gamma": _floats(block.gate()),  # the effective gate gate_scale * gamma
        "alpha": _floats(cond.alpha()),
        "kappa": _floats(cond.kappa()) if cond.edge_stopping else None,
        "moment": None,
        "response_hidden": None if block.response is None else block.response.inp.out_channels,
    }
    mop = block.moment
    if mop is not None:
        moments = mop.moments().detach().to("cpu", torch.float64)
        # Recomputed in float64 so the reported moments are not float32 round-off.
        unscaled = moments_to_kernel(moments, ndim=mop.ndim)
        scale = torch.tensor(mop.scale, dtype=torch.float64)
        kernels = []
        for j, alpha in enumerate(mop.alphas):
            order = sum(alpha) + mop.accuracy
            mu = true_moments(unscaled[j].numpy(), order)
            free = mop.free_moments[mop.free_index // mop.kernel_size**mop.ndim == j]
            kernels.append(
                {
                    "target": derivative_name(alpha),
                    "alpha": list(alpha),
                    "moments": moments[j].numpy().tolist(),
                    "free_moments_max_abs": float(free.abs().max()) if free.numel() else 0.0,
                    "effective_terms": _terms(mu),
                }
            )
        coefs = mop.coefficients().detach().to("cpu", torch.float64)
        channel_kernels = torch.einsum(
            "jc,jk->ck", coefs, (unscaled * scale.reshape(-1, *([1] * mop.ndim))).flatten(1)
        )
        shape = (mop.kernel_size,) * mop.ndim
        h = np.asarray(mop.spacing)
        channels = []
        for c in range(block.channels):
            kc = channel_kernels[c].reshape(shape).numpy()
            # Moments in physical offsets k*h: coefficient of d^a u in normalised units.
            mu = {
                a: v * math.prod(float(hd) ** ad for hd, ad in zip(h, a, strict=True))
                for a, v in true_moments(kc, 2).items()
            }
            terms = _terms(mu)
            channels.append(
                {
                    "coefficients": {
                        derivative_name(a): float(coefs[j, c]) for j, a in enumerate(mop.alphas)
                    },
                    "effective_terms": terms,
                    "expression": _expression(terms),
                    "kernel": kc.tolist(),
                }
            )
        out["moment"] = {
            "kernel_size": mop.kernel_size,
            "accuracy": mop.accuracy,
            "coef_max": mop.coef_max,
            "kernels": kernels,
            "channels": channels,
        }
    return out


def relative_parameter_gradients(block: torch.nn.Module) -> dict[str, float]:
    """RMS gradient of every parameter of ``block`` divided by the largest of them.

    Call after a backward pass. A parameter without a gradient counts as 0. Used to check
    that every PDE parameter is alive (receives a gradient) at initialisation.
    """
    rms = {}
    for name, p in block.named_parameters():
        g = p.grad
        rms[name] = 0.0 if g is None else float(g.detach().double().square().mean().sqrt())
    top = max(rms.values(), default=0.0)
    return {k: (v / top if top > 0 else 0.0) for k, v in rms.items()}
