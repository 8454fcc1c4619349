"""The direction of imports inside ``nnunet_pde`` (docs/development.md), read from the AST.

Three rules, each checked over every module, imports inside functions included:

1. **Directed arrows between components** (a component is a top-level module or sub-package
   of ``nnunet_pde``). :data:`ALLOWED` lists, for every component, the components it may
   import; anything else is a violation, also within a layer (``derive`` must not import
   ``benchmark``) and downwards where the design says no (``metrics`` must not import ``pde``,
   ``benchmark`` must not import ``derive`` or ``training``). :data:`LAYERS` numbers the
   components as ``architecture.md`` draws them, and a test checks that every allowed arrow
   points to the same layer or a lower one and that the arrows form no cycle:

       3  cli
       2  benchmark, derive, block_report                    (the commands' work)
       1  metrics, training, network, losses, checkpoints,   (models, metrics, set-up)
          env, baselines, data
       0  pde, files, staging, folders, commands,          (foundations)
          executors, slurm, errors, locks, formats,
          _version, nnunet_pde (the package root)

   Besides: ``nnunet_pde/pde/`` imports no nnunetv2; no module imports
   ``nnunet_pde.trainers`` (the trainers import the library, not the other way round). A
   ``__main__.py`` belongs to its package like any module (``python -m nnunet_pde.cli`` is
   the one command-line entry point; a ``benchmark/__main__.py`` importing ``cli`` would be
   an arrow up).
2. **No import cycle between modules** (a module's imports are the modules its import
   statements name, ``from package import submodule`` resolved to the submodule).
3. **No private name across modules**: no ``from nnunet_pde.x import _name`` (a leading
   underscore, not a dunder) and no ``module._name`` on an imported ``nnunet_pde`` module.
   A module named with a leading underscore (``nnunet_pde._version``) may be imported.

Each rule is proven by a planted violation in a copy of the package (the last tests).
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from plan_fixtures import REPO

PACKAGE = REPO / "nnunet_pde"

LAYERS: dict[str, int] = {
    "cli": 3,
    "benchmark": 2,
    "derive": 2,
    "block_report": 2,
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
    "staging": 0,
    "folders": 0,
    "commands": 0,
    "executors": 0,
    "slurm": 0,
    "errors": 0,
    "locks": 0,
    "formats": 0,
    "_version": 0,
    "": 0,  # nnunet_pde/__init__.py: the version and the PDE API on first access
}

#: The foundations every component above layer 0 may use (all of layer 0 except ``pde``
#: and the package root, which re-exports the PDE API).
FOUNDATIONS = frozenset(
    {
        "_version",
        "errors",
        "files",
        "staging",
        "folders",
        "formats",
        "commands",
        "executors",
        "slurm",
        "locks",
    }
)

#: component -> the other components it may import (its own modules it always may).
ALLOWED: dict[str, frozenset[str]] = {
    # layer 0
    "": frozenset({"pde", "_version"}),
    "_version": frozenset(),
    "errors": frozenset(),
    "files": frozenset({"errors"}),
    "staging": frozenset({"errors"}),
    "folders": frozenset({"errors"}),
    "commands": frozenset({"errors", "files", "folders", "executors", "slurm"}),
    "executors": frozenset({"errors"}),
    "slurm": frozenset({"errors", "executors"}),
    "locks": frozenset({"errors"}),
    "formats": frozenset({"errors", "files", "folders"}),
    "pde": frozenset(),
    # layer 1
    "metrics": FOUNDATIONS,  # pure numpy/scipy: no pde
    "network": FOUNDATIONS | {"pde"},
    "losses": FOUNDATIONS | {"pde"},
    "training": FOUNDATIONS | {"pde", "network", "losses"},
    "checkpoints": FOUNDATIONS | {"pde", "network"},
    "env": FOUNDATIONS | {"pde"},
    "baselines": FOUNDATIONS | {"network", "losses", "training"},
    "data": FOUNDATIONS,
    # layer 2: benchmark reads what derive and the trainers write through ``formats``
    "benchmark": FOUNDATIONS | {"metrics", "env"},
    "derive": FOUNDATIONS,
    "block_report": FOUNDATIONS | {"pde", "network", "training", "checkpoints", "env"},
    # layer 3
    "cli": frozenset(LAYERS) - {"cli", ""},
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as the checks see it."""

    line: int
    module: str  # absolute module (``nnunet_pde.x.y``); a submodule if one was imported
    names: tuple[str, ...] = ()  # the names of ``from module import ...`` (not submodules)


def _module_name(path: Path, repo: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(module: str, repo: Path) -> bool:
    """Whether ``module`` (``nnunet_pde.a.b``) is a module or package under ``repo``."""
    path = repo.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, repo: Path) -> tuple[list[Import], list[tuple[int, str, str]]]:
    """Every import of ``path`` (relative ones resolved), and every ``alias._name`` use.

    The second list holds (line, module, name) for attribute accesses ``alias._name`` where
    ``alias`` is bound to an ``nnunet_pde`` module by an import of this file.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path, repo)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    aliases: dict[str, str] = {}  # local name -> nnunet_pde module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.append(Import(node.lineno, a.name))
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = []
            for a in node.names:
                sub = f"{target}.{a.name}"
                if target.split(".")[0] == "nnunet_pde" and _is_module(sub, repo):
                    # ``from nnunet_pde import formats`` imports the module nnunet_pde.formats
                    found.append(Import(node.lineno, sub))
                    aliases[a.asname or a.name] = sub
                else:
                    names.append(a.name)
            if names or not node.names:
                found.append(Import(node.lineno, target, tuple(names)))
    private_uses = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id].split(".")[0] == "nnunet_pde"
            and _is_private(node.attr)
        ):
            private_uses.append((node.lineno, aliases[node.value.id], node.attr))
    return found, private_uses


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _component(module: str) -> str | None:
    """The component of an ``nnunet_pde`` module (``nnunet_pde.benchmark.run`` -> ``benchmark``).

    None for a module outside ``nnunet_pde``; ``"?"`` for one in no layer.
    """
    parts = module.split(".")
    if parts[0] != "nnunet_pde":
        return None
    if len(parts) == 1:
        return ""
    return parts[1] if parts[1] in LAYERS or parts[1] == "trainers" else "?"


def _modules(root: Path) -> Iterable[tuple[Path, str]]:
    for path in sorted(root.rglob("*.py")):
        yield path, _module_name(path, root.parent)


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import under ``root`` that breaks rule 1 or 3, as ``file:line: why``."""
    out = []
    repo = root.parent
    for path, module in _modules(root):
        rel = path.relative_to(repo)
        own = _component(module)
        if own not in LAYERS:
            out.append(f"{rel}: module in no layer (add it to LAYERS and ALLOWED)")
            continue
        found, private_uses = _imports(path, repo)
        for imp in found:
            at = f"{rel}:{imp.line}"
            target = imp.module
            if own == "pde" and (target == "nnunetv2" or target.startswith("nnunetv2.")):
                out.append(f"{at}: the PDE layer imports {target}")
            dep = _component(target)
            if dep is None:
                continue
            for name in imp.names:
                if _is_private(name):
                    out.append(f"{at}: imports the private name {name} from {target}")
            if dep == "trainers":
                out.append(f"{at}: imports {target} (the trainers import the library)")
            elif dep == "?":
                out.append(f"{at}: imports {target}, a module in no layer")
            elif dep != own and dep not in ALLOWED[own]:
                out.append(
                    f"{at}: {own or 'nnunet_pde'} (layer {LAYERS[own]}) must not import "
                    f"{target} ({dep or 'nnunet_pde'}, layer {LAYERS[dep]})"
                )
        for line, target, name in private_uses:
            out.append(f"{rel}:{line}: uses the private name {name} of {target}")
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the ``nnunet_pde`` modules its import statements name."""
    repo = root.parent
    names = {module for _, module in _modules(root)}
    graph: dict[str, set[str]] = {}
    for path, module in _modules(root):
        found, _ = _imports(path, repo)
        graph[module] = {i.module for i in found if i.module in names and i.module != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: one list of modules per strongly connected component
    of more than one module (Tarjan's algorithm), each starting at its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# ------------------------------------------------------------------------------- the rules


def test_imports_follow_the_allowed_arrows_and_import_no_private_name() -> None:
    assert violations() == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_allowed_arrows_point_down_and_form_no_cycle() -> None:
    """ALLOWED itself: one entry per component, arrows to the same or a lower layer only,
    no cycle between components; the root and the trainers are no one's dependency."""
    assert set(ALLOWED) == set(LAYERS)
    for own, deps in ALLOWED.items():
        assert deps <= set(LAYERS), (own, deps - set(LAYERS))
        assert own not in deps
        for dep in deps:
            assert LAYERS[dep] <= LAYERS[own], f"{own} -> {dep} points up"
    assert cycles({k: set(v) for k, v in ALLOWED.items()}) == []
    assert not any("" in deps for own, deps in ALLOWED.items() if own != "")
    # the arrows the design forbids explicitly (architecture.md, issue 24)
    for own, dep in [
        ("derive", "benchmark"),
        ("benchmark", "derive"),
        ("benchmark", "training"),
        ("metrics", "pde"),
        ("metrics", "training"),
        ("pde", "errors"),
    ]:
        assert dep not in ALLOWED[own], f"{own} -> {dep}"


def test_cycles_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# ------------------------------------------------------------------- planted violations


def _planted_copy(tmp_path: Path, plants: dict[str, str]) -> Path:
    """A copy of the package with ``line`` appended to each file ``where`` (created if new)."""
    copy = tmp_path / "nnunet_pde"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "csrc"))
    for where, line in plants.items():
        target = copy / where
        target.write_text((target.read_text() if target.exists() else "") + "\n" + line + "\n")
    return copy


def test_the_unplanted_copy_is_clean(tmp_path: Path) -> None:
    copy = _planted_copy(tmp_path, {})
    assert violations(copy) == []
    assert cycles(import_graph(copy)) == []


@pytest.mark.parametrize(
    ("where", "line", "why"),
    [
        # up a layer
        ("metrics/planted.py", "from nnunet_pde.benchmark.run import run_benchmark", "layer 2"),
        ("folders.py", "def f():\n    from nnunet_pde.cli import main\n", "layer 3"),
        ("derive/planted.py", "from ..cli import main", "layer 3"),
        ("benchmark/__main__.py", "from nnunet_pde.cli import main", "layer 3"),
        # the PDE layer and the trainers
        ("pde/planted.py", "from nnunet_pde.errors import NnunetPdeError", "must not import"),
        ("pde/planted.py", "import nnunetv2.paths", "PDE layer imports nnunetv2"),
        ("env.py", "from nnunet_pde.trainers import nnUNetTrainerPDE3D", "the trainers"),
        # siblings and forbidden downward arrows
        ("derive/planted.py", "from nnunet_pde.benchmark import report", "must not import"),
        ("derive/planted.py", "from ..benchmark.stats import holm", "must not import"),
        ("benchmark/planted.py", "from nnunet_pde.derive import scanner_shift", "must not"),
        (
            "benchmark/robustness/planted.py",
            "def f():\n    from nnunet_pde.training.subsets import SUBSET_FILE\n",
            "must not import",
        ),
        ("metrics/planted.py", "import nnunet_pde.pde", "must not import"),
        ("metrics/planted.py", "from nnunet_pde import PDEBlock", "must not import"),
        ("network.py", "from nnunet_pde.losses import tv_loss", "must not import"),
        ("formats.py", "from nnunet_pde.derive import noisy_labels", "must not import"),
        # private names
        ("benchmark/planted.py", "from nnunet_pde.files import _private", "private name"),
        ("benchmark/robustness/planted.py", "from .pipeline import _slug", "private name"),
        ("derive/planted.py", "from nnunet_pde import errors\nerrors._x()", "private name _x"),
        ("cli/planted.py", "import nnunet_pde.files as f\nf._y", "private name _y"),
    ],
)
def test_a_planted_violation_is_found(tmp_path: Path, where: str, line: str, why: str) -> None:
    """The checker itself: a copy of the package with one bad import fails, at that file."""
    found = violations(_planted_copy(tmp_path, {where: line}))
    assert found and all(where in v for v in found), found
    assert any(why in v for v in found), found


@pytest.mark.parametrize(
    "plants",
    [
        # report imports stats: stats importing report closes a cycle inside benchmark
        {"benchmark/stats.py": "from nnunet_pde.benchmark.report import make_report"},
        # the same inside a function, and through a relative import of a submodule
        {"benchmark/stats.py": "def f():\n    from . import report\n"},
        # three new modules in a ring
        {
            "derive/ring_a.py": "from nnunet_pde.derive import ring_b",
            "derive/ring_b.py": "from nnunet_pde.derive.ring_c import x",
            "derive/ring_c.py": "from .ring_a import y\nx = 1",
        },
    ],
)
def test_a_planted_cycle_is_found(tmp_path: Path, plants: dict[str, str]) -> None:
    copy = _planted_copy(tmp_path, plants)
    assert violations(copy) == []  # allowed arrows, public names: only the cycle check fails
    found = cycles(import_graph(copy))
    assert len(found) == 1, found
    planted = {"nnunet_pde." + w.removesuffix(".py").replace("/", ".") for w in plants}
    assert planted <= set(found[0]), found
