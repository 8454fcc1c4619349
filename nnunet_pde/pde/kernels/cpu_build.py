"""Build, cache and load the C kernels of the ``c`` backend (``pde/csrc/``).

The sources are compiled once per machine with the system C compiler (``$CC``, else
``cc``/``gcc``/``clang``) into a cache folder (``$NNUNET_PDE_CACHE``, else
``$XDG_CACHE_HOME/nnunet_pde`` or ``~/.cache/nnunet_pde``), as ``aos-<key>.so`` keyed by the
sources, the flags, the compiler and the CPU (``-march=native`` code runs only on the same
kind).

A cached library is loaded only if it is intact: next to it ``aos-<key>.so.sha256`` holds
the SHA-256 of the file as it was written, and the file must match it. A file cut short (a
node that crashed after the rename, a shared cache copied half-way), another library under
the same name, or a cache from a version without checksums is rebuilt instead of being
mapped (a truncated shared library kills the process with SIGBUS when a missing page is
touched). The compiler gets ``$NNUNET_PDE_CC_TIMEOUT`` seconds (default 300); one that hangs
is a :class:`BuildError`, like one that fails, and the block then runs on the torch backend
with that reason (:func:`~nnunet_pde.pde.kernels.backend.choose`).

The ``ctypes`` argument types are read from the C prototypes of the exported functions
(:func:`prototypes`): the C side's argument lists are written only in the C sources.

Writes are atomic: the library and its checksum are each written to a temporary file in
the cache folder and renamed into place, so concurrent builders never see a partial file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = ("common.h", "aos.c", "aos_impl.h", "mlp.c", "mlp_impl.h", "norm.c", "norm_impl.h")
UNITS = ("aos.c", "mlp.c", "norm.c")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-Wno-psabi")
#: Seconds the compiler may take (environment variable).
TIMEOUT_ENV = "NNUNET_PDE_CC_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0


#: An exported C function: at the start of a line, not ``static``; ``CAT(name, SUF)`` is
#: instantiated once per scalar type (suffixes :data:`SUFFIXES`).
_PROTOTYPE = re.compile(
    r"^(int|long|void) (?:CAT\((\w+), SUF\)|(\w+))\(([^)]*)\)\s*\{", re.MULTILINE
)
SUFFIXES = ("_f32", "_f64")
_SCALARS = {"int": ctypes.c_int, "long": ctypes.c_long, "double": ctypes.c_double}


class BuildError(RuntimeError):
    """The C kernels cannot be built or loaded here; the message says why."""


def cache_dir() -> Path:
    """The folder of the compiled libraries."""
    root = os.environ.get("NNUNET_PDE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "nnunet_pde"


def _cpu_key() -> str:
    """The CPU model and flags (``-march=native`` code is only valid on the same kind)."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    parts.append(line.strip())
                if len(parts) >= 3:
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` found."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise BuildError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise BuildError(f"{TIMEOUT_ENV}={raw!r} must be positive")
    return value


def library_path(cc: str) -> Path:
    """Where the library built by ``cc`` from the current sources lives."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update(" ".join((cc, *FLAGS)).encode())
    digest.update(_cpu_key().encode())
    return cache_dir() / f"aos-{digest.hexdigest()[:16]}.so"


def _checksum_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def intact(target: Path) -> bool:
    """Whether ``target`` exists and matches the checksum written with it."""
    try:
        return _checksum_path(target).read_text().strip() == _sha256(target)
    except (OSError, UnicodeDecodeError):
        return False


def _compile(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cc, *FLAGS, "-o", tmp, *(str(SOURCE_DIR / u) for u in UNITS), "-lm"]
    limit = _timeout()
    try:
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise BuildError(
                f"{cc} did not finish within {limit:g} s (raise {TIMEOUT_ENV} for a slow "
                "machine, or set CC to a working compiler)"
            ) from None
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise BuildError(f"{' '.join(cmd)} failed: {msg[-1] if msg else proc.returncode}")
        digest = _sha256(Path(tmp))
        fd, tmp_sum = tempfile.mkstemp(suffix=".sha256", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
        # the library first, then its checksum: a crash in between leaves no valid pair
        os.replace(tmp, target)
        os.replace(tmp_sum, _checksum_path(target))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def prototypes() -> dict[str, tuple[object, list]]:
    """``name -> (restype, argtypes)`` of every function the C sources export, read from
    their prototypes (the one place the C side's argument lists are written): pointers are
    ``c_void_p``, ``int``/``long``/``double`` their ctypes types, ``void`` no value."""
    out: dict[str, tuple[object, list]] = {}
    for name in SOURCES:
        text = (SOURCE_DIR / name).read_text()
        for ret, templated, plain, params in _PROTOTYPE.findall(text):
            argtypes = []
            for param in params.split(","):
                words = param.replace("*", " * ").split()
                if words == ["void"]:
                    continue
                if "*" in words:
                    argtypes.append(ctypes.c_void_p)
                else:
                    argtypes.append(_SCALARS[words[-2]])
            restype = None if ret == "void" else _SCALARS[ret]
            names = [templated + s for s in SUFFIXES] if templated else [plain]
            for n in names:
                out[n] = (restype, argtypes)
    return out


def declare(lib: ctypes.CDLL) -> None:
    """Set the argument and result types of every exported function of ``lib``
    (:func:`prototypes`)."""
    for name, (restype, argtypes) in prototypes().items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype


def load(declare: Callable[[ctypes.CDLL], None] = declare) -> ctypes.CDLL:
    """The loaded kernels, built (or rebuilt, when the cached file is not intact) first;
    ``declare`` sets the functions' argument types. :class:`BuildError` says why not."""
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set $CC, or install gcc)")
    try:
        target = library_path(cc)
        for attempt in range(2):
            if not intact(target):
                _compile(cc, target)
            try:
                lib = ctypes.CDLL(str(target))
                declare(lib)
                return lib
            except (OSError, AttributeError) as exc:
                if attempt:
                    raise BuildError(f"{target} cannot be loaded after a rebuild: {exc}") from None
                # matched its checksum and still unusable: rebuild once
                _checksum_path(target).unlink(missing_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot build the C kernels in {cache_dir()}: {exc}") from None
    raise AssertionError("unreachable")
