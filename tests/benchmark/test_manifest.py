"""The run manifest's record of the code: ``git_revision``."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from nnunet_pde.benchmark.manifest import git_revision


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_revision_names_the_commit_and_whether_tracked_files_changed(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    sub = tmp_path / "sub"
    sub.mkdir()
    clean = git_revision(sub)
    assert clean == {
        "repository": str(tmp_path.resolve()),
        "commit": git("rev-parse", "HEAD"),
        "dirty": False,
    }
    (tmp_path / "untracked.txt").write_text("x")
    assert git_revision(sub)["dirty"] is False  # untracked files do not count
    (tmp_path / "a.txt").write_text("2")
    assert git_revision(sub)["dirty"] is True


def test_git_revision_outside_a_work_tree_is_none(tmp_path):
    assert git_revision(tmp_path) is None
