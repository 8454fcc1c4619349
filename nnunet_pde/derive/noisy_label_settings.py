"""The settings of ``derive noisy-labels``: checked, named, and written back as a command line.

:func:`validate_parameters` checks every argument of
:func:`nnunet_pde.derive.noisy_labels.derive_noisy_labels` before anything is read or
written (one ``error: --flag: ...`` per bad value); :func:`default_name` names the new
dataset after its source and corruption; :func:`command_line` is the command that writes
the same dataset again (recorded in its ``nnunet_pde_derived.json``).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from nnunet_pde.derive.label_noise import MODES
from nnunet_pde.errors import NnunetPdeError
from nnunet_pde.formats import NOISY_LABELS_KIND as KIND

__all__ = ["NAME_PATTERN", "command_line", "default_name", "validate_parameters"]

#: What a derived dataset's name (``DatasetNNN_<name>``) may be made of.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _format_mm(value: float) -> str:
    text = f"{value:g}"
    return text.replace(".", "p").replace("-", "m").replace("+", "")


def default_name(source_name: str, mode: str, magnitude_mm: float) -> str:
    """``<source>Noisy<Mode><magnitude>mm``, filename-safe, e.g. ``SyntheticBraTSNoisyErode2mm``."""
    camel = "".join(part.capitalize() for part in mode.split("-"))
    name = f"{source_name}Noisy{camel}{_format_mm(magnitude_mm)}mm"
    return re.sub(r"[^A-Za-z0-9_-]", "", name)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _positive(name: str, value: object, unit: str = " mm") -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise NnunetPdeError(f"must be a finite number; got {value!r}", name)
    if value <= 0:
        raise NnunetPdeError(f"must be > 0{unit}; got {value!r}", name)
    return float(value)


def validate_parameters(
    dataset_id, mode, magnitude_mm, fraction, seed, name, smoothness_mm, blobs, progress
) -> tuple[int, str, float, float, int, float, int]:
    """The checked ``(dataset_id, mode, magnitude_mm, fraction, seed, smoothness_mm, blobs)``;
    NnunetPdeError naming the option of the first bad value."""
    if not _is_int(dataset_id) or not 1 <= dataset_id <= 999:
        raise NnunetPdeError(
            f"the dataset id must be an integer from 1 to 999 (nnU-Net uses 3 digits); "
            f"got {dataset_id!r}",
            "--id",
        )
    if mode not in MODES:
        raise NnunetPdeError(f"must be one of {', '.join(MODES)}; got {mode!r}", "--mode")
    if isinstance(magnitude_mm, Real) and not isinstance(magnitude_mm, bool) and magnitude_mm == 0:
        raise NnunetPdeError(
            "--magnitude must be > 0 mm: a 0 mm corruption is the source dataset itself (use it as "
            "the clean baseline)"
        )
    magnitude_mm = _positive("--magnitude", magnitude_mm)
    if (
        not isinstance(fraction, Real)
        or isinstance(fraction, bool)
        or math.isnan(fraction)
        or not 0 < fraction <= 1
    ):
        raise NnunetPdeError(
            f"must be in (0, 1] (the share of training cases to corrupt); got {fraction!r}",
            "--fraction",
        )
    if not _is_int(seed) or seed < 0:
        raise NnunetPdeError(f"must be an integer >= 0; got {seed!r}", "--seed")
    if name is not None and (not isinstance(name, str) or not NAME_PATTERN.match(name)):
        raise NnunetPdeError(
            f"must be letters, digits, '_' or '-' (starting with a letter or digit); got {name!r}",
            "--name",
        )
    smoothness_mm = _positive("--smoothness", smoothness_mm)
    if not _is_int(blobs) or blobs < 1:
        raise NnunetPdeError(f"must be an integer >= 1; got {blobs!r}", "--blobs")
    if progress is not None and not callable(progress):
        raise NnunetPdeError(f"progress must be callable or None; got {progress!r}")
    return (
        int(dataset_id),
        str(mode),
        magnitude_mm,
        float(fraction),
        int(seed),
        smoothness_mm,
        int(blobs),
    )


def command_line(source: object, settings: Mapping[str, Any]) -> str:
    """The ``nnunet-pde derive noisy-labels`` command that writes this dataset again."""
    parts = [
        "nnunet-pde",
        "derive",
        KIND,
        str(source),
        "--id",
        str(settings["dataset_id"]),
        "--name",
        settings["name"],
        "--mode",
        settings["mode"],
        "--magnitude",
        f"{settings['magnitude_mm']:g}",
        "--fraction",
        f"{settings['fraction']:g}",
        "--seed",
        str(settings["seed"]),
    ]
    if settings["labels_given"]:
        parts += ["--labels", *settings["labels"]]
    if settings["mode"] == "jitter":
        parts += ["--smoothness", f"{settings['smoothness_mm']:g}"]
    if settings["mode"] == "add-blobs":
        parts += ["--blobs", str(settings["blobs"])]
    return shlex.join(parts)
