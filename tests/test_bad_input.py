"""Bad input never loses data, never shows a traceback, never gives a silent wrong answer.

One matrix of ``nnunet-pde`` invocations (bad ones and the good ones next to them), each run
as a subprocess of ``python -m nnunet_pde.cli``. For every case the test asserts the exit
code, that stderr holds no traceback (and, for a refusal, exactly one ``error:`` line),
what the output says, and that the shared inputs (source datasets, checkpoints, prediction
folders) and whatever existed before in the case's own folder are byte-identical afterwards
(sha256 of every file, the file list included).

``BAD_INPUT_RECORD=FILE`` appends one JSON line per case (id, command, exit code, whether a
traceback was printed): how the counts in the closing note of issue 13 were measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from plan_fixtures import FIXTURES, REPO, nnunet_subprocess_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DS = "Dataset001_SyntheticBraTS"
DS4 = "Dataset004_Four"
PDE_FOLDER = "nnUNetTrainerPDE3D__nnUNetPlans__3d_fullres"


# ------------------------------------------------------------------------------ the world


@dataclass
class World:
    """Inputs shared by all cases; hashed around every case."""

    root: Path
    env: dict[str, str]

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def ds(self) -> Path:
        return self.raw / DS

    @property
    def ck(self) -> Path:
        return self.root / "ck"

    @property
    def ev(self) -> Path:
        return self.root / "ev"


def _write_seg(array: np.ndarray, path: Path, reference: Path) -> None:
    import SimpleITK as sitk

    ref = sitk.ReadImage(str(reference))
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(path), useCompression=True)


def _read_only_folder(parent: Path) -> Path | None:
    """A folder that this process cannot write into (None when there is none, e.g. root
    without a read-only mount)."""
    folder = parent / "readonly"
    folder.mkdir()
    os.chmod(folder, 0o555)
    probe = folder / "probe"
    try:
        probe.mkdir()
    except OSError:
        return folder
    probe.rmdir()
    os.chmod(folder, 0o755)
    folder.rmdir()
    for candidate in (Path("/sys/nnunet_pde_readonly"), Path("/proc/nnunet_pde_readonly")):
        try:
            candidate.mkdir()
        except OSError:
            return candidate
        candidate.rmdir()  # pragma: no cover - writable /sys
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory, write_checkpoint) -> World:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_pde.data.synthetic import make_synthetic_dataset
    from nnunet_pde.trainers.nnUNetTrainerPDE3D import (
        nnUNetTrainerPDE3D,
        nnUNetTrainerPDE3D_Moment,
    )

    root = tmp_path_factory.mktemp("world")
    w = World(root, nnunet_subprocess_env(root))
    w.env.update(PYTHONWARNINGS="default", nnUNet_n_proc_DA="0", COLUMNS="200")
    w.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.environ.get("BAD_INPUT_PYTHONPATH"), os.environ.get("PYTHONPATH")) if p
    )
    make_synthetic_dataset("brats-like", w.raw, 1, num_train=5, num_test=1, size=16)
    make_synthetic_dataset("lits-like", w.raw, 4, name="Four", num_train=4, num_test=0, size=16)
    # preprocessed folders as far as benchmark run reads them
    for name in (DS, DS4):
        pre = root / "pre" / name
        pre.mkdir(parents=True)
        shutil.copy(FIXTURES / "plans_tiny_plain.json", pre / "nnUNetPlans.json")
        shutil.copy(w.raw / name / "dataset.json", pre / "dataset.json")
    # checkpoints
    w.ck.mkdir()
    write_checkpoint(w.ck / "stock.pth", nnUNetTrainer)
    write_checkpoint(w.ck / "pde.pth", nnUNetTrainerPDE3D)
    # weights of the moment network under the name of the diffusion trainer
    moment = nnUNetTrainerPDE3D_Moment
    write_checkpoint(w.ck / "mismatch.pth", moment, trainer_name="nnUNetTrainerPDE3D")
    data = (w.ck / "stock.pth").read_bytes()
    (w.ck / "truncated.pth").write_bytes(data[: len(data) // 2])
    (w.ck / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (w.ck / "empty.pth").write_bytes(b"")
    (w.ck / "folder").mkdir()
    # results: fold 0 "finished" with a truncated checkpoint, fold 1 finished for real
    for fold, ckpt in ((0, "truncated.pth"), (1, "pde.pth")):
        fd = root / "res" / DS / PDE_FOLDER / f"fold_{fold}"
        (fd / "validation").mkdir(parents=True)
        shutil.copy(w.ck / ckpt, fd / "checkpoint_final.pth")
        (fd / "validation" / "summary.json").write_text("{}\n")
    # evaluation folders
    ref = w.ds / "labelsTs" / "brats_test_000.nii.gz"
    import SimpleITK as sitk

    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ref)))
    for name, array in {
        "pred": seg,
        "pred7": np.where(seg == 1, 7, seg).astype(np.uint8),
        "predfloat": seg.astype(np.float32) * 0.5,
        "ref9": np.where(seg == 2, 9, seg).astype(np.uint8),
    }.items():
        (w.ev / name).mkdir(parents=True)
        _write_seg(array, w.ev / name / ref.name, ref)
    (w.ev / "existing_file").write_text("not a folder\n")
    # fake nnUNetv2_train for the progress case: nnU-Net's log lines, then a finished fold
    (w.root / "fake_train.py").write_text(_FAKE_TRAIN)
    w.readonly = _read_only_folder(root)  # type: ignore[attr-defined]
    return w


_FAKE_TRAIN = """\
import sys, time, os, pathlib, torch
ds, conf, fold = sys.argv[1:4]
trainer = sys.argv[sys.argv.index("-tr") + 1]
res = pathlib.Path(os.environ["nnUNet_results"])
fd = res / ds / f"{trainer}__nnUNetPlans__{conf}" / f"fold_{fold}"
fd.mkdir(parents=True, exist_ok=True)
log = fd / "training_log_2026_1_1_00_00_00.txt"
for epoch in range(3):
    for line in (f"Epoch {epoch}", "Current learning rate: 0.01", "train_loss -0.1",
                 "val_loss -0.2", f"Pseudo dice [np.float32(0.{epoch + 5}), np.float32(0.4)]",
                 "Epoch time: 0.4 s"):
        with open(log, "a") as f:
            f.write(f"2026-01-01 00:00:00.000000: {line}\\n")
        print(line, flush=True)
    time.sleep(0.6)
torch.save({"network_weights": {}}, fd / "checkpoint_final.pth")
(fd / "validation").mkdir(exist_ok=True)
(fd / "validation" / "summary.json").write_text("{}")
"""


# ------------------------------------------------------------------------------ the cases


@dataclass
class Case:
    """One invocation. ``argv`` and ``setup`` get (world, case folder)."""

    id: str
    argv: Callable[[World, Path], list[str]]
    rc: int
    err: str | None = None  # in the error line (rc 2) or stderr
    out: str | None = None  # in stdout
    not_in: tuple[str, ...] = ()  # in neither stdout nor stderr
    setup: Callable[[World, Path], None] | None = None
    env: Callable[[World, Path], dict[str, str]] | None = None
    after: Callable[[World, Path], None] | None = None  # further checks
    send: int | None = None  # signal to send once the command printed its first line
    protect_case_dir: bool | None = None  # default: only for refusals
    slow: bool = False  # marked slow: real work (training stand-in, TorchIO, signals)

    @property
    def command(self) -> str:
        return self.id.split(":")[0]


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _no_leftovers(w: World, d: Path) -> None:
    hidden = [p for p in _listing(d) if any(part.startswith(".") for part in p.split("/"))]
    hidden = [p for p in hidden if ".nnunet_pde_written.json" not in p]
    assert not hidden, f"temporary files left behind: {hidden}"


def _shifted(w: World, d: Path, predictions: bool) -> None:
    from nnunet_pde.derive.scanner_shift import derive_shifted_images

    derive_shifted_images(
        w.ds, d / "shift", perturbations=["noise"], levels=[1], progress=False, workers=1
    )
    if predictions:
        (d / "shift" / "predictions" / "T" / "clean").mkdir(parents=True)
        (d / "shift" / "predictions" / "T" / "clean" / "case.nii.gz").write_bytes(b"x")
        (d / "shift" / "notes.txt").write_text("mine\n")


def _stock_output(w: World, d: Path) -> None:
    (d / "out.pth").write_bytes(b"previous output")


def _dataset_exists(w: World, d: Path) -> None:
    from nnunet_pde.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset("brats-like", d / "raw", 3, num_train=1, num_test=0, size=16)


def _foreign_file_in_dataset(w: World, d: Path) -> None:
    _dataset_exists(w, d)
    (d / "raw" / "Dataset003_SyntheticBraTS" / "my_notes.txt").write_text("keep me\n")


def _noisy_summary(w: World, d: Path) -> None:
    info = json.loads(
        next((d / "raw").glob("Dataset6*")).joinpath("nnunet_pde_derived.json").read_text()
    )
    assert "label_damage" in info


def _ro(w: World) -> str:
    if w.readonly is None:  # type: ignore[attr-defined]
        pytest.skip("no read-only folder available")
    return str(w.readonly)  # type: ignore[attr-defined]


Argv = Callable[[World, Path], list[str]]


def _make(*args: str, raw: str | None = "raw") -> Argv:
    """``make-dataset brats-like --id 2 --size 16 ARGS [--raw CASE/raw]``."""

    def argv(w: World, d: Path) -> list[str]:
        out = ["make-dataset", "brats-like", "--id", "2", "--size", "16", *args]
        return out + (["--raw", str(d / raw)] if raw else [])

    return argv


def _warm(src: str, out: str = "o.pth", *args: str) -> Argv:
    return lambda w, d: ["warmstart", str(w.ck / src), str(d / out), *args]


def _inspect(ckpt: str, *args: str) -> Argv:
    return lambda w, d: ["inspect", str(w.ck / ckpt), *args]


def _evaluate(pred: str, ref: Callable[[World], Path] | None = None) -> Argv:
    def argv(w: World, d: Path) -> list[str]:
        reference = w.ds / "labelsTs" if ref is None else ref(w)
        return ["evaluate", str(w.ev / pred), str(reference), "--dataset-json",
                str(w.ds / "dataset.json"), "--output", str(d / "out"), "--no-progress",
                "--workers", "1"]

    return argv


def _noisy(dataset_id: str, mode: str, magnitude: str) -> Argv:
    return lambda w, d: ["derive", "noisy-labels", str(w.ds), "--id", dataset_id, "--mode",
                         mode, "--magnitude", magnitude, "--raw", str(d / "raw"), "--quiet"]


def _shift(out: str, *args: str) -> Argv:
    return lambda w, d: ["derive", "shifted-images", str(w.ds), "--output", str(d / out),
                         "--perturbations", "noise", "--levels", "1", "--no-progress",
                         "--workers", "1", *args]


def _bench(dataset: str, *args: str, trainer: str = "nnUNetTrainerPDE3D") -> Argv:
    return lambda w, d: ["benchmark", "run", dataset, "--trainers", trainer, *args]


def _fake_train(w: World, d: Path) -> list[str]:
    return _bench("1", "--folds", "2", "--device", "cpu", "--train-command",
                  f"{sys.executable} {w.root / 'fake_train.py'}")(w, d)


def _shifted_with(predictions: bool) -> Callable[[World, Path], None]:
    return lambda w, d: _shifted(w, d, predictions=predictions)


def _ro_env(w: World, d: Path) -> dict[str, str]:
    return {"nnUNet_raw": _ro(w) + "/raw"}


_BIG = ("--size", "48", "--num-train", "60")
_DRY = "--dry-run"

CASES: list[Case] = [
    # ---------------------------------------------------------------- env / doctor / list
    Case("env:good", lambda w, d: ["env"], 0, out="nnUNet_extTrainer"),
    Case("doctor:good", lambda w, d: ["doctor"], 0, out="resolves all", not_in=("Warning",),
         slow=True),
    Case("doctor:raw-is-a-file", lambda w, d: ["doctor"], 1, out="is not a folder",
         not_in=("mkdir -p /etc/passwd",), env=lambda w, d: {"nnUNet_raw": "/etc/passwd"},
         slow=True),
    Case("list-trainers:no-monai-warning", lambda w, d: ["list-trainers"], 0,
         out="nnUNetTrainerPDE3D", not_in=("FutureWarning", "Warning"), slow=True),
    # ---------------------------------------------------------------- make-dataset
    Case("make-dataset:good", _make("--num-train", "5", "--num-test", "1"), 0,
         out="wrote brats-like dataset", after=_no_leftovers),
    Case("make-dataset:four-cases-warns", _make("--num-train", "4", "--num-test", "0"), 0,
         err="at least 5"),
    Case("make-dataset:raw-read-only", lambda w, d: _make(raw=None)(w, d) + ["--raw",
         _ro(w) + "/raw"], 2, err="--raw"),
    Case("make-dataset:raw-is-a-file", lambda w, d: _make(raw=None)(w, d) + ["--raw",
         str(w.ev / "existing_file")], 2, err="not a folder"),
    Case("make-dataset:env-raw-read-only", _make(raw=None), 2, err="nnUNet_raw", env=_ro_env),
    Case("make-dataset:size-2000", _make("--size", "2000"), 2, err="--size"),
    Case("make-dataset:size-100000", _make("--size", "100000"), 2, err="--size"),
    Case("make-dataset:size-too-small", _make("--size", "8"), 2, err="--size"),
    Case("make-dataset:size-not-a-number", _make("--size", "abc"), 2, err="--size"),
    Case("make-dataset:bad-id", _make("--id", "0"), 2, err="--id", not_in=("dataset_id",)),
    Case("make-dataset:exists", _make("--id", "3"), 2, err="--overwrite",
         not_in=("overwrite=True",), setup=_dataset_exists),
    Case("make-dataset:overwrite-own", _make("--id", "3", "--num-train", "5", "--overwrite"),
         0, setup=_dataset_exists, after=_no_leftovers),
    Case("make-dataset:overwrite-foreign-file", _make("--id", "3", "--overwrite"), 2,
         err="my_notes.txt", setup=_foreign_file_in_dataset),
    Case("make-dataset:sigint", _make(*_BIG), 130, err="interrupted", send=signal.SIGINT,
         after=_no_leftovers, protect_case_dir=False, slow=True),
    Case("make-dataset:sigterm", _make(*_BIG), 143, err="interrupted", send=signal.SIGTERM,
         after=_no_leftovers, protect_case_dir=False, slow=True),
    # ---------------------------------------------------------------- warmstart
    Case("warmstart:good", _warm("stock.pth", "out.pth"), 0, out="wrote"),
    *[
        Case(f"warmstart:{kind}-checkpoint", _warm(f"{kind}.pth"), 2, err="STOCK_CHECKPOINT")
        for kind in ("truncated", "random", "empty")
    ],
    Case("warmstart:missing", _warm("nope.pth"), 2, err="not found"),
    Case("warmstart:input-is-a-folder", _warm("folder"), 2, err="is a folder"),
    Case("warmstart:output-read-only",
         lambda w, d: ["warmstart", str(w.ck / "stock.pth"), _ro(w) + "/o.pth"], 2,
         err="OUTPUT"),
    Case("warmstart:output-is-a-folder", _warm("stock.pth", "dir", "--overwrite"), 2,
         err="is a folder", setup=lambda w, d: (d / "dir").mkdir()),
    Case("warmstart:output-exists", _warm("stock.pth", "out.pth"), 2, err="--overwrite",
         setup=_stock_output),
    Case("warmstart:pde3d-checkpoint", _warm("pde.pth"), 2, err="already"),
    Case("warmstart:unknown-trainer",
         _warm("stock.pth", "o.pth", "--trainer", "nnUNetTrainerPDE3D_Nope"), 2,
         err="--trainer"),
    # ---------------------------------------------------------------- inspect
    Case("inspect:good", _inspect("pde.pth"), 0, out="encoder"),
    Case("inspect:good-json", lambda w, d: _inspect("pde.pth", "--json", str(d / "r.json"))(w, d),
         0, out="wrote 1 file"),
    *[
        Case(f"inspect:{kind}-checkpoint", _inspect(f"{kind}.pth"), 2, err="CHECKPOINT")
        for kind in ("truncated", "random", "empty")
    ],
    Case("inspect:stock-checkpoint", _inspect("stock.pth"), 2, err="no PDE blocks"),
    Case("inspect:weights-do-not-fit", _inspect("mismatch.pth"), 2,
         err="unexpected key(s) encoder.stages"),
    Case("inspect:folder", _inspect("folder"), 2, err="is a folder"),
    Case("inspect:json-read-only",
         lambda w, d: _inspect("pde.pth", "--json", _ro(w) + "/r.json")(w, d), 2, err="--json"),
    # ---------------------------------------------------------------- evaluate
    Case("evaluate:good", _evaluate("pred"), 0, out="Wrote"),
    Case("evaluate:pred-label-7", _evaluate("pred7"), 2, err="7"),
    Case("evaluate:pred-float-map", _evaluate("predfloat"), 2, err="integer"),
    Case("evaluate:ref-label-9", _evaluate("pred", lambda w: w.ev / "ref9"), 2, err="9"),
    Case("evaluate:output-is-a-file",
         lambda w, d: _evaluate("pred")(w, d)[:-5] + ["--output", str(w.ev / "existing_file")],
         2, err="--output", not_in=("Errno",)),
    Case("evaluate:missing-pred",
         lambda w, d: ["evaluate", str(d / "nope"), str(w.ds / "labelsTs")], 2,
         err="does not exist"),
    # ---------------------------------------------------------------- derive noisy-labels
    Case("derive-noisy-labels:good", _noisy("601", "erode", "1"), 0, out="wrote",
         after=_noisy_summary),
    Case("derive-noisy-labels:erode-1e6", _noisy("601", "erode", "1e6"), 0, err="emptied",
         out="emptied in", after=_noisy_summary),
    Case("derive-noisy-labels:add-blobs-500", _noisy("601", "add-blobs", "500"), 0,
         err="destroys rather than perturbs", after=_noisy_summary, slow=True),
    Case("derive-noisy-labels:exists", _noisy("3", "erode", "1"), 2, err="--overwrite",
         not_in=("overwrite=True",), setup=_dataset_exists),
    # ---------------------------------------------------------------- derive shifted-images
    Case("derive-shifted-images:good", _shift("s"), 0, out="Wrote", slow=True),
    Case("derive-shifted-images:overwrite-own", _shift("shift", "--overwrite"), 0, out="Wrote",
         setup=_shifted_with(False), after=_no_leftovers, slow=True),
    Case("derive-shifted-images:overwrite-keeps-predictions", _shift("shift", "--overwrite"), 2,
         err="predictions", setup=_shifted_with(True)),
    Case("derive-shifted-images:exists", _shift("shift"), 2, err="--overwrite",
         not_in=("overwrite=True",), setup=_shifted_with(False)),
    # ---------------------------------------------------------------- benchmark run
    Case("benchmark-run:dry-run-good", _bench("1", "--folds", "1", "2", _DRY, "--device", "cpu"),
         0, out="# skip nnUNetTrainerPDE3D/fold_1"),
    Case("benchmark-run:dry-run-truncated-final", _bench("1", "--folds", "0", _DRY), 2,
         err="checkpoint_final.pth"),
    Case("benchmark-run:unknown-trainer", _bench("1", _DRY, trainer="nnUNetTrainerPDE3D_Nope"),
         2, err="unknown trainer"),
    Case("benchmark-run:unknown-trainer-no-dry-run",
         _bench("1", "--folds", "3", trainer="nnUNetTrainerPDE3D_Nope"), 2,
         err="unknown trainer"),
    Case("benchmark-run:bad-device", _bench("1", "--folds", "2", "--device", "gpu", _DRY), 2,
         err="--device"),
    Case("benchmark-run:four-cases", _bench("4", _DRY), 2, err="--folds"),
    Case("benchmark-run:fold-5", _bench("1", "--folds", "5", _DRY), 2, err="--folds"),
    Case("benchmark-run:usage-error", _bench("1", "--jobs", "0"), 2, err="--jobs"),
    Case("benchmark-run:progress", _fake_train, 0, out="/1000, pseudo Dice 0.",
         env=lambda w, d: {"nnUNet_results": str(d / "res"),
                           "NNUNET_PDE_PROGRESS_INTERVAL": "0.3"},
         protect_case_dir=False, slow=True),
]


def _tree_hash(paths: list[Path]) -> dict[str, str]:
    out = {}
    for top in paths:
        if not top.exists():
            continue
        for p in sorted(top.rglob("*")):
            key = str(p)
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _run(case: Case, w: World, d: Path) -> subprocess.CompletedProcess:
    env = dict(w.env)
    if case.env is not None:
        env.update(case.env(w, d))
    cmd = [sys.executable, "-m", "nnunet_pde.cli", *case.argv(w, d)]
    if case.send is None:
        return subprocess.run(
            cmd, env=env, cwd=d, capture_output=True, text=True, timeout=300, check=False
        )
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=d,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    first = proc.stdout.readline()  # the first progress line: the dataset is being written
    time.sleep(0.3)
    proc.send_signal(case.send)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, first + out, err)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=(pytest.mark.slow,) if c.slow else ()) for c in CASES],
)
def test_bad_input(case: Case, world: World, tmp_path: Path) -> None:
    d = tmp_path / "case"
    d.mkdir()
    if case.setup is not None:
        case.setup(world, d)
    protect = [world.root]
    if case.protect_case_dir if case.protect_case_dir is not None else case.rc == 2:
        protect.append(d)
    elif case.setup is not None:
        protect = [world.root]
    before = _tree_hash(protect)
    result = _run(case, world, d)
    record = os.environ.get("BAD_INPUT_RECORD")
    if record:
        with open(record, "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "id": case.id,
                        "command": case.command,
                        "rc": result.returncode,
                        "traceback": "Traceback" in result.stderr,
                        "stderr_tail": result.stderr.strip().splitlines()[-1:] or "",
                    }
                )
                + "\n"
            )
    info = f"\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, info
    assert result.returncode == case.rc, info
    err_lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case.rc == 2:
        assert len(err_lines) == 1 and err_lines[0].startswith("error: "), info
    if case.err is not None:
        assert case.err in result.stderr, info
    if case.out is not None:
        assert case.out in result.stdout, info
    for text in case.not_in:
        assert text not in result.stdout + result.stderr, info
    assert _tree_hash(protect) == before, "inputs or pre-existing outputs changed" + info
    if case.after is not None:
        case.after(world, d)


def test_matrix_covers_every_command() -> None:
    commands = {c.command for c in CASES}
    assert commands >= {
        "env",
        "doctor",
        "list-trainers",
        "make-dataset",
        "warmstart",
        "inspect",
        "evaluate",
        "derive-noisy-labels",
        "derive-shifted-images",
        "benchmark-run",
    }
    assert REPO.is_dir()


# ------------------------------------------------------------------ the guards themselves


def test_overwrite_replaces_only_what_the_command_wrote(tmp_path: Path) -> None:
    from nnunet_pde.errors import NnunetPdeError
    from nnunet_pde.staging import check_replaceable, staged_folder

    out = tmp_path / "out"
    with staged_folder(out, command="demo") as tmp:
        (tmp / "a.txt").write_text("1")
    assert check_replaceable(out, True, "demo") is True
    with pytest.raises(NnunetPdeError, match="--overwrite"):
        check_replaceable(out, False, "demo")
    with pytest.raises(NnunetPdeError, match="was not written by"):
        check_replaceable(out, True, "another command")
    (out / "mine.txt").write_text("keep")
    with pytest.raises(NnunetPdeError, match="mine.txt"):
        check_replaceable(out, True, "demo")
    # a failure inside the block leaves the old folder and no temporary one
    (out / "mine.txt").unlink()
    with pytest.raises(RuntimeError), staged_folder(out, command="demo") as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "a.txt").read_text() == "1" and not (out / "b.txt").exists()


def test_error_lines_name_the_flag_and_the_os_problem() -> None:
    from nnunet_pde.errors import NnunetPdeError, error_line

    assert error_line(NnunetPdeError("must be >= 1", "--jobs")) == "error: --jobs: must be >= 1"
    line = error_line(PermissionError(13, "Permission denied", "/x"))
    assert line.startswith("error: /x: Permission denied;") and "\n" not in line
