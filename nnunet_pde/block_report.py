"""The report of what the PDE blocks of a trained PDE3D-UNet learned (what
``nnunet-pde inspect CHECKPOINT`` prints, writes and plots; its command line is
:mod:`nnunet_pde.cli.inspect`).

:func:`inspect_checkpoint` rebuilds the network of the trainer that wrote a checkpoint
(``trainer_name``: one of our trainers, or a user's subclass of one defined in a folder
listed in ``nnUNet_extTrainer``, resolved by nnU-Net's own finder) from the plans,
configuration and dataset.json stored in the checkpoint's ``init_args``, loads the weights
and returns :func:`nnunet_pde.pde.describe_block` of every PDE block, keyed by the block's
module name (``encoder.stages.4.pde``), with the per-epoch block diagnostics that training
logged (:func:`block_diagnostics`). :func:`format_summary` turns that report into text and
:func:`plot_report` into PNG figures.

Units follow :func:`describe_block`: time steps in (finest-axis voxel)^2, spacing in mm,
axis order ``(D, H, W)`` (named z, y, x in derivative names).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "format_summary",
    "inspect_checkpoint",
    "plot_report",
]

#: Prefixes a saved state dict may carry from DDP / torch.compile wrappers.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def _state_dict_mismatch(expected: dict[str, Any], found: dict[str, Any], exc: Exception) -> str:
    """What ``load_state_dict`` found wrong, on one line: missing, unexpected, other shapes."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(v.shape)
    ]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"missing key(s) {few(missing)}")
    if unexpected:
        parts.append(f"unexpected key(s) {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch (checkpoint vs network) {few(shapes)}")
    return "; ".join(parts) or " ".join(str(exc).split())


def _strip_wrappers(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def _epoch(value: Any) -> int | None:
    """A checkpoint's ``current_epoch`` as an int (a tensor or float too), else None."""
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`nnunet_pde.checkpoints.load_checkpoint` (imported lazily: it needs torch)."""
    from nnunet_pde.checkpoints import load_checkpoint as load

    return load(path, "CHECKPOINT")


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """Describe every PDE block of the network stored in an nnU-Net checkpoint.

    Parameters
    ----------
    path:
        A checkpoint written by ``nnUNetv2_train ... -tr <nnunet-pde trainer>`` (or a
        subclass of one).

    Returns
    -------
    dict
        JSON-serialisable: ``checkpoint`` (path), ``trainer_name``, ``configuration``,
        ``trainer_base`` (the nnunet-pde trainer it is or derives from), ``plans_name``,
        ``epoch`` (``current_epoch`` or ``None``), ``blocks``: module name ->
        :func:`~nnunet_pde.pde.describe_block` of that block (empty for trainers without
        blocks, e.g. ``nnUNetTrainerPDE3D_Backbone``), and ``diagnostics``: what training
        logged per epoch for each block (:func:`block_diagnostics`; empty for checkpoints
        written before the diagnostics existed).

    Raises
    ------
    FileNotFoundError, CheckpointError
        See :func:`load_checkpoint`; also if the weights do not fit the rebuilt network,
        or if ``trainer_name`` is neither an nnunet-pde trainer nor a subclass of one that
        nnU-Net's finder resolves through ``nnUNet_extTrainer``
        (:func:`nnunet_pde.env.resolve_trainer`).
    """
    from nnunet_pde.checkpoints import PDE_KEY_MARKER, build_network_for_checkpoint
    from nnunet_pde.env import project_trainer_base, resolve_trainer
    from nnunet_pde.network import pde_blocks
    from nnunet_pde.pde import describe_block

    checkpoint = load_checkpoint(path)
    trainer_name = str(checkpoint["trainer_name"])
    weights = _strip_wrappers(checkpoint["network_weights"])
    try:
        trainer = resolve_trainer(trainer_name)
    except ValueError as exc:
        if not any(PDE_KEY_MARKER in key for key in weights):
            raise CheckpointError(
                f"this checkpoint has no PDE blocks: {path} was written by {trainer_name}, "
                "not by an nnunet-pde trainer; inspect a checkpoint of nnUNetTrainerPDE3D or "
                "a variant (nnunet-pde list-trainers)",
                "CHECKPOINT",
            ) from None
        raise CheckpointError(
            f"{path} was written by trainer '{trainer_name}', which cannot be used: {exc}",
            "CHECKPOINT",
        ) from None
    network = build_network_for_checkpoint(trainer, checkpoint, path, "CHECKPOINT")
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"the weights in {path} do not fit the {trainer_name} network built from the "
            f"checkpoint's own plans: {_state_dict_mismatch(network.state_dict(), weights, exc)}",
            "CHECKPOINT",
        ) from None
    init_args = checkpoint["init_args"]
    blocks = pde_blocks(network)
    base = project_trainer_base(trainer)
    return {
        "checkpoint": str(Path(path)),
        "trainer_name": trainer_name,
        "trainer_base": base.__name__ if base is not None else None,
        "configuration": init_args.get("configuration"),
        "plans_name": init_args["plans"].get("plans_name"),
        "epoch": _epoch(checkpoint.get("current_epoch")),
        "blocks": {name: describe_block(block) for name, block in blocks.items()},
        "diagnostics": block_diagnostics(checkpoint.get("logging"), list(blocks)),
    }


def block_diagnostics(logging: Any, block_names: list[str]) -> dict[str, dict[str, list]]:
    """The per-epoch block diagnostics that training logged (a checkpoint's ``logging``
    entry, see :mod:`nnunet_pde.training.diagnostics`): block module name -> quantity
    (``gamma_abs_mean``, ``gamma_abs_max``, ``tau``, ``contribution``) -> one value per
    epoch, ``None`` for an epoch without a value (a resumed training that predates them).
    Blocks are matched to the logger keys by their label (``stage<s>``); a label no block
    of the network has keeps its label as key. Empty when nothing was logged."""
    from nnunet_pde.formats import diagnostics_from_logging
    from nnunet_pde.training.diagnostics import block_labels

    series = diagnostics_from_logging(logging if isinstance(logging, dict) else None)
    by_label = {label: name for name, label in block_labels(block_names).items()}
    return {
        by_label.get(label, label): {
            quantity: [v if np.isfinite(v) else None for v in values]
            for quantity, values in quantities.items()
        }
        for label, quantities in series.items()
    }


# -------------------------------------------------------------------------- summary


def _stats(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    a = np.asarray(values, dtype=np.float64)
    return f"min {a.min():.4g}  median {np.median(a):.4g}  max {a.max():.4g}"


def dominant_term(terms: dict[str, float]) -> str | None:
    """Name of the term with the largest magnitude (``None`` if there is none)."""
    if not terms:
        return None
    return max(terms.items(), key=lambda item: abs(item[1]))[0]


def _moment_summary(moment: dict[str, Any], top: int) -> list[str]:
    lines = [f"  moment kernels {moment['kernel_size']}^3, accuracy {moment['accuracy']}:"]
    for k in moment["kernels"]:
        extra = {n: v for n, v in k["effective_terms"].items() if n != k["target"]}
        lead = dominant_term(extra)
        err = f"largest error term {extra[lead]:+.3g}*{lead}" if lead else "no error term"
        lines.append(
            f"    {k['target']:<8} free moments max|.| {k['free_moments_max_abs']:.3g}, {err}"
        )
    channels = moment["channels"]
    dominant = Counter(dominant_term(c["effective_terms"]) or "none" for c in channels)
    lines.append(
        "  dominant derivative per channel: "
        + ", ".join(f"{name} ({n})" for name, n in dominant.most_common())
    )
    strength = [
        (max((abs(v) for v in c["effective_terms"].values()), default=0.0), i)
        for i, c in enumerate(channels)
    ]
    shown = [i for s, i in sorted(strength, reverse=True)[:top] if s > 0]
    if shown:
        lines.append(f"  strongest channels (of {len(channels)}):")
        lines.extend(f"    channel {i}: {channels[i]['expression']}" for i in shown)
    return lines


def format_summary(report: dict[str, Any], top: int = 5) -> str:
    """Readable text of an :func:`inspect_checkpoint` report (``top`` channels shown per
    moment block)."""
    base = report.get("trainer_base")
    head = (
        f"{report['checkpoint']}: {report['trainer_name']}"
        + (f" (subclass of {base})" if base and base != report["trainer_name"] else "")
        + f", {report.get('plans_name')} / {report.get('configuration')}"
        + (f", epoch {report['epoch']}" if report.get("epoch") is not None else "")
    )
    lines = [head]
    if not report["blocks"]:
        lines.append("no PDE blocks in this network (a backbone-only or loss-only trainer)")
    for name, b in report["blocks"].items():
        cfg = b["config"]
        spacing = "x".join(f"{h:g}" for h in b["spacing_mm"])
        lines.append("")
        lines.append(
            f"{name}: {b['channels']} channels, spacing {spacing} mm (D,H,W); "
            f"{cfg['operator']} / {cfg['solver']}, K={cfg['steps']}, J={cfg['inner_iterations']}"
        )
        tau_eff = b["tau_effective"]
        lines.append(
            f"  tau {b['tau']:.4g} (tau_max {cfg['tau_max']:g}), effective tau "
            f"{min(tau_eff):.4g} .. {max(tau_eff):.4g}  [(finest voxel)^2]"
        )
        lines.append(f"  gamma  {_stats(b['gamma'])}")
        lines.append(f"  alpha  {_stats(b['alpha'])}")
        lines.append(
            f"  kappa  {_stats(b['kappa'])}"
            if b["kappa"] is not None
            else "  kappa  none (linear Laplacian)"
        )
        if b["moment"] is not None:
            lines.extend(_moment_summary(b["moment"], top))
        lines.extend(_diagnostics_summary((report.get("diagnostics") or {}).get(name)))
    return "\n".join(lines)


#: Quantity -> label in the text summary of the training diagnostics.
_DIAGNOSTIC_LABELS = {
    "gamma_abs_mean": "|gamma| mean",
    "gamma_abs_max": "|gamma| max",
    "tau": "tau",
    "contribution": "contribution ||y-x||/||x||",
}


def _diagnostics_summary(series: dict[str, list] | None) -> list[str]:
    """Lines of one block's training diagnostics: first, last and largest value per
    quantity, with their epochs."""
    if not series:
        return ["  training diagnostics: none logged in this checkpoint"]
    n_epochs = max((len(v) for v in series.values()), default=0)
    lines = [f"  training diagnostics ({n_epochs} epochs logged; value at epoch):"]
    for quantity, label in _DIAGNOSTIC_LABELS.items():
        points = [(e, v) for e, v in enumerate(series.get(quantity) or []) if v is not None]
        if not points:
            lines.append(f"    {label:<28} n/a")
            continue
        (e0, v0), (e1, v1) = points[0], points[-1]
        em, vm = max(points, key=lambda p: p[1])
        lines.append(
            f"    {label:<28} first {v0:.4g} @{e0}  last {v1:.4g} @{e1}  max {vm:.4g} @{em}"
        )
    return lines


# ---------------------------------------------------------------------------- plots


def _file_stem(name: str) -> str:
    return name.replace(".", "_")


def _central_slices(kernel: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The three central slices of a cubic 3-D kernel, normal to z (D), y (H), x (W)."""
    c = kernel.shape[0] // 2
    return [("z=0 (y,x)", kernel[c]), ("y=0 (z,x)", kernel[:, c]), ("x=0 (z,y)", kernel[:, :, c])]


def plot_report(report: dict[str, Any], out_dir: str | Path, max_channels: int = 8) -> list[Path]:
    """Write PNG figures of an :func:`inspect_checkpoint` report into ``out_dir``.

    Per block ``<block>_parameters.png`` (per-channel effective tau, gamma, alpha, kappa)
    and, for moment blocks, ``<block>_moment_kernels.png`` (central slices of every
    derivative kernel ``q_j``, before division by ``h^|alpha|``) and
    ``<block>_channel_kernels.png`` (central slices of the combined kernels ``sum_j c_j q_j``
    of the ``max_channels`` strongest channels; left out when every coefficient is zero).
    Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from nnunet_pde.pde import moments_to_kernel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    for name, b in report["blocks"].items():
        stem = _file_stem(name)
        panels = [
            ("effective tau [(finest voxel)^2]", b["tau_effective"]),
            ("gate gamma", b["gamma"]),
            ("diffusivity alpha", b["alpha"]),
        ]
        if b["kappa"] is not None:
            panels.append(("edge threshold kappa", b["kappa"]))
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.0 * len(panels)), sharex=True)
        for ax, (label, values) in zip(np.atleast_1d(axes), panels, strict=True):
            ax.bar(np.arange(len(values)), values, width=1.0, color="tab:blue")
            ax.set_ylabel(label, fontsize=8)
        np.atleast_1d(axes)[0].axhline(b["tau"], color="tab:red", lw=1, label="learned tau")
        np.atleast_1d(axes)[0].legend(fontsize=8, loc="upper right")
        np.atleast_1d(axes)[-1].set_xlabel("channel")
        fig.suptitle(f"{name} ({b['config']['operator']}, {b['config']['solver']})")
        save(fig, f"{stem}_parameters.png")

        moment = b["moment"]
        if moment is None:
            continue
        kernels = [
            (
                k["target"],
                moments_to_kernel(torch.tensor(k["moments"], dtype=torch.float64), ndim=3).numpy(),
            )
            for k in moment["kernels"]
        ]
        save(
            _kernel_grid(plt, kernels, f"{name}: derivative kernels q_j"),
            f"{stem}_moment_kernels.png",
        )
        strength = sorted(
            (
                (max((abs(v) for v in c["effective_terms"].values()), default=0.0), i)
                for i, c in enumerate(moment["channels"])
            ),
            reverse=True,
        )[:max_channels]
        chans = [
            (
                f"ch {i}: {dominant_term(moment['channels'][i]['effective_terms']) or '0'}",
                np.asarray(moment["channels"][i]["kernel"]),
            )
            for s, i in strength
            if s > 0
        ]
        if chans:  # all coefficients zero (a fresh block): nothing to draw
            save(
                _kernel_grid(plt, chans, f"{name}: combined kernels of the strongest channels"),
                f"{stem}_channel_kernels.png",
            )
    return written


def _kernel_grid(plt: Any, kernels: list[tuple[str, np.ndarray]], title: str) -> Any:
    """One row per kernel, three columns of central slices, symmetric colour scale."""
    fig, axes = plt.subplots(
        len(kernels), 3, figsize=(6.5, 1.9 * len(kernels)), squeeze=False, layout="constrained"
    )
    for row, (label, kernel) in enumerate(kernels):
        vmax = float(np.abs(kernel).max()) or 1.0
        for col, (slice_label, image) in enumerate(_central_slices(kernel)):
            ax = axes[row, col]
            im = ax.imshow(image, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(slice_label, fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
        fig.colorbar(im, ax=axes[row].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=9)
    return fig
