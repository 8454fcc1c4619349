"""Reading and writing the files of nnU-Net datasets: cases, images, JSON; atomic writes.

One place for what every command that reads or writes a dataset does: list the cases of a
folder by file ending, read an image with SimpleITK (turning its ``RuntimeError`` into the
caller's error class), write an image on the grid of a reference or with a spacing, and
write JSON atomically. SimpleITK is imported inside the functions, so importing this module
stays cheap.

Every file the package writes in place goes through one writer, :func:`atomic_save`: the
content is written to a hidden temporary file in the destination's folder and renamed over
the destination, so a crash or Ctrl-C leaves the old file or the new one, never half a file
(:func:`atomic_write_bytes`, :func:`atomic_write_text` and :func:`write_json` use it). Whole
output folders are staged in :mod:`nnunet_pde.staging`.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nnunet_pde.errors import NnunetPdeError

__all__ = [
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "image_integrity_problem",
    "list_cases",
    "read_image",
    "read_image_header",
    "read_json",
    "sitk_message",
    "write_image",
    "write_json",
]

ErrorClass = Callable[[str], Exception]


def atomic_save(path: str | os.PathLike[str], save: Callable[[Path], None]) -> None:
    """Call ``save(tmp)`` for a temporary file next to ``path``, then move it into place.

    ``tmp`` is ``.<name>.<8 hex digits>.tmp`` in the folder of ``path`` (same file system,
    so the final ``os.replace`` is atomic); on any exception, Ctrl-C included, it is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a temporary file in the same folder.

    The text is written as it is (no newline translation: a CSV's ``\\r\\n`` stays).
    """
    atomic_write_bytes(path, text.encode("utf-8"))


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


#: Bytes read at a time when a gzip stream is checked.
_CHUNK = 1 << 20


def _nifti_data_end(header: bytes) -> int | None:
    """Offset of the end of the voxel data that a NIfTI-1/2 header announces, or None.

    None when ``header`` is not a NIfTI header this function knows (then only the gzip
    checks apply). NIfTI-1: ``sizeof_hdr`` 348, ``dim`` int16[8] at byte 40, ``bitpix`` int16
    at 72, ``vox_offset`` float32 at 108. NIfTI-2: ``sizeof_hdr`` 540, ``bitpix`` int16 at 14,
    ``dim`` int64[8] at 16, ``vox_offset`` int64 at 168. Either byte order.
    """
    for order in "<>":
        sizeof = struct.unpack(order + "i", header[:4])[0] if len(header) >= 4 else 0
        if len(header) >= 348 and sizeof == 348:
            dim = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and sizeof == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dim = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    ndim = dim[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8 or any(d < 0 for d in dim[1 : ndim + 1]):
        return None
    n = 1
    for d in dim[1 : ndim + 1]:
        n *= max(int(d), 1)
    # The voxels cannot start inside the header (a .hdr/.img pair may say vox_offset 0).
    return max(offset, sizeof) + n * bitpix // 8


def image_integrity_problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with the bytes of an image file, or None if nothing is found.

    For ``.gz`` files (``.nii.gz``, ``.nrrd.gz``...): the whole gzip stream is decompressed
    and its CRC-32 and length trailer checked (a cut file, a flipped bit). For NIfTI
    (``.nii``, ``.nii.gz``): the data must be as long as the header's dimensions and data
    type say. SimpleITK checks neither: it fills a cut file's missing voxels with zeros and
    decodes a corrupt deflate stream without complaint. Other formats are left to SimpleITK.
    Reads the file once, in chunks of 1 MiB (no second copy in memory).
    """
    path = Path(path)
    name = path.name.lower()
    is_nifti = name.endswith((".nii", ".nii.gz"))
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                header = fh.read(540)
                size = len(header)
                while chunk := fh.read(_CHUNK):
                    size += len(chunk)
        elif is_nifti:
            with open(path, "rb") as fh:
                header = fh.read(540)
            size = path.stat().st_size
        else:
            return None
    except gzip.BadGzipFile as exc:
        return f"damaged gzip data ({exc}): the file was changed or corrupted after writing"
    except EOFError:
        return "the gzip stream ends early: the file is cut off (an interrupted write or copy?)"
    except zlib.error as exc:
        return f"corrupt compressed data ({exc})"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if is_nifti:
        end = _nifti_data_end(header)
        if end is not None and size < end:
            return (
                f"the NIfTI header announces {end} bytes of header and voxels but the file "
                f"holds {size}: it is cut off (an interrupted write or copy?)"
            )
    return None


def read_image(path: str | os.PathLike[str], error: ErrorClass = NnunetPdeError) -> Any:
    """The SimpleITK image in ``path``; ``error("cannot read PATH: why")`` if it is unreadable.

    The file's bytes are checked first (:func:`image_integrity_problem`), so a cut or
    corrupted ``.nii.gz`` is an error, never an image with zeros where its data was lost.
    """
    import SimpleITK as sitk

    problem = image_integrity_problem(path)
    if problem is not None:
        raise error(f"cannot read {path}: {problem}; restore or re-create the file")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise error(f"cannot read {path}: {sitk_message(exc)}") from None


def read_image_header(path: str | os.PathLike[str], error: ErrorClass = NnunetPdeError) -> Any:
    """A SimpleITK ``ImageFileReader`` of ``path`` after ``ReadImageInformation`` (no voxels).

    Only the header is read, so the voxels' integrity is checked by :func:`read_image`.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        # Say why when the bytes are damaged (SimpleITK's own message would be "Unable to
        # determine ImageIO reader" for a corrupt header).
        why = image_integrity_problem(path) or sitk_message(exc)
        raise error(f"cannot read {path}: {why}") from None
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
