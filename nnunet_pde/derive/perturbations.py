"""Perturbations of ``derive shifted-images``: their specifications and how one image shifts."""

from __future__ import annotations

import copy
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.files import read_image

#: The severity levels that exist (level 0 = the clean images, never written).
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Levels written by default.
DEFAULT_LEVELS: tuple[int, ...] = (1, 2, 3)


#: how the marker file of an output folder names this command
MARKER_COMMAND = "derive shifted-images"


class ShiftError(NnunetPdeError):
    """The request cannot be carried out as given; the message says what to change."""


@dataclass(frozen=True)
class PerturbationSpec:
    """One perturbation and its five severity levels.

    Attributes
    ----------
    name
        Key in :data:`PERTURBATIONS` and output sub-folder name, e.g. ``"noise"``.
    covered_by_nnunet
        True if nnU-Net's default training augmentation (``nnUNetTrainer``) already applies
        this kind of perturbation, so a trained model has seen it (at training-range
        strengths, with some probability).
    nnunet_augmentation
        The nnU-Net (batchgeneratorsv2) transform that covers it, or None.
    torchio_transform
        The TorchIO random transform class that implements it.
    description
        One line: what it simulates and how the strength is measured.
    levels
        Five settings (levels 1..5, strength increasing), JSON-able dicts; ranges ``[a, b]``
        are sampled uniformly per image. Use :meth:`settings` for a copy.
    """

    name: str
    covered_by_nnunet: bool
    nnunet_augmentation: str | None
    torchio_transform: str
    description: str
    levels: tuple[dict[str, Any], ...] = field(repr=False)

    def settings(self, level: int) -> dict[str, Any]:
        """A copy of the settings of ``level`` (1..5)."""
        check_level(level)
        return copy.deepcopy(self.levels[level - 1])

    def summary(self, level: int) -> str:
        """The settings of ``level`` in one short line, for ``--list``."""
        return _SUMMARIES[self.name](self.settings(level))


def _r(a: float, b: float) -> list[float]:
    return [a, b]


PERTURBATIONS: dict[str, PerturbationSpec] = {
    "bias_field": PerturbationSpec(
        name="bias_field",
        covered_by_nnunet=False,
        nnunet_augmentation=None,
        torchio_transform="RandomBiasField",
        description="smooth multiplicative MR intensity inhomogeneity: exp of a polynomial of "
        "order 3 whose coefficients are drawn from U(-c, c)",
        levels=tuple({"coefficients": c, "order": 3} for c in (0.05, 0.1, 0.2, 0.3, 0.45)),
    ),
    "noise": PerturbationSpec(
        name="noise",
        covered_by_nnunet=True,
        nnunet_augmentation="GaussianNoiseTransform",
        torchio_transform="RandomNoise",
        description="additive Gaussian noise; std = fraction x s, s = std of the body "
        "intensities of the image",
        levels=tuple(
            {"std_fraction": _r(a, b)}
            for a, b in ((0.03, 0.05), (0.06, 0.1), (0.12, 0.18), (0.22, 0.3), (0.4, 0.5))
        ),
    ),
    "ghosting": PerturbationSpec(
        name="ghosting",
        covered_by_nnunet=False,
        nnunet_augmentation=None,
        torchio_transform="RandomGhosting",
        description="MR ghosts along an in-plane (phase-encode) axis: every n-th k-space "
        "plane attenuated by the intensity (0 = none, 1 = removed)",
        levels=tuple(
            {"intensity": _r(a, b), "num_ghosts": [4, 8], "axes": [0, 1]}
            for a, b in ((0.15, 0.25), (0.3, 0.4), (0.45, 0.55), (0.6, 0.75), (0.8, 1.0))
        ),
    ),
    "motion": PerturbationSpec(
        name="motion",
        covered_by_nnunet=False,
        nnunet_augmentation=None,
        torchio_transform="RandomMotion",
        description="MR rigid motion during the acquisition (k-space of moved copies "
        "combined); rotations U(-deg, deg) per axis, translations U(-mm, mm) per axis",
        levels=tuple(
            {"degrees": d, "translation_mm": t, "num_transforms": 2}
            for d, t in ((1.0, 1.0), (2.0, 2.0), (4.0, 4.0), (6.0, 6.0), (10.0, 10.0))
        ),
    ),
    "spike": PerturbationSpec(
        name="spike",
        covered_by_nnunet=False,
        nnunet_augmentation=None,
        torchio_transform="RandomSpike",
        description="MR herringbone artefact: a k-space spike of the given fraction of the "
        "k-space maximum (stripes of that fraction of the mean signal)",
        levels=tuple(
            {"intensity": _r(a, b), "num_spikes": 1}
            for a, b in ((0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.45), (0.45, 0.6))
        ),
    ),
    "blur": PerturbationSpec(
        name="blur",
        covered_by_nnunet=True,
        nnunet_augmentation="GaussianBlurTransform",
        torchio_transform="RandomBlur",
        description="Gaussian blur (wider point-spread function); kernel std in mm, drawn per axis",
        levels=tuple(
            {"std_mm": _r(a, b)}
            for a, b in ((0.5, 0.75), (0.75, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 3.0))
        ),
    ),
    "gamma": PerturbationSpec(
        name="gamma",
        covered_by_nnunet=True,
        nnunet_augmentation="GammaTransform / ContrastTransform",
        torchio_transform="RandomGamma",
        description="contrast change: the image mapped to [0, 1] by its min/max is raised to "
        "gamma = exp(+-|log gamma|) (sign random) and mapped back",
        levels=tuple(
            {"log_gamma_magnitude": _r(a, b)}
            for a, b in ((0.05, 0.15), (0.15, 0.25), (0.25, 0.4), (0.4, 0.55), (0.55, 0.75))
        ),
    ),
    "anisotropy": PerturbationSpec(
        name="anisotropy",
        covered_by_nnunet=True,
        nnunet_augmentation="SimulateLowResolutionTransform",
        torchio_transform="RandomAnisotropy",
        description="thicker slices: the slice axis (largest spacing) downsampled by the "
        "factor (nearest) and resampled back to the original grid (linear)",
        levels=tuple(
            {"downsampling": _r(a, b), "axis": "slice"}
            for a, b in ((1.5, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0), (5.0, 6.0))
        ),
    ),
}


def _fmt_range(r: Sequence[float], unit: str = "") -> str:
    return f"{r[0]:g}-{r[1]:g}{unit}"


_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "bias_field": lambda s: f"coefficients U(-{s['coefficients']:g}, {s['coefficients']:g})",
    "noise": lambda s: f"std {_fmt_range(s['std_fraction'])} x s",
    "ghosting": lambda s: (
        f"intensity {_fmt_range(s['intensity'])}, "
        f"every {s['num_ghosts'][0]}-{s['num_ghosts'][1]}th k-space plane"
    ),
    "motion": lambda s: f"rot +-{s['degrees']:g} deg, shift +-{s['translation_mm']:g} mm",
    "spike": lambda s: f"spike {_fmt_range(s['intensity'])} of k-space max",
    "blur": lambda s: f"std {_fmt_range(s['std_mm'], ' mm')}",
    "gamma": lambda s: (
        f"|log gamma| {_fmt_range(s['log_gamma_magnitude'])} (gamma "
        f"{_fmt_range([round(float(np.exp(v)), 2) for v in s['log_gamma_magnitude']])} "
        "or its inverse)"
    ),
    "anisotropy": lambda s: f"slice axis x{_fmt_range(s['downsampling'])}",
}


# ------------------------------------------------------------------ one image


@dataclass(frozen=True)
class ImageInfo:
    """What the perturbations need to know about one clean channel image."""

    minimum: float
    maximum: float
    scale: float
    background: np.ndarray | None  # (z, y, x) bool, or None: no zero background
    spacing_xyz: tuple[float, float, float]


def _zero_background(x: np.ndarray) -> np.ndarray | None:
    """Zero voxels connected to the border, if the image minimum is 0; else None."""
    from scipy.ndimage import binary_fill_holes

    if x.size == 0 or float(x.min()) != 0.0:
        return None
    background = ~binary_fill_holes(x != 0)
    return background if background.any() else None


def image_info(x: np.ndarray, affine: np.ndarray) -> ImageInfo:
    """Range, noise scale, zero background and spacing of one clean channel ``(z, y, x)``."""
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ShiftError("the image contains NaN or infinite values; it cannot be perturbed")
    background = _zero_background(x)
    body = x[~background] if background is not None else x.ravel()
    scale = float(np.std(body, dtype=np.float64)) if body.size else 0.0
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return ImageInfo(
        minimum=float(x.min()),
        maximum=float(x.max()),
        scale=scale,
        background=background,
        spacing_xyz=spacing,  # type: ignore[arg-type]
    )


def _slice_axis(spacing_xyz: Sequence[float]) -> int:
    """TorchIO axis (x=0, y=1, z=2) with the largest spacing; ties go to the last one."""
    largest = max(spacing_xyz)
    return max(i for i, s in enumerate(spacing_xyz) if np.isclose(s, largest, rtol=1e-3))


def _random_transform(
    name: str, settings: Mapping[str, Any], info: ImageInfo, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], float]:
    """The TorchIO random transform(s) of one image, as ``[{"name", "arguments"}]`` steps
    composed in order, and the intensity divisor ``d`` (TorchIO sees ``(x - min) / d``)."""
    s = settings

    def step(tio_name: str, **arguments: Any) -> dict[str, Any]:
        return {"name": tio_name, "arguments": arguments}

    if name == "bias_field":
        return [step("RandomBiasField", coefficients=s["coefficients"], order=s["order"])], 1.0
    if name == "noise":
        a, b = s["std_fraction"]
        return [step("RandomNoise", mean=0.0, std=[a * info.scale, b * info.scale])], 1.0
    if name == "ghosting":
        ghosting = step(
            "RandomGhosting",
            num_ghosts=list(s["num_ghosts"]),
            axes=list(s["axes"]),
            intensity=list(s["intensity"]),
        )
        return [ghosting], 1.0
    if name == "motion":
        motion = step(
            "RandomMotion",
            degrees=s["degrees"],
            translation=s["translation_mm"],
            num_transforms=s["num_transforms"],
            image_interpolation="linear",
        )
        return [motion], 1.0
    if name == "spike":
        n = s["num_spikes"]
        return [step("RandomSpike", num_spikes=[n, n], intensity=list(s["intensity"]))], 1.0
    if name == "blur":
        return [step("RandomBlur", std=list(s["std_mm"]))], 1.0
    if name == "gamma":
        a, b = s["log_gamma_magnitude"]
        log_gamma = [a, b] if rng.random() < 0.5 else [-b, -a]
        span = info.maximum - info.minimum
        return [step("RandomGamma", log_gamma=log_gamma)], span if span > 0 else 1.0
    if name == "anisotropy":
        # TorchIO's linear upsampling does not extrapolate: without padding, the slices
        # beyond the centres of the outermost thick slices (up to ~factor/2 at each end)
        # would become background. Edge-padding by the largest factor and cropping back
        # keeps them covered by the nearest thick slice, as in a real thick-slice scan.
        axis = _slice_axis(info.spacing_xyz)
        pad = [0] * 6
        pad[2 * axis] = pad[2 * axis + 1] = int(np.ceil(max(s["downsampling"])))
        steps = [
            step("Pad", padding=pad, padding_mode="edge"),
            step(
                "RandomAnisotropy",
                axes=[axis],
                downsampling=list(s["downsampling"]),
                image_interpolation="linear",
            ),
            step("Crop", cropping=pad),
        ]
        return steps, 1.0
    raise ShiftError(f"unknown perturbation {name!r}")  # pragma: no cover - checked before


def _tio_arguments(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """JSON arguments -> what the TorchIO constructor expects (tuples, float32 arrays)."""
    out = dict(args)
    if name.startswith("Random") or name in ("Pad", "Crop", "Blur"):
        out = {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}
    elif name == "Motion":
        for key in ("degrees", "translation", "times"):
            out[key] = np.asarray(out[key], dtype=np.float32)
    elif name == "Spike":
        out["spikes_positions"] = np.asarray(out["spikes_positions"], dtype=np.float32)
    elif name == "Resample":
        target = out["target"]
        if isinstance(target, list) and len(target) == 2 and isinstance(target[0], list):
            out["target"] = (tuple(int(v) for v in target[0]), np.asarray(target[1], np.float64))
        elif isinstance(target, list):
            out["target"] = tuple(float(v) for v in target)
    return out


def _compose(steps: Sequence[Mapping[str, Any]]) -> Any:
    """One TorchIO transform from ``[{"name", "arguments"}]`` steps."""
    import torchio as tio

    transforms = []
    for step in steps:
        cls = getattr(tio, step["name"], None)
        if cls is None:
            raise ShiftError(
                f"TorchIO has no transform {step['name']!r} (recorded with another version?)"
            )
        transforms.append(cls(**_tio_arguments(step["name"], step["arguments"])))
    return transforms[0] if len(transforms) == 1 else tio.Compose(transforms)


def _json_value(value: Any) -> Any:
    """TorchIO arguments -> JSON (arrays and tuples as lists, numpy scalars as Python)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot record TorchIO argument of type {type(value).__name__}: {value!r}")


def _history(subject: Any) -> list[dict[str, Any]]:
    """The deterministic transforms TorchIO applied, per-image dicts unwrapped, as JSON."""
    applied = []
    for name, arguments in subject.applied_transforms:
        args = {}
        for key, value in arguments.items():
            if isinstance(value, Mapping) and set(value) == {"image"}:
                value = value["image"]
            args[key] = _json_value(value)
        applied.append({"name": name, "arguments": args})
    return applied


def _subject(x: np.ndarray, affine: np.ndarray, offset: float, divisor: float) -> Any:
    import torch
    import torchio as tio

    mapped = ((x.astype(np.float64) - offset) / divisor).astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(mapped.transpose()))[None]  # (1, x, y, z)
    return tio.Subject(image=tio.ScalarImage(tensor=tensor, affine=affine))


def _result(
    subject: Any, x: np.ndarray, offset: float, divisor: float, background: np.ndarray | None
) -> np.ndarray:
    data = subject["image"].data
    if tuple(data.shape[1:]) != x.shape[::-1]:
        raise RuntimeError(  # pragma: no cover - TorchIO contract
            f"TorchIO changed the image grid from {x.shape[::-1]} to {tuple(data.shape[1:])}"
        )
    y = data[0].numpy().astype(np.float64).transpose() * divisor + offset
    if background is not None:
        y[background] = x[background]
    return y


def cast_to_dtype(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float result -> the source pixel type (rounded and clipped for integer types)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    return y.astype(dtype)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def image_rng(seed: int, case: str, channel: str, perturbation: str) -> np.random.Generator:
    """Generator of one (case, channel, perturbation), independent of the processing order.

    The levels share it on purpose (common random numbers): TorchIO then draws the same
    quantiles at every level, so level k+1 differs from level k only in strength (a stronger
    version of the same noise field, bias field, ghost axis, spike position, motion path)
    and the severity is monotone per image, not just on average.
    """
    sequence = np.random.SeedSequence([seed, _crc(case), _crc(channel), _crc(perturbation)])
    return np.random.default_rng(sequence)


def perturb_channel(
    x: np.ndarray,
    affine: np.ndarray,
    info: ImageInfo,
    perturbation: str,
    level: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply one perturbation level to one channel; the float result and its record.

    ``rng`` seeds torch for the TorchIO call and makes the choices TorchIO cannot (the sign
    of gamma's exponent).
    """
    import torch

    settings = PERTURBATIONS[perturbation].settings(level)
    torch_seed = int(rng.integers(0, 2**31 - 1))
    steps, divisor = _random_transform(perturbation, settings, info, rng)
    offset = info.minimum
    subject = _subject(x, affine, offset, divisor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        out = _compose(steps)(subject)
    y = _result(out, x, offset, divisor, info.background)
    record = {
        "perturbation": perturbation,
        "level": level,
        "settings": settings,
        "torch_seed": torch_seed,
        "image": {
            "shape_zyx": list(x.shape),
            "dtype": str(x.dtype),
            "affine_ras": affine.tolist(),
            "spacing_xyz": list(info.spacing_xyz),
            "minimum": info.minimum,
            "maximum": info.maximum,
            "scale": info.scale,
            "background_voxels": 0 if info.background is None else int(info.background.sum()),
        },
        "intensity_mapping": {"offset": offset, "divisor": divisor},
        "restore_background": info.background is not None,
        "random_transforms": steps,
        "applied": _history(out),
    }
    return y, record


def apply_recorded(
    image: str | os.PathLike[str] | np.ndarray,
    parameters_entry: Mapping[str, Any],
    *,
    cast: bool = False,
) -> np.ndarray:
    """Re-apply one recorded perturbation to a clean image, deterministically.

    Parameters
    ----------
    image
        The clean source image the entry was recorded for: a file path (read with
        SimpleITK), or its array in numpy order ``(z, y, x)`` (geometry taken from the
        entry's ``image.affine_ras``).
    parameters_entry
        One per-file entry of a ``parameters.json``:
        ``json.load(...)["cases"][case][channel]``.
    cast
        Return the source pixel type as written to disk (rounded and clipped for integer
        types) instead of the float result.

    Returns
    -------
    numpy.ndarray
        The perturbed image ``(z, y, x)``: float64 before the cast to the pixel type
        (``cast=False``), or exactly what :func:`derive_shifted_images` wrote (``cast=True``).

    Raises
    ------
    ShiftError
        The entry is malformed or does not belong to this image (shape or background).
    """

    try:
        recorded = parameters_entry["image"]
        mapping = parameters_entry["intensity_mapping"]
        applied = parameters_entry["applied"]
        restore = bool(parameters_entry["restore_background"])
        shape = tuple(int(v) for v in recorded["shape_zyx"])
        dtype = np.dtype(recorded["dtype"])
        affine = np.asarray(recorded["affine_ras"], dtype=np.float64)
        offset, divisor = float(mapping["offset"]), float(mapping["divisor"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ShiftError(
            f"not a parameters.json entry of one case and channel ({type(exc).__name__}: "
            f"{exc}); pass json.load(...)['cases'][CASE][CHANNEL]"
        ) from None
    if isinstance(image, np.ndarray):
        x = image
    else:
        x, affine, _ = read_image_array(Path(image))
    if x.shape != shape:
        raise ShiftError(f"image has shape {x.shape} (z, y, x); the entry was recorded for {shape}")
    background = _zero_background(x) if restore else None
    expected = int(recorded.get("background_voxels", 0))
    found = 0 if background is None else int(background.sum())
    if found != expected:
        raise ShiftError(
            f"image has {found} background voxels, the entry was recorded for {expected}: "
            "it is not the clean image these parameters belong to"
        )
    subject = _compose(applied)(_subject(x, affine, offset, divisor))
    y = _result(subject, x, offset, divisor, background)
    return cast_to_dtype(y, dtype) if cast else y


def read_image_array(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """Array ``(z, y, x)``, TorchIO's RAS affine (4 x 4, mm) and the SimpleITK image of a
    3-D scalar image file (read by :func:`nnunet_pde.files.read_image`); ShiftError if it
    is unreadable, damaged or not 3-D scalar."""
    import SimpleITK as sitk
    from torchio.data.io import get_ras_affine_from_sitk

    image = read_image(path, ShiftError)
    check_3d_scalar(image, path)
    return sitk.GetArrayFromImage(image), get_ras_affine_from_sitk(image), image


def check_3d_scalar(image: Any, path: Path) -> None:
    """``image``: a SimpleITK image or an ImageFileReader after ReadImageInformation."""
    components = (
        image.GetNumberOfComponents()
        if hasattr(image, "GetNumberOfComponents")
        else image.GetNumberOfComponentsPerPixel()
    )
    if image.GetDimension() != 3 or components != 1:
        raise ShiftError(
            f"{path}: only 3-D single-component images can be perturbed (got a "
            f"{image.GetDimension()}-D image with {components} component(s) per voxel)"
        )


def check_level(level: object) -> int:
    """``level`` as an int if it is one of :data:`LEVELS`; ShiftError otherwise."""
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or level not in LEVELS:
        raise ShiftError(
            f"severity levels are integers 1 to 5 (0 = the clean images); got {level!r}"
        )
    return int(level)
