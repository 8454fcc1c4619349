"""A killed writer leaves nothing hidden for good: its next run restores or removes it.

`make-dataset` and `derive` write through :func:`nnunet_pde.staging.staged_folder`: a hidden
``.<name>.tmp-<token>`` folder, swapped in by two renames (the old folder aside as
``.<name>.old-<token>``, then the new one into place). A SIGKILL runs no clean-up, so the
hidden folders stay; :func:`nnunet_pde.staging.recover_interrupted`, called by every writer
before it looks at its destination, puts a moved-aside folder back (or finishes the
replacement) and removes the unfinished one, with one ``warning:`` line naming each path.

The kills are real: the command runs as a subprocess (``python KILLER ARGS``, the CLI's
``main``) that sends itself SIGKILL at a chosen rename or deletion, or gets SIGKILL from the
test while it writes cases.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from plan_fixtures import nnunet_subprocess_env

from nnunet_pde.staging import recover_interrupted, staged_folder, staged_sibling

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DS = "Dataset002_SyntheticBraTS"

#: Runs `nnunet-pde ARGS` and SIGKILLs itself at the first rename whose destination name
#: matches $KILL_RENAME_TO, or the first deletion of a folder whose name matches
#: $KILL_RMTREE: exactly where a kill, an OOM or a power cut can land.
KILLER = """\
import os, pathlib, re, shutil, signal, sys

def die(what):
    print(f"KILLED at {what}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

rename_to = os.environ.get("KILL_RENAME_TO")
rmtree = os.environ.get("KILL_RMTREE")
real_rename, real_rmtree = pathlib.Path.rename, shutil.rmtree

def rename(self, target):
    if rename_to and re.search(rename_to, pathlib.Path(target).name):
        die(f"rename {self.name} -> {pathlib.Path(target).name}")
    return real_rename(self, target)

def remove_tree(path, *args, **kwargs):
    if rmtree and re.search(rmtree, pathlib.Path(path).name) and pathlib.Path(path).exists():
        die(f"rmtree {pathlib.Path(path).name}")
    return real_rmtree(path, *args, **kwargs)

pathlib.Path.rename = rename
shutil.rmtree = remove_tree
from nnunet_pde.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(root: Path) -> dict[str, str]:
    env = nnunet_subprocess_env(root)
    env.update(PYTHONWARNINGS="ignore", COLUMNS="200")
    return env


def _run(
    root: Path, *args: str, rename_to: str | None = None, rmtree: str | None = None
) -> subprocess.CompletedProcess:
    """``nnunet-pde ARGS`` in a subprocess, killed where ``rename_to`` / ``rmtree`` say."""
    killer = root / "killer.py"
    if not killer.exists():
        killer.write_text(KILLER)
    env = _env(root)
    for key, value in (("KILL_RENAME_TO", rename_to), ("KILL_RMTREE", rmtree)):
        if value is not None:
            env[key] = value
    return subprocess.run(
        [sys.executable, str(killer), *args],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _make(raw: Path, seed: int, *extra: str) -> list[str]:
    return ["make-dataset", "brats-like", "--id", "2", "--size", "16", "--num-train", "1",
            "--num-test", "0", "--seed", str(seed), "--raw", str(raw), *extra]  # fmt: skip


def _tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``folder`` (hidden ones included)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _warnings(stderr: str) -> list[str]:
    """The warning lines about an interrupted run (not the one about --num-train 1)."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("warning: ") and "interrupted" in line
    ]


# ------------------------------------------------------------------------- make-dataset


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """``nnUNet_raw`` with dataset 2 written by make-dataset (seed 1)."""
    from nnunet_pde.data.synthetic import make_synthetic_dataset

    folder = tmp_path / "raw"
    make_synthetic_dataset("brats-like", folder, 2, num_train=1, num_test=0, size=16, seed=1)
    return folder


def test_overwrite_killed_between_its_renames_is_restored_by_the_next_run(raw: Path) -> None:
    before = _tree(raw / DS)
    killed = _run(raw.parent, *_make(raw, 3, "--overwrite"), rename_to=r"^Dataset002_")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # the kill landed between the renames: the only copy is hidden
    assert not (raw / DS).exists()
    old, tmp = _hidden(raw)
    assert old.startswith(f".{DS}.old-") and tmp.startswith(f".{DS}.tmp-")

    again = _run(raw.parent, *_make(raw, 3))  # the same command, without --overwrite
    assert again.returncode == 2, again.stderr
    assert _tree(raw / DS) == before  # the earlier dataset, byte for byte
    assert _hidden(raw) == []
    assert _warnings(again.stderr) == [
        f"warning: restored {raw / DS} from {raw / old}, where an interrupted --overwrite "
        "run had moved it before it was killed",
        f"warning: removed {raw / tmp}: the unfinished output of an interrupted run",
    ]
    errors = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "already exists; pass --overwrite" in errors[0], again.stderr
    assert "writable" not in errors[0]


def test_rerunning_the_killed_overwrite_completes_it(raw: Path) -> None:
    killed = _run(raw.parent, *_make(raw, 3, "--overwrite"), rename_to=r"^Dataset002_")
    assert killed.returncode == -signal.SIGKILL
    again = _run(raw.parent, *_make(raw, 3, "--overwrite"))
    assert again.returncode == 0, again.stderr
    assert _hidden(raw) == [] and "restored" in again.stderr
    assert json.loads((raw / DS / "synthetic.json").read_text())["seed"] == 3


def test_overwrite_killed_before_deleting_the_old_copy(raw: Path) -> None:
    killed = _run(raw.parent, *_make(raw, 3, "--overwrite"), rmtree=r"\.old-")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    written = _tree(raw / DS)
    assert json.loads((raw / DS / "synthetic.json").read_text())["seed"] == 3
    (old,) = _hidden(raw)

    again = _run(raw.parent, *_make(raw, 3))
    assert again.returncode == 2  # exists: the killed run had swapped its dataset in
    assert _hidden(raw) == [] and _tree(raw / DS) == written
    assert f"warning: removed {raw / old}: the earlier {DS}" in again.stderr


def test_make_dataset_sigkilled_while_writing_cases(tmp_path: Path) -> None:
    """A kill from outside, as `kill -9` or the OOM killer sends it."""
    raw = tmp_path / "raw"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nnunet_pde.cli",
            "make-dataset",
            "brats-like",
            "--id",
            "2",
            "--size",
            "16",
            "--num-train",
            "40",
            "--num-test",
            "0",
            "--raw",
            str(raw),
        ],  # fmt: skip
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # [1/40] ...: the dataset is being written
    proc.kill()
    proc.communicate(timeout=60)
    assert "[1/40]" in first and proc.returncode == -signal.SIGKILL
    (tmp,) = _hidden(raw)
    assert tmp.startswith(f".{DS}.tmp-") and not (raw / DS).exists()

    again = _run(tmp_path, *_make(raw, 0))
    assert again.returncode == 0, again.stderr
    assert _warnings(again.stderr) == [
        f"warning: removed {raw / tmp}: the unfinished output of an interrupted run"
    ]
    assert _hidden(raw) == [] and (raw / DS / "dataset.json").is_file()


# ------------------------------------------------------------------------------- derive


def test_derive_noisy_labels_killed_between_renames_restores_the_replaced_dataset(
    raw: Path,
) -> None:
    """--overwrite replaces every dataset with the id; killed after moving one aside."""
    source = raw / DS
    args = ["derive", "noisy-labels", str(source), "--id", "7", "--mode", "erode",
            "--magnitude", "1", "--raw", str(raw), "--quiet"]  # fmt: skip
    first = _run(raw.parent, *args, "--name", "First")
    assert first.returncode == 0, first.stderr
    before = _tree(raw / "Dataset007_First")
    killed = _run(raw.parent, *args, "--name", "Second", "--overwrite", rename_to=r"^Dataset007_")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (raw / "Dataset007_First").exists()
    assert not (raw / "Dataset007_Second").exists()

    again = _run(raw.parent, *args, "--name", "Second")
    assert again.returncode == 2, again.stderr  # id 7 is used (by First, restored)
    assert _tree(raw / "Dataset007_First") == before
    assert not (raw / "Dataset007_Second").exists() and _hidden(raw) == []
    assert f"warning: restored {raw / 'Dataset007_First'} from {raw}/.Dataset007_First.old-" in (
        again.stderr
    )
    assert f"warning: removed {raw}/.Dataset007_Second.tmp-" in again.stderr


def test_derive_shifted_images_killed_before_its_rename(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "shift"
    args = ["derive", "shifted-images", str(raw / DS), "--output", str(out), "--perturbations",
            "noise", "--levels", "1", "--no-progress", "--workers", "1"]  # fmt: skip
    # make-dataset wrote no test images: give the dataset one
    (raw / DS / "imagesTs").mkdir(exist_ok=True)
    for image in (raw / DS / "imagesTr").iterdir():
        (raw / DS / "imagesTs" / image.name).write_bytes(image.read_bytes())
    killed = _run(tmp_path, *args, rename_to=r"^shift$")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (tmp,) = [p for p in _hidden(tmp_path) if p.startswith(".shift.")]
    assert tmp.startswith(".shift.tmp-") and not out.exists()

    again = _run(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert f"warning: removed {tmp_path / tmp}: the unfinished output" in again.stderr
    assert not [p for p in _hidden(tmp_path) if p.startswith(".shift.")]
    assert (out / "nnunet_pde_shift.json").is_file()


# ------------------------------------------------------------------ recover_interrupted


def _debris(parent: Path, name: str, kind: str, token: str = "0123abcd") -> Path:
    folder = staged_sibling(parent / name, kind, token)
    folder.mkdir(parents=True)
    (folder / f"{kind}.txt").write_text(kind)
    return folder


def test_recovery_leaves_a_run_in_progress_alone(tmp_path: Path) -> None:
    """A concurrent writer's folder is locked: the next run must not take it away."""
    reported: list[str] = []
    with staged_folder(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
        assert recover_interrupted(tmp_path, reported.append) == []
        assert (tmp / "a.txt").is_file()
    assert (tmp_path / "out" / "a.txt").read_text() == "1" and reported == []


def test_recovery_reports_a_conflict_and_changes_nothing(tmp_path: Path) -> None:
    old = _debris(tmp_path, "out", "old")
    tmp = _debris(tmp_path, "out", "tmp")
    (tmp_path / "out").mkdir()  # made again after the kill
    lines = recover_interrupted(tmp_path, lambda line: None)
    assert old.is_dir() and (old / "old.txt").read_text() == "old"
    assert lines[0].startswith(f"{old} holds the earlier out") and "exists again" in lines[0]
    assert lines[1:] == [f"removed {tmp}: the unfinished output of an interrupted run"]
    assert not tmp.exists() and not any((tmp_path / "out").iterdir())


def test_recovery_touches_only_its_own_hidden_names(tmp_path: Path) -> None:
    keep = [tmp_path / ".git", tmp_path / ".out.tmp-notatoken", tmp_path / ".out.old-0123abc"]
    for folder in keep:
        folder.mkdir()
    (tmp_path / ".out.tmp-0123abcd").write_text("a file, not a folder")
    assert recover_interrupted(tmp_path, lambda line: None) == []
    assert all(folder.is_dir() for folder in keep)
    assert recover_interrupted(tmp_path / "missing") == []


def test_staged_folder_rolls_back_every_folder_it_moved_aside(tmp_path: Path) -> None:
    """noisy-labels replaces all datasets of an id: a failure puts each one back."""
    for name in ("Dataset007_A", "Dataset007_B"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text(name)
    real_rename = Path.rename

    def failing(self: Path, target: Path) -> Path:
        if Path(target).name == "Dataset007_C":
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "rename", failing)
        with (
            pytest.raises(OSError),
            staged_folder(
                tmp_path / "Dataset007_C",
                also_replace=[tmp_path / "Dataset007_A", tmp_path / "Dataset007_B"],
            ) as tmp,
        ):
            (tmp / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset007_A", "Dataset007_B"]
    assert (tmp_path / "Dataset007_B" / "x").read_text() == "Dataset007_B"
    with (
        pytest.raises(ValueError, match="not a sibling"),
        staged_folder(tmp_path / "C", also_replace=[tmp_path / "sub" / "D"]),
    ):
        pass
