"""A regular (non-editable) wheel install ships the trainers and `nnunet-pde env` points
nnUNet_extTrainer into site-packages."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from plan_fixtures import REPO

pytestmark = pytest.mark.slow


def _listed_packages() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^packages\s*=\s*\[(.*?)\]", text, flags=re.M | re.S).group(1)
    return set(re.findall(r'"([\w.]+)"', block))


def test_every_package_on_disk_is_listed_in_pyproject():
    on_disk = {"nnunet_pde.trainers"} | {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "nnunet_pde").rglob("__init__.py")
    }
    assert on_disk == _listed_packages()


def test_wheel_install_ships_trainers_and_env_points_into_site_packages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("nnunet_pde-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in [*(REPO / "nnunet_pde").rglob("*.py")]:
        assert src.relative_to(REPO).as_posix() in names
    for src in (REPO / "trainers").glob("*.py"):
        assert f"nnunet_pde/trainers/{src.name}" in names

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    # -S: no site-packages, hence no editable-install finder that would shadow the wheel;
    # `nnunet_pde.env` needs only the standard library. Run from an unrelated folder.
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r}); "
        "from nnunet_pde.env import export_lines; print('\\n'.join(export_lines(environ={})))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"^export nnUNet_extTrainer=(\S+)$", out, flags=re.M)
    assert m and Path(m.group(1).strip("'")) == (target / "nnunet_pde" / "trainers").resolve()
    assert (Path(m.group(1).strip("'")) / "nnUNetTrainerPDE3D.py").is_file()
