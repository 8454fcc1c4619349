"""Environment set-up and diagnosis: where the trainers are, what nnU-Net needs exported.

nnU-Net (>= 2.8.0) finds trainers outside its own package through the environment
variable ``nnUNet_extTrainer`` (``os.pathsep``-separated folders). This module computes
the folder of our trainers for the current install (editable or wheel), the ``export``
lines a shell needs, lists the trainer classes, and checks an environment for what is
missing (``nnunet-pde doctor``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import os
import pkgutil
import shlex
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_pde.folders import split_paths

TRAINER_PACKAGE = "nnunet_pde.trainers"
NNUNET_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXT_TRAINER_VAR = "nnUNet_extTrainer"
NNUNET_REQUIREMENT = (">=2.8.1", "<2.9")


def trainer_dir() -> Path:
    """Folder holding the trainer modules, for the install that is importing this module.

    For a wheel install this is ``site-packages/nnunet_pde/trainers``; for an editable
    install (and a source checkout on ``sys.path``) it is the repository's ``trainers/``.
    """
    spec = importlib.util.find_spec(TRAINER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    # Source checkout used without installation: trainers/ sits beside nnunet_pde/.
    candidate = Path(__file__).resolve().parent.parent / "trainers"
    if candidate.is_dir():
        return candidate
    raise RuntimeError(
        "cannot locate the nnunet_pde trainers folder; reinstall with `pip install nnunet-pde` "
        "or `pip install -e .` from the repository"
    )


def _same_path(a: str, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def export_lines(
    environ: Mapping[str, str] | None = None, data_root: str | Path | None = None
) -> list[str]:
    """Shell lines that make nnU-Net find our trainers (and its data folders).

    Parameters
    ----------
    environ:
        The environment to complete (default: ``os.environ``).
    data_root:
        Where ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` go when they
        are unset (default: ``./nnUNet_data`` in the current directory). Variables that are
        already set are left alone.

    Returns
    -------
    list of str
        ``export`` statements and ``#`` comments, safe to ``eval`` in bash/zsh.
    """
    env = os.environ if environ is None else environ
    tdir = str(trainer_dir())
    lines = [f"# nnunet-pde: trainers live in {tdir}"]
    existing = split_paths(env.get(EXT_TRAINER_VAR))
    if any(_same_path(p, tdir) for p in existing):
        lines.append(f"# {EXT_TRAINER_VAR} already contains it")
    else:
        # Keep the user's other trainer folders; ours go first.
        value = os.pathsep.join([tdir, *existing])
        lines.append(f"export {EXT_TRAINER_VAR}={shlex.quote(value)}")
    root = Path(data_root) if data_root is not None else Path.cwd() / "nnUNet_data"
    for var in NNUNET_PATH_VARS:
        if env.get(var):
            lines.append(f"# {var} already set to {env[var]}")
        else:
            lines.append(f"export {var}={shlex.quote(str(root.resolve() / var))}")
    return lines


def trainer_modules() -> list[str]:
    """Names of the modules in the trainers folder (without the package prefix)."""
    return sorted(
        name for _, name, ispkg in pkgutil.iter_modules([str(trainer_dir())]) if not ispkg
    )


def list_trainers() -> dict[str, type]:
    """Every nnU-Net trainer class defined in our trainers folder, by class name.

    Imports ``nnunetv2``; raises ImportError if it is not installed.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found: dict[str, type] = {}
    for mod_name in trainer_modules():
        module = importlib.import_module(f"{TRAINER_PACKAGE}.{mod_name}")
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, nnUNetTrainer)
                and obj.__module__ == module.__name__
            ):
                found[name] = obj
    return dict(sorted(found.items()))


def find_trainer(name: str) -> type:
    """Our trainer class called ``name``; ValueError listing the known names otherwise."""
    trainers = list_trainers()
    if name not in trainers:
        raise ValueError(
            f"unknown trainer '{name}'. nnunet-pde trainers: {', '.join(trainers)} "
            "(see `nnunet-pde list-trainers` and docs/trainers.md)"
        )
    return trainers[name]


def project_trainer_base(cls: type) -> type | None:
    """The nearest of our trainers that ``cls`` derives from (``cls`` itself if it is one),
    ``None`` if it derives from none.

    A class counts as ours by identity, or by name and module file name: a trainer module
    that nnU-Net's finder imported by its bare name (``nnUNetTrainerPDE3D``) from our folder
    defines classes equal to, but not identical with, ``nnunet_pde.trainers.*``'s.
    """
    ours = list_trainers()
    for base in inspect.getmro(cls):
        mine = ours.get(base.__name__)
        if mine is not None and (
            base is mine or base.__module__.rsplit(".", 1)[-1] == mine.__module__.rsplit(".", 1)[-1]
        ):
            return mine
    return None


def resolve_trainer(name: str) -> type:
    """The trainer class called ``name`` as a checkpoint names it: one of ours, or a class
    that nnU-Net's own finder resolves (``nnunetv2.training.nnUNetTrainer``, then the
    ``nnUNet_extTrainer`` folders, as ``nnUNetv2_train -tr`` does) and that subclasses one
    of ours (a user's variant in another folder).

    Raises
    ------
    ValueError
        If nnU-Net cannot resolve ``name``, or it resolves to a class that is not ours nor
        derived from ours; the message says which.
    """
    trainers = list_trainers()
    if name in trainers:
        return trainers[name]
    found, problems = find_trainer_with_nnunet([name])
    cls = found.get(name)
    if cls is None:
        ext = os.environ.get(EXT_TRAINER_VAR) or "(not set)"
        raise ValueError(
            f"unknown trainer '{name}': not an nnunet-pde trainer, and nnU-Net's finder cannot "
            f"resolve it ({problems.get(name, 'not found')}); {EXT_TRAINER_VAR}={ext}. Add the "
            f"folder that defines it to {EXT_TRAINER_VAR}, as for nnUNetv2_train "
            "(nnunet-pde trainers: nnunet-pde list-trainers)"
        )
    if project_trainer_base(cls) is None:
        raise ValueError(
            f"trainer '{name}' ({cls.__module__}) is neither an nnunet-pde trainer nor a "
            "subclass of one (see nnunet-pde list-trainers)"
        )
    return cls


# --------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of ``nnunet-pde doctor``: status is "ok", "warn" or "fail"."""

    status: str
    what: str
    fix: str = ""


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("+")[0].split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def diagnose(environ: Mapping[str, str] | None = None) -> list[Check]:
    """Check the environment for what nnunet-pde needs; never raises."""
    env = os.environ if environ is None else environ
    # pip refuses to install on Python < 3.10 (requires-python), so this only reports.
    checks = [Check("ok", f"Python {sys.version.split()[0]} ({sys.executable})")]
    nn_version, check = _check_nnunetv2()
    checks.append(check)
    checks.append(_check_torch())
    checks.extend(_check_pde_backends())
    try:
        tdir = trainer_dir()
        checks.append(Check("ok", f"trainers folder {tdir}"))
    except RuntimeError as exc:
        checks.append(Check("fail", str(exc)))
        return checks
    checks.extend(_check_ext_trainer(env, tdir))
    checks.extend(_check_data_folders(env))
    if nn_version is not None:
        checks.extend(_check_trainer_resolution(env, tdir))
    return checks


def _check_nnunetv2() -> tuple[str | None, Check]:
    """The installed nnunetv2 version (None if missing) and whether it is a tested one."""
    try:
        nn_version = importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        return None, Check(
            "fail", "nnunetv2 is not installed", "pip install 'nnunetv2>=2.8.1,<2.9'"
        )
    if (2, 8, 1) <= _version_tuple(nn_version) < (2, 9):
        return nn_version, Check("ok", f"nnunetv2 {nn_version}")
    return nn_version, Check(
        "fail",
        f"nnunetv2 {nn_version} is installed; nnunet-pde is tested with >=2.8.1,<2.9",
        "pip install 'nnunetv2>=2.8.1,<2.9'",
    )


def _check_torch() -> Check:
    try:
        import torch

        cuda = torch.cuda.is_available()
        dev = (
            f"CUDA: {torch.cuda.get_device_name(0)}"
            if cuda
            else "no CUDA device (train with -device cpu)"
        )
        return Check("ok", f"torch {torch.__version__}, {dev}")
    except Exception as exc:  # noqa: BLE001 - report any import failure
        return Check("fail", f"torch cannot be imported: {exc}", "reinstall torch")


def _check_pde_backends() -> list[Check]:
    """Which kernel backend the PDE block uses on the CPU and, if present, on CUDA, and why
    (``NNUNET_PDE_BACKEND`` forcing one that cannot run is a failure)."""
    try:
        import torch

        from nnunet_pde.pde.kernels import backend
    except Exception as exc:  # noqa: BLE001 - report any import failure
        return [Check("fail", f"PDE kernels cannot be imported: {exc}", "reinstall nnunet-pde")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    checks = []
    for device in devices:
        choice = backend.describe(device)
        if choice.name == "error":
            checks.append(Check("fail", f"PDE kernels: {choice.reason}", f"unset {backend.ENV}"))
        elif choice.name == "torch" and device == "cuda":
            fix = "pip install triton (ships with the CUDA builds of torch)"
            checks.append(Check("warn", f"PDE kernels: {choice.reason}", fix))
        else:
            checks.append(Check("ok", f"PDE kernels: {choice.reason}"))
    return checks


def _check_ext_trainer(env: Mapping[str, str], tdir: Path) -> list[Check]:
    """Whether nnUNet_extTrainer lists this install's trainers folder (and only folders)."""
    checks: list[Check] = []
    ext = split_paths(env.get(EXT_TRAINER_VAR))
    missing_dirs = [p for p in ext if not os.path.isdir(p)]
    if any(_same_path(p, tdir) for p in ext):
        checks.append(Check("ok", f"{EXT_TRAINER_VAR} contains the trainers folder"))
    elif ext:
        checks.append(
            Check(
                "fail",
                f"{EXT_TRAINER_VAR}={env.get(EXT_TRAINER_VAR)} does not contain {tdir}"
                " (a stale path from another install?)",
                'eval "$(nnunet-pde env)"',
            )
        )
    else:
        checks.append(
            Check(
                "fail",
                f"{EXT_TRAINER_VAR} is not set: nnUNetv2_train/-predict cannot find "
                "nnunet-pde trainers",
                'eval "$(nnunet-pde env)"',
            )
        )
    for p in missing_dirs:
        checks.append(Check("warn", f"{EXT_TRAINER_VAR} lists a folder that does not exist: {p}"))
    return checks


def _check_data_folders(env: Mapping[str, str]) -> list[Check]:
    """nnUNet_raw / _preprocessed / _results: set, folders, writable."""
    checks: list[Check] = []
    for var in NNUNET_PATH_VARS:
        value = env.get(var)
        if not value:
            checks.append(Check("warn", f"{var} is not set", 'eval "$(nnunet-pde env)"'))
        elif os.path.exists(value) and not os.path.isdir(value):
            checks.append(
                Check(
                    "fail",
                    f"{var}={value} is not a folder (it is a file)",
                    f'point {var} at a folder, e.g. eval "$(nnunet-pde env)" after unset {var}',
                )
            )
        elif not os.path.isdir(value):
            checks.append(
                Check("warn", f"{var}={value} does not exist yet", f"mkdir -p {shlex.quote(value)}")
            )
        elif not os.access(value, os.W_OK):
            checks.append(
                Check("fail", f"{var}={value} is not writable", "choose a writable folder")
            )
        else:
            checks.append(Check("ok", f"{var}={value}"))
    return checks


@contextlib.contextmanager
def _quiet_trainer_scan() -> Iterator[None]:
    """nnU-Net's finder prints every module it inspects, and importing its trainer folder
    imports timm, whose ``torch.jit.interface`` FutureWarning says nothing about our setup."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.interface", category=FutureWarning
        )
        yield


def find_trainer_with_nnunet(
    names: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[dict[str, type], dict[str, str]]:
    """Resolve trainer names with nnU-Net's own finder, as ``nnUNetv2_train -tr`` does.

    ``nnUNet_extTrainer`` is taken from ``environ`` (default ``os.environ``) for the search.

    Returns
    -------
    (found, problems)
        Trainer classes by name, and for the names that did not resolve why not.
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    env = os.environ if environ is None else environ
    saved = os.environ.get(EXT_TRAINER_VAR)
    os.environ[EXT_TRAINER_VAR] = env.get(EXT_TRAINER_VAR) or ""
    found: dict[str, type] = {}
    problems: dict[str, str] = {}
    try:
        for name in names:
            try:
                with _quiet_trainer_scan():
                    cls = recursive_find_trainer_class_by_name(name)
            except Exception as exc:  # noqa: BLE001 - nnU-Net raises RuntimeError/AssertionError
                problems[name] = " ".join(str(exc).split())[:200] or type(exc).__name__
                continue
            if cls is None:
                problems[name] = "not found"
            else:
                found[name] = cls
    finally:
        if saved is None:
            os.environ.pop(EXT_TRAINER_VAR, None)
        else:
            os.environ[EXT_TRAINER_VAR] = saved
    return found, problems


def _check_trainer_resolution(env: Mapping[str, str], tdir: Path) -> list[Check]:
    """Resolve every trainer with nnU-Net's own finder, as nnUNetv2_train would."""
    try:
        names = list(list_trainers())
    except Exception as exc:  # noqa: BLE001 - a broken trainer module must be reported
        return [Check("fail", f"importing the trainer modules failed: {exc!r}")]
    unresolved = list(find_trainer_with_nnunet(names, env)[1])
    if unresolved:
        return [
            Check(
                "fail",
                f"nnU-Net's finder cannot resolve {len(unresolved)} of {len(names)} trainers "
                f"(e.g. {unresolved[0]})",
                'eval "$(nnunet-pde env)"',
            )
        ]
    return [Check("ok", f"nnU-Net resolves all {len(names)} nnunet-pde trainers by name")]
