"""The direction of imports inside ``nnunet_pde`` (docs/development.md), read from the AST.

Layers, highest first; a module may import its own layer and the layers below, never above:

    3  cli
    2  benchmark, derive, inspect_checkpoint              (the commands' work)
    1  metrics, training, network, losses, checkpoints,   (models, metrics, set-up)
       env, baselines, data
    0  pde, files, folders, commands, errors, locks,     (foundations)
       nnunet_pde

Besides: ``nnunet_pde/pde/`` imports no nnunetv2 and nothing of nnunet_pde outside ``pde``;
no module under ``nnunet_pde/`` imports ``nnunet_pde.trainers`` (the trainers import the
library, not the other way round). A ``__main__.py`` (``python -m`` entry point) counts as
``cli``. Imports inside functions count as well.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from plan_fixtures import REPO

PACKAGE = REPO / "nnunet_pde"

LAYERS: dict[str, int] = {
    "cli": 3,
    "benchmark": 2,
    "derive": 2,
    "inspect_checkpoint": 2,
    "metrics": 1,
    "training": 1,
    "network": 1,
    "losses": 1,
    "checkpoints": 1,
    "env": 1,
    "baselines": 1,
    "data": 1,
    "pde": 0,
    "files": 0,
    "folders": 0,
    "commands": 0,
    "errors": 0,
    "locks": 0,
    "": 0,  # nnunet_pde/__init__.py (``from nnunet_pde import __version__``)
}


def _module_name(path: Path, repo: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, repo: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path, repo)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from nnunet_pde import pde`` imports the sub-package nnunet_pde.pde
            if target == "nnunet_pde":
                found += [(node.lineno, f"nnunet_pde.{a.name}") for a in node.names]
    return found


def _component(module: str) -> str | None:
    """The layer key of an ``nnunet_pde`` module (``nnunet_pde.benchmark.run`` -> ``benchmark``)."""
    parts = module.split(".")
    if parts[0] != "nnunet_pde":
        return None
    if len(parts) == 1:
        return ""
    return parts[1] if parts[1] in LAYERS or parts[1] == "trainers" else ""


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import under ``root`` that breaks the rules, as ``file:line: why``."""
    out = []
    repo = root.parent
    for path in sorted(root.rglob("*.py")):
        # ``python -m`` entry points (``__main__.py``) belong to the command line
        own = "cli" if path.name == "__main__.py" else _component(_module_name(path, repo))
        if own is None or own not in LAYERS:
            out.append(f"{path.relative_to(repo)}: module in no layer (add it to LAYERS)")
            continue
        for line, target in _imports(path, repo):
            at = f"{path.relative_to(repo)}:{line}"
            if own == "pde" and (target == "nnunetv2" or target.startswith("nnunetv2.")):
                out.append(f"{at}: the PDE layer imports {target}")
            dep = _component(target)
            if dep is None:
                continue
            if dep == "trainers":
                out.append(f"{at}: imports {target} (the trainers import the library)")
            elif own == "pde" and dep != "pde":
                out.append(f"{at}: the PDE layer imports {target} (only nnunet_pde.pde.*)")
            elif LAYERS[dep] > LAYERS[own]:
                out.append(
                    f"{at}: {own or 'nnunet_pde'} (layer {LAYERS[own]}) imports {target} "
                    f"(layer {LAYERS[dep]})"
                )
    return out


def test_imports_follow_the_layers() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("where", "line", "why"),
    [
        ("metrics/planted.py", "from nnunet_pde.benchmark.run import run_benchmark", "layer 2"),
        ("pde/planted.py", "from nnunet_pde.errors import NnunetPdeError", "PDE layer"),
        ("pde/planted.py", "import nnunetv2.paths", "PDE layer imports nnunetv2"),
        ("folders.py", "def f():\n    from nnunet_pde.cli import main\n", "layer 3"),
        ("env.py", "from nnunet_pde.trainers import nnUNetTrainerPDE3D", "the trainers"),
        ("derive/planted.py", "from ..cli import main", "layer 3"),
    ],
)
def test_a_planted_violation_is_found(tmp_path: Path, where: str, line: str, why: str) -> None:
    """The checker itself: a copy of the package with one bad import fails."""
    copy = tmp_path / "nnunet_pde"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "csrc"))
    target = copy / where
    target.write_text((target.read_text() if target.exists() else "") + "\n" + line + "\n")
    found = violations(copy)
    assert found and all(where in v for v in found), found
    assert any(why in v for v in found), found
