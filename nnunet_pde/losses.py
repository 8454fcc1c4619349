"""The regularised loss of PDE3D-UNet: nnU-Net's segmentation loss plus PDE terms.

    L = L_seg + w(epoch) * (lambda_pde * L_reg + lambda_pred * L_pred + lambda_tv * L_tv)

* ``L_seg``: the loss nnU-Net builds (``DeepSupervisionWrapper`` around Dice+CE, or
  Dice+BCE for region datasets), untouched.
* ``L_reg``: PDE consistency recorded by the PDE blocks during the forward pass: the mean
  over blocks of the edge energy of each block's final state
  (:func:`nnunet_pde.pde.block.edge_energy`: mean ``log(1 + |grad z|^2)`` of the final
  features ``z`` normalised to zero mean and unit standard deviation per sample and
  channel). It is dimensionless, invariant to the scale and offset of the features, does
  not involve the learned diffusivities (so it cannot be lowered by switching the PDE off
  or by shrinking ``alpha``), and cannot be lowered by shrinking or flattening the
  features (they are normalised). It favours features made of few regions with sharp
  boundaries; see docs/pde_layer.md.
* ``L_pred``: PDE consistency of the *predictions* (the loss-only ablation, no embedded
  blocks): the squared distance of the foreground probabilities from one implicit diffusion
  step of themselves, see :func:`diffusion_step_residual`.
* ``L_tv``: total variation of the foreground probabilities at full resolution,
  spacing-aware, ignoring voxels under nnU-Net's ignore label; :func:`total_variation`.
* ``w(epoch)``: linear warm-up from 0 to 1 over the first ``warmup_fraction`` of the epochs.

Tensors are ``(B, C, D, H, W)`` (numpy axis order for the spatial axes); spacings are in
mm, numpy axis order, and are normalised so that their smallest entry is 1 (the same
convention as the PDE blocks), so the terms do not depend on the unit of length.

Everything here is pure torch; the trainer (``trainers/``) connects it to nnU-Net.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_pde.pde.stencils import pad_replicate, shifted


@dataclass(frozen=True)
class RegularizerConfig:
    """Weights of the regulariser terms and their warm-up.

    Attributes
    ----------
    lambda_pde:
        Weight of the PDE-consistency term recorded by the embedded blocks (``L_reg``).
    lambda_tv:
        Weight of the total variation of the predicted probabilities (``L_tv``).
    lambda_pred:
        Weight of the PDE consistency of the predictions themselves (``L_pred``; the
        loss-only ablation uses it instead of embedded blocks).
    pred_tau:
        Time step of the implicit diffusion step in ``L_pred``, in (finest voxel)^2.
    warmup_fraction:
        Fraction of the training epochs over which the lambdas ramp linearly from 0
        (epoch 0) to their value; 0 means no warm-up.
    tv_eps:
        Smoothing of the TV magnitude ``sqrt(|grad p|^2 + eps^2) - eps`` (differentiable at
        0, exactly 0 on constant maps).
    """

    lambda_pde: float = 0.0
    lambda_tv: float = 0.0
    lambda_pred: float = 0.0
    pred_tau: float = 1.0
    warmup_fraction: float = 0.0
    tv_eps: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("lambda_pde", "lambda_tv", "lambda_pred"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"RegularizerConfig.{name} must be >= 0, got {getattr(self, name)}"
                )
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(
                f"RegularizerConfig.warmup_fraction must be in [0, 1], got {self.warmup_fraction}"
            )
        if self.pred_tau <= 0 or self.tv_eps <= 0:
            raise ValueError("RegularizerConfig.pred_tau and tv_eps must be > 0")

    @property
    def active_terms(self) -> tuple[str, ...]:
        """Names of the terms with a positive weight (``"pde"``, ``"pred"``, ``"tv"``)."""
        weights = {"pde": self.lambda_pde, "pred": self.lambda_pred, "tv": self.lambda_tv}
        return tuple(k for k, v in weights.items() if v > 0)


def normalised_spacing(spacing: Sequence[float]) -> tuple[float, ...]:
    """Spacing divided by its smallest entry (so the finest axis has unit spacing)."""
    m = min(spacing)
    if m <= 0:
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    return tuple(float(h) / m for h in spacing)


def _forward_differences(p: torch.Tensor, spacing: Sequence[float]) -> list[torch.Tensor]:
    """``(p(x + e_d) - p(x)) / h_d`` for each spatial axis, all cropped to the common
    ``(n_0 - 1, n_1 - 1, ...)`` grid so that they can be combined voxel by voxel."""
    ndim = p.ndim - 2
    out = []
    for d in range(ndim):
        hi = [slice(None), slice(None)] + [
            slice(1, None) if a == d else slice(0, -1) for a in range(ndim)
        ]
        lo = [slice(None), slice(None)] + [slice(0, -1)] * ndim
        out.append((p[tuple(hi)] - p[tuple(lo)]) / spacing[d])
    return out


def total_variation(
    probs: torch.Tensor,
    spacing: Sequence[float],
    valid: torch.Tensor | None = None,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Mean isotropic total variation of probability maps.

    ``TV = mean_{x, c} sqrt(sum_d ((p(x+e_d) - p(x)) / h_d)^2 + eps^2) - eps`` with
    forward differences and spacing normalised to a unit finest axis.

    Parameters
    ----------
    probs:
        ``(B, C, *S)`` probabilities (any real values work).
    spacing:
        Voxel spacing per spatial axis (mm, numpy order); only ratios matter.
    valid:
        Optional ``(B, 1, *S)`` boolean mask; a voxel counts only if it and its forward
        neighbours along every axis are valid (voxels under the ignore label are excluded).

    Returns
    -------
    torch.Tensor
        Scalar float32; 0 for constant maps, and 0 if no voxel is valid.
    """
    p = probs.float()
    h = normalised_spacing(spacing)
    diffs = _forward_differences(p, h)
    mag = torch.sqrt(sum(g * g for g in diffs) + eps * eps) - eps
    if valid is None:
        return mag.mean()
    ndim = p.ndim - 2
    v = valid.bool()
    crop = [slice(None), slice(None)] + [slice(0, -1)] * ndim
    ok = v[tuple(crop)]
    for d in range(ndim):
        hi = [slice(None), slice(None)] + [
            slice(1, None) if a == d else slice(0, -1) for a in range(ndim)
        ]
        ok = ok & v[tuple(hi)]
    weight = ok.to(mag.dtype).expand_as(mag)
    return (mag * weight).sum() / weight.sum().clamp_min(1.0)


def diffusion_step_residual(
    probs: torch.Tensor, spacing: Sequence[float], tau: float = 1.0
) -> torch.Tensor:
    """Squared distance of ``p`` from one implicit linear-diffusion step of itself.

    One Jacobi sweep (started from ``p``) of ``(I - tau * L) v = p``, with ``L`` the
    spacing-aware 7-point Laplacian and zero-flux boundaries, gives

        v = (p + tau * sum_d (p(x+e_d) + p(x-e_d)) / h_d^2) / (1 + tau * sum_d 2 / h_d^2)

    and ``p - v = -tau * L[p] / (1 + tau * sum_d 2 / h_d^2)``. The mean of ``(p - v)^2`` is
    zero exactly for maps at a diffusion equilibrium (constant on each connected region)
    and penalises ragged, noisy probability maps; it is the loss-only counterpart of the
    embedded blocks' consistency term.

    Returns
    -------
    torch.Tensor
        Scalar float32.
    """
    p = probs.float()
    h = normalised_spacing(spacing)
    ndim = p.ndim - 2
    padded = pad_replicate(p, 1)
    neighbours = torch.zeros_like(p)
    diag = 0.0
    for d in range(ndim):
        w = 1.0 / (h[d] * h[d])
        for sign in (-1, 1):
            offset = [0] * ndim
            offset[d] = sign
            neighbours = neighbours + w * shifted(padded, offset, 1)
        diag += 2.0 * w
    v = (p + tau * neighbours) / (1.0 + tau * diag)
    return ((p - v) ** 2).mean()


def probabilities_and_valid_mask(
    logits: torch.Tensor, target: torch.Tensor, has_regions: bool, ignore_label: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Foreground probabilities and the mask of voxels not under the ignore label.

    Parameters
    ----------
    logits:
        ``(B, C, *S)`` network output at full resolution.
    target:
        nnU-Net's target at full resolution: ``(B, 1, *S)`` label map, or for regions a
        ``(B, R(+1), *S)`` binary map whose last channel marks ignored voxels when the
        dataset has an ignore label.
    has_regions:
        Sigmoid per region (no background channel) instead of softmax over labels.
    ignore_label:
        nnU-Net's ignore label, or None.

    Returns
    -------
    probs, valid:
        ``(B, C_fg, *S)`` float32 probabilities (softmax without the background channel,
        or sigmoid) and a ``(B, 1, *S)`` boolean mask, or None when nothing is ignored.
    """
    x = logits.float()
    if has_regions:
        probs = torch.sigmoid(x)
        valid = None
        if ignore_label is not None:
            valid = target[:, -1:] == 0
    else:
        probs = torch.softmax(x, dim=1)[:, 1:]
        valid = None
        if ignore_label is not None:
            valid = target[:, :1] != ignore_label
    return probs, valid


class RegularizedSegmentationLoss(nn.Module):
    """nnU-Net's segmentation loss plus the PDE / TV terms of :class:`RegularizerConfig`.

    Parameters
    ----------
    seg_loss:
        The loss nnU-Net built (called with the same ``(output, target)``).
    config:
        Term weights and warm-up.
    spacing:
        Full-resolution voxel spacing (mm, numpy order) of the configuration.
    has_regions, ignore_label:
        From nnU-Net's label manager.
    blocks:
        Callable returning the PDE blocks whose ``last_residuals`` feed ``L_reg``; only
        called when ``lambda_pde > 0``. A callable (not a module) so the network's
        parameters are not registered twice.
    warmup_epochs:
        Length of the linear warm-up of the regulariser weights, in epochs (0: none).

    The most recent terms are in :attr:`last_terms` (detached); :attr:`epoch` drives the
    warm-up and is set by the trainer at the start of each epoch.
    """

    def __init__(
        self,
        seg_loss: nn.Module,
        config: RegularizerConfig,
        spacing: Sequence[float],
        has_regions: bool,
        ignore_label: int | None = None,
        blocks: Callable[[], Iterable[nn.Module]] | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if config.lambda_pde > 0 and blocks is None:
            raise ValueError("lambda_pde > 0 needs the network's PDE blocks (blocks=...)")
        self.seg_loss = seg_loss
        self.config = config
        if config.lambda_pde > 0:
            # The blocks record only what this loss reads, and only when it reads it.
            for block in blocks():
                block.record_consistency = True
        self.spacing = tuple(float(s) for s in spacing)
        self.has_regions = has_regions
        self.ignore_label = ignore_label
        self._blocks = blocks
        self.warmup_epochs = int(warmup_epochs)
        self.epoch = 0
        self.last_terms: dict[str, float] = {}

    def warmup_factor(self) -> float:
        """``min(1, epoch / warmup_epochs)``; 1 without warm-up."""
        if self.warmup_epochs <= 0:
            return 1.0
        return min(1.0, self.epoch / self.warmup_epochs)

    def block_consistency(self) -> torch.Tensor | None:
        """Mean over blocks of their recorded residual terms; clears the records."""
        values = []
        for block in self._blocks():
            rec = getattr(block, "last_residuals", None)
            if rec:
                values.append(sum(rec.values()))
            block.clear_residuals()
        if not values:
            return None
        return torch.stack([v.float() for v in values]).mean()

    def forward(self, output, target) -> torch.Tensor:
        seg = self.seg_loss(output, target)
        cfg = self.config
        terms: dict[str, torch.Tensor] = {"seg": seg.detach()}
        extra = seg.new_zeros((), dtype=torch.float32)
        if cfg.active_terms:
            full_out = output[0] if isinstance(output, (list, tuple)) else output
            full_tgt = target[0] if isinstance(target, (list, tuple)) else target
            if "tv" in cfg.active_terms or "pred" in cfg.active_terms:
                probs, valid = probabilities_and_valid_mask(
                    full_out, full_tgt, self.has_regions, self.ignore_label
                )
                if "tv" in cfg.active_terms:
                    tv = total_variation(probs, self.spacing, valid, cfg.tv_eps)
                    terms["tv"] = tv.detach()
                    extra = extra + cfg.lambda_tv * tv
                if "pred" in cfg.active_terms:
                    pred = diffusion_step_residual(probs, self.spacing, cfg.pred_tau)
                    terms["pred"] = pred.detach()
                    extra = extra + cfg.lambda_pred * pred
            if "pde" in cfg.active_terms:
                reg = self.block_consistency()
                # eval mode records nothing: the term is then simply absent
                if reg is not None:
                    terms["pde"] = reg.detach()
                    extra = extra + cfg.lambda_pde * reg
        self.last_terms = {k: float(v) for k, v in terms.items()}
        return seg + self.warmup_factor() * extra
