"""Reading and writing the files of nnU-Net datasets: cases, images, JSON.

One place for what every command that reads or writes a dataset does: list the cases of a
folder by file ending, read an image with SimpleITK (turning its ``RuntimeError`` into the
caller's error class), write an image on the grid of a reference or with a spacing, and
write JSON atomically (through :func:`nnunet_pde.errors.atomic_write_text`). SimpleITK is
imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nnunet_pde.errors import NnunetPdeError, atomic_write_text

__all__ = [
    "list_cases",
    "read_image",
    "read_image_header",
    "read_json",
    "sitk_message",
    "write_image",
    "write_json",
]

ErrorClass = Callable[[str], Exception]


def list_cases(folder: str | os.PathLike[str], file_ending: str) -> dict[str, Path]:
    """Case id -> file for every ``<case><file_ending>`` file in ``folder``, sorted by name."""
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)
    }


def sitk_message(exc: BaseException) -> str:
    """The last line of a SimpleITK ``RuntimeError`` (the one that says what is wrong)."""
    return str(exc).strip().splitlines()[-1]


def read_image(path: str | os.PathLike[str], error: ErrorClass = NnunetPdeError) -> Any:
    """The SimpleITK image in ``path``; ``error("cannot read PATH: why")`` if it is unreadable."""
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise error(f"cannot read {path}: {sitk_message(exc)}") from None


def read_image_header(path: str | os.PathLike[str], error: ErrorClass = NnunetPdeError) -> Any:
    """A SimpleITK ``ImageFileReader`` of ``path`` after ``ReadImageInformation`` (no voxels)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise error(f"cannot read {path}: {sitk_message(exc)}") from None
    return reader


def write_image(
    array: Any,
    path: str | os.PathLike[str],
    reference: Any = None,
    spacing_zyx: Sequence[float] | None = None,
) -> None:
    """Write a numpy ``array`` (numpy axis order) as a compressed image file.

    The grid (origin, spacing, direction) is the SimpleITK image ``reference``'s, or else
    ``spacing_zyx`` (mm, numpy axis order) with origin 0 and the identity direction.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    if reference is not None:
        image.CopyInformation(reference)
    elif spacing_zyx is not None:
        image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))  # SimpleITK: (x, y, z)
        image.SetOrigin((0.0,) * image.GetDimension())
    sitk.WriteImage(image, str(path), useCompression=True)


def read_json(path: str | os.PathLike[str], error: ErrorClass = NnunetPdeError) -> Any:
    """The parsed JSON file ``path``; ``error("PATH is not valid JSON: why")`` if it is not."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None


def write_json(
    path: str | os.PathLike[str],
    content: Any,
    indent: int = 2,
    default: Callable[[Any], Any] | None = None,
    allow_nan: bool = True,
) -> None:
    """Write ``content`` as indented JSON plus a newline, atomically."""
    text = json.dumps(content, indent=indent, default=default, allow_nan=allow_nan)
    atomic_write_text(path, text + "\n")
