"""Scanner shift: test images under acquisition perturbations at graded severity levels.

``nnunet-pde derive shifted-images`` (:func:`derive_shifted_images`) reads the test images
(``imagesTs``) of an nnU-Net raw dataset and writes, for each perturbation and severity level,
a folder of perturbed copies with the same file names, geometry and pixel type::

    OUTPUT/nnunet_pde_shift.json                    manifest (MANIFEST)
    OUTPUT/<perturbation>/level<k>/CASE_XXXX.nii.gz every test case and channel
    OUTPUT/<perturbation>/level<k>/parameters.json  what was applied to each file

Each level folder is a valid ``nnUNetv2_predict -i`` input; the predictions are scored against
the unchanged test labels (the perturbations never move anatomy: the output grid is the input
grid). Level 0 is the clean ``imagesTs`` and is not written.

Perturbations (:data:`PERTURBATIONS`) are TorchIO 1.2 random transforms: bias field, noise,
ghosting, motion, spike, blur, gamma and anisotropy, each with five levels of increasing
strength (like ImageNet-C). Intensity strengths are relative to a per-image scale so that MR
(arbitrary units) and CT (HU) are treated alike; geometric strengths are in mm or degrees.
How one image is perturbed:

1. ``m`` = the image minimum; TorchIO sees ``(x - m) / d`` (``d`` = 1, except for gamma, where
   ``d`` = max - min maps the image to [0, 1]), so multiplicative and k-space perturbations act
   on the signal above the background level (air at -1024 HU in CT stays in place) and the
   result is mapped back with ``y * d + m``.
2. If the minimum is 0 (skull-stripped MR such as BraTS), the zero background (zero voxels
   connected to the image border: what nnU-Net's crop-to-nonzero and non-zero-mask
   normalisation use) is set back to 0 after the perturbation, so the noise, ghosts, blur,
   etc. stay inside the body and the non-zero mask nnU-Net derives is unchanged. Images
   without a zero background (CT, MR that was not skull-stripped) are perturbed everywhere,
   background included.
3. The scale ``s`` used by the noise levels is the standard deviation of the body voxels (the
   non-background voxels of 2., all voxels otherwise).
4. The result is cast back to the source pixel type: rounded and clipped for integer types.

Each (case, channel, perturbation) has its own random generator derived from the seed
(:class:`numpy.random.SeedSequence` of the seed and the CRC32 of the names), which seeds
torch's global generator around each TorchIO call: outputs do not depend on the processing
order, channels of a case (separate acquisitions) get independent parameters, and the same
seed gives identical files. The levels of one image share the generator (common random
numbers), so level k+1 is a stronger version of the same random draw (same noise field,
bias-field shape, ghost axis, spike position, motion path) and severity grows per image,
not only on average. The transforms TorchIO actually applied (its history,
``Subject.applied_transforms``) are written to ``parameters.json``, and :func:`apply_recorded`
re-applies them deterministically.

Arrays are in numpy axis order ``(z, y, x)`` as SimpleITK returns them; TorchIO tensors and
axis numbers in the TorchIO arguments are ``(x, y, z)``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_pde.errors import NnunetPdeError, check_replaceable, staged_folder
from nnunet_pde.files import read_json, write_image, write_json
from nnunet_pde.folders import find_raw_dataset

__all__ = [
    "DEFAULT_LEVELS",
    "LEVELS",
    "MANIFEST",
    "PARAMETERS_FILE",
    "PERTURBATIONS",
    "PerturbationSpec",
    "ShiftError",
    "apply_recorded",
    "derive_shifted_images",
    "level_folder",
    "read_manifest",
]

#: Manifest written at the top of the output folder.
MANIFEST = "nnunet_pde_shift.json"
#: Per-level record of what was applied to every file.
PARAMETERS_FILE = "parameters.json"
#: The severity levels that exist (level 0 = the clean images, never written).
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Levels written by default.
DEFAULT_LEVELS: tuple[int, ...] = (1, 2, 3)
FORMAT_VERSION = 1
KIND = "shifted-images"

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


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
        _check_level(level)
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
class _ImageInfo:
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


def _image_info(x: np.ndarray, affine: np.ndarray) -> _ImageInfo:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ShiftError("the image contains NaN or infinite values; it cannot be perturbed")
    background = _zero_background(x)
    body = x[~background] if background is not None else x.ravel()
    scale = float(np.std(body, dtype=np.float64)) if body.size else 0.0
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return _ImageInfo(
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
    name: str, settings: Mapping[str, Any], info: _ImageInfo, rng: np.random.Generator
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


def _cast(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float result -> the source pixel type (rounded and clipped for integer types)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    return y.astype(dtype)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _image_rng(seed: int, case: str, channel: str, perturbation: str) -> np.random.Generator:
    """Generator of one (case, channel, perturbation), independent of the processing order.

    The levels share it on purpose (common random numbers): TorchIO then draws the same
    quantiles at every level, so level k+1 differs from level k only in strength (a stronger
    version of the same noise field, bias field, ghost axis, spike position, motion path)
    and the severity is monotone per image, not just on average.
    """
    sequence = np.random.SeedSequence([seed, _crc(case), _crc(channel), _crc(perturbation)])
    return np.random.default_rng(sequence)


def _perturb(
    x: np.ndarray,
    affine: np.ndarray,
    info: _ImageInfo,
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
        x, affine = _read_image(Path(image))
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
    return _cast(y, dtype) if cast else y


# ------------------------------------------------------------------ files


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array ``(z, y, x)`` and TorchIO's RAS affine of a 3-D scalar image file."""
    import SimpleITK as sitk
    from torchio.data.io import get_ras_affine_from_sitk

    image = sitk.ReadImage(str(path))
    _check_3d_scalar(image, path)
    return sitk.GetArrayFromImage(image), get_ras_affine_from_sitk(image)


def _check_3d_scalar(image: Any, path: Path) -> None:
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


def _resolve_source(
    source: str | int | os.PathLike[str], raw_root: str | os.PathLike[str] | None
) -> Path:
    """The raw dataset folder of an id, a ``DatasetNNN_Name`` or a path (as ShiftError)."""
    root = raw_root if raw_root is not None else os.environ.get("nnUNet_raw") or None
    if root is not None and not Path(root).is_dir():
        raise ShiftError(f"nnUNet_raw folder {root} does not exist or is not a folder")
    try:
        return find_raw_dataset(source, root)
    except (FileNotFoundError, ValueError) as exc:
        raise ShiftError(str(exc)) from None


def _read_dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not path.is_file():
        raise ShiftError(f"{folder} has no dataset.json: not an nnU-Net raw dataset folder")
    content = read_json(path, ShiftError)
    ending = content.get("file_ending")
    channels = content.get("channel_names", content.get("modality"))
    if not isinstance(ending, str) or not ending.startswith("."):
        raise ShiftError(f"{path} has no valid 'file_ending' (e.g. '.nii.gz')")
    if not isinstance(channels, Mapping) or not channels:
        raise ShiftError(f"{path} has no 'channel_names' mapping")
    return content


def _list_cases(images: Path, file_ending: str, channels: Sequence[str]) -> dict[str, list[str]]:
    """Case id -> sorted channel suffixes ('0000', ...); every case must have every channel."""
    cases: dict[str, list[str]] = {}
    for path in sorted(images.iterdir()):
        if not path.is_file() or not path.name.endswith(file_ending):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(file_ending)])
        if match is None:
            raise ShiftError(
                f"{path.name} in {images} is not named CASE_XXXX{file_ending} (XXXX = the "
                "4-digit channel number)"
            )
        cases.setdefault(match["case"], []).append(match["channel"])
    if not cases:
        raise ShiftError(f"{images} has no *{file_ending} test images")
    expected = sorted(channels)
    for case, found in cases.items():
        if sorted(found) != expected:
            raise ShiftError(
                f"test case {case} has channel files {', '.join(sorted(found))}; dataset.json "
                f"declares {', '.join(expected)}"
            )
    return cases


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _check_output(output: Path, dataset: Path, overwrite: bool) -> None:
    out, src = output.resolve(), dataset.resolve()
    if _is_within(out, src):
        raise ShiftError(
            f"output {output} is inside the source dataset {dataset}; choose a folder outside it"
        )
    if _is_within(src, out):
        raise ShiftError(
            f"output {output} contains the source dataset {dataset}; choose another folder"
        )
    # --overwrite replaces only a folder this command wrote, and only if nothing was added
    # (e.g. the predictions/ of benchmark robustness scanner-shift)
    check_replaceable(output, overwrite, MARKER_COMMAND, flag="--output")


def _check_perturbations(perturbations: str | Iterable[str] | None) -> list[str]:
    if perturbations is None:
        return list(PERTURBATIONS)
    names = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    if not names:
        raise ShiftError("no perturbation given; pass names or 'all'")
    if "all" in names:
        return list(PERTURBATIONS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ShiftError(
            f"unknown perturbation(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(PERTURBATIONS)} or 'all'"
        )
    return list(dict.fromkeys(names))


def _check_level(level: object) -> int:
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or level not in LEVELS:
        raise ShiftError(
            f"severity levels are integers 1 to 5 (0 = the clean images); got {level!r}"
        )
    return int(level)


def _check_levels(levels: Iterable[int]) -> list[int]:
    values = [levels] if isinstance(levels, int) else list(levels)
    if not values:
        raise ShiftError("no severity level given; pass some of 1 2 3 4 5")
    return sorted({_check_level(v) for v in values})


def level_folder(output: str | os.PathLike[str], perturbation: str, level: int) -> Path:
    """``output/<perturbation>/level<k>``: the images of one perturbation level."""
    return Path(output) / perturbation / f"level{level}"


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a ``derive shifted-images`` output folder.

    Raises
    ------
    ShiftError
        ``folder/nnunet_pde_shift.json`` is missing, unreadable or not a shifted-images
        manifest.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShiftError(
            f"{folder} has no {MANIFEST}: not an output of `nnunet-pde derive shifted-images`"
        )
    content = read_json(path, ShiftError)
    if not isinstance(content, dict) or content.get("kind") != KIND:
        raise ShiftError(f"{path} is not a {KIND} manifest")
    return content


def _created_by() -> str:
    import torchio

    from nnunet_pde import __version__

    return f"nnunet-pde {__version__} derive shifted-images (torchio {torchio.__version__})"


def derive_shifted_images(
    source: str | int | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    perturbations: str | Iterable[str] | None = None,
    levels: Iterable[int] = DEFAULT_LEVELS,
    seed: int = 0,
    raw_root: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | bool | None = None,
    workers: int = 1,
) -> Path:
    """Write scanner-shifted copies of a raw dataset's test images; return ``output``.

    Parameters
    ----------
    source
        The raw dataset: an id (``501``, ``"501"``) or folder name
        (``"Dataset501_SyntheticBraTS"``) in ``raw_root`` / ``$nnUNet_raw``, or the path of
        the dataset folder. Its ``imagesTs`` and ``dataset.json`` (``file_ending``,
        ``channel_names``) are read, never written.
    output
        Folder to create (must not be inside the dataset). Layout: ``<perturbation>/
        level<k>/`` with every test image and ``parameters.json``, and :data:`MANIFEST`.
    perturbations
        Names from :data:`PERTURBATIONS`, ``"all"`` or None (= all).
    levels
        Severity levels from 1 to 5 (default 1, 2, 3).
    seed
        Integer >= 0; the same seed gives identical files.
    raw_root
        ``nnUNet_raw`` folder for an id or name (default ``$nnUNet_raw``).
    overwrite
        Replace ``output`` if it is a previous shifted-images folder (has :data:`MANIFEST`).
    progress
        None (silent), True (a tqdm bar on stderr) or a callable given one message per image
        (per case with ``workers`` > 1).
    workers
        Processes that perturb cases in parallel (1 = this process). The files do not depend
        on it.

    Raises
    ------
    ShiftError
        An argument, the dataset or the output folder is invalid (checked before anything
        is written).
    FileExistsError
        ``output`` exists and is not empty, and ``overwrite`` is false.
    """
    names = _check_perturbations(perturbations)
    level_list = _check_levels(levels)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ShiftError(f"seed must be an integer >= 0; got {seed!r}")
    seed = int(seed)
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ShiftError(f"workers must be an integer >= 1; got {workers!r}")
    workers = int(workers)
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise ShiftError(f"progress must be None, a bool or a callable; got {progress!r}")
    dataset = _resolve_source(source, raw_root)
    content = _read_dataset_json(dataset)
    file_ending: str = content["file_ending"]
    channels = content.get("channel_names", content.get("modality"))
    try:
        channel_keys = [f"{int(k):04d}" for k in channels]
    except (TypeError, ValueError):
        raise ShiftError(
            f"{dataset / 'dataset.json'}: channel_names keys must be channel numbers "
            f"('0', '1', ...); got {list(channels)}"
        ) from None
    images = dataset / "imagesTs"
    labels = dataset / "labelsTs"
    if not images.is_dir():
        raise ShiftError(f"{dataset} has no imagesTs folder: there are no test images to shift")
    cases = _list_cases(images, file_ending, channel_keys)
    import SimpleITK as sitk

    for case, found in cases.items():  # headers only: fail before writing anything
        for channel in found:
            path = images / f"{case}_{channel}{file_ending}"
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()
            except RuntimeError as exc:
                raise ShiftError(f"SimpleITK cannot read {path}: {exc}") from None
            _check_3d_scalar(reader, path)
    output = Path(output)
    _check_output(output, dataset, overwrite)

    n_total = sum(len(c) for c in cases.values()) * len(names) * len(level_list)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total, desc="shifting", unit="image", file=sys.stderr)
    report = progress if callable(progress) else None
    done = 0

    def advance(n: int, message: str) -> None:
        nonlocal done
        done += n
        if bar is not None:
            bar.update(n)
        if report is not None:
            report(f"[{done}/{n_total}] {message}")

    with contextlib.ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        tmp = stack.enter_context(staged_folder(output, command=MARKER_COMMAND))
        for name in names:
            for level in level_list:
                level_folder(tmp, name, level).mkdir(parents=True)
        jobs = [
            (images, case, found, file_ending, names, level_list, seed, tmp)
            for case, found in cases.items()
        ]
        per_case = _run_cases(jobs, workers, advance)
        records: dict[tuple[str, int], dict[str, Any]] = {
            (name, level): {case: per_case[case][name, level] for case in cases}
            for name in names
            for level in level_list
        }
        settings = {
            name: {
                "covered_by_nnunet": PERTURBATIONS[name].covered_by_nnunet,
                "nnunet_augmentation": PERTURBATIONS[name].nnunet_augmentation,
                "torchio_transform": PERTURBATIONS[name].torchio_transform,
                "description": PERTURBATIONS[name].description,
                "levels": {str(k): PERTURBATIONS[name].settings(k) for k in level_list},
            }
            for name in names
        }
        for (name, level), level_records in records.items():
            document = {
                "perturbation": name,
                "level": level,
                "settings": PERTURBATIONS[name].settings(level),
                "covered_by_nnunet": PERTURBATIONS[name].covered_by_nnunet,
                "seed": seed,
                "file_ending": file_ending,
                "cases": level_records,
            }
            write_json(level_folder(tmp, name, level) / PARAMETERS_FILE, document, indent=1)
        manifest = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "source": {
                "dataset": dataset.resolve().name,
                "images": str(images.resolve()),
                "labels": str(labels.resolve()) if labels.is_dir() else None,
                "file_ending": file_ending,
                "dataset_json": str((dataset / "dataset.json").resolve()),
            },
            "seed": seed,
            "levels": level_list,
            "cases": list(cases),
            "channels": channel_keys,
            "perturbations": settings,
            "folders": {n: {str(k): f"{n}/level{k}" for k in level_list} for n in names},
            "created_by": _created_by(),
        }
        write_json(tmp / MANIFEST, manifest, indent=1)
    return output


def _shift_case(
    images: Path,
    case: str,
    channels: Sequence[str],
    file_ending: str,
    names: Sequence[str],
    levels: Sequence[int],
    seed: int,
    folder: Path,
    advance: Callable[[int, str], None] | None = None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Perturb every channel of one case; write into ``folder``; the records per level."""
    import SimpleITK as sitk

    records: dict[tuple[str, int], dict[str, Any]] = {(n, k): {} for n in names for k in levels}
    for channel in channels:
        file_name = f"{case}_{channel}{file_ending}"
        reference = sitk.ReadImage(str(images / file_name))
        x, affine = sitk.GetArrayFromImage(reference), _ras_affine(reference)
        info = _image_info(x, affine)
        for name in names:
            for level in levels:
                rng = _image_rng(seed, case, channel, name)
                y, record = _perturb(x, affine, info, name, level, rng)
                target = level_folder(folder, name, level) / file_name
                write_image(_cast(y, x.dtype), target, reference=reference)
                records[name, level][channel] = {
                    "file": file_name,
                    "case": case,
                    "channel": channel,
                    **record,
                }
                if advance is not None:
                    advance(1, f"{name} level {level}: {file_name}")
    return records


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; no oversubscription


def _run_cases(
    jobs: list[tuple], workers: int, advance: Callable[[int, str], None]
) -> dict[str, dict[tuple[str, int], dict[str, Any]]]:
    """Run :func:`_shift_case` for every job, in this process or in ``workers`` processes."""
    results: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results[job[1]] = _shift_case(*job, advance=advance)
        return results
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # spawn, not fork: the parent may hold threads (torch, tqdm's monitor) that fork breaks.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=context, initializer=_worker_init
    ) as executor:
        futures = {executor.submit(_shift_case, *job): job for job in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                job = futures[future]
                results[job[1]] = future.result()
                advance(len(job[2]) * len(job[4]) * len(job[5]), f"case {job[1]}")
    return results


def _ras_affine(image: Any) -> np.ndarray:
    from torchio.data.io import get_ras_affine_from_sitk

    return get_ras_affine_from_sitk(image)
