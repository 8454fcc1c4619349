"""Fake nnU-Net folder trees for the benchmark tests (no training).

* :func:`make_nnunet_env` - ``nnUNet_raw/_preprocessed/_results`` folders with a planned
  dataset (plans file, dataset.json, splits, ``gt_segmentations``) and the environment that
  points at them;
* :func:`write_fake_trainer` - a stand-in for ``nnUNetv2_train`` that writes what a finished
  fold has (``checkpoint_final.pth``, ``validation/summary.json``) and logs its arguments;
* :func:`write_fold_predictions` - out-of-fold predictions of a trainer from label maps.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir

DATASET = "Dataset987_BenchFake"
PLANS = "nnUNetPlans"
CONF = "3d_fullres"
SHAPE = (12, 12, 12)
SPACING = (2.0, 1.0, 1.0)  # mm, numpy axis order (z, y, x)
CASES = [f"case_{i:03d}" for i in range(10)]
LABELS = {"background": 0, "organ": 1, "lesion": 2}


def splits(cases: Sequence[str] = CASES, n_folds: int = 5) -> list[dict[str, list[str]]]:
    """Folds of consecutive cases (fold k validates cases 2k and 2k+1 for 10 cases)."""
    per = len(cases) // n_folds
    out = []
    for k in range(n_folds):
        val = list(cases[k * per : (k + 1) * per])
        out.append({"train": [c for c in cases if c not in val], "val": val})
    return out


def reference_map(i: int) -> np.ndarray:
    """Reference label map of case ``i``: an organ box with a lesion box inside."""
    seg = np.zeros(SHAPE, dtype=np.uint8)
    a = 2 + i % 3
    seg[2:10, a : a + 6, 2:9] = 1
    seg[4:7, a + 1 : a + 4, 3:6] = 2
    return seg


def write_seg(path: Path, seg: np.ndarray, spacing: Sequence[float] = SPACING) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(seg.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK wants x, y, z
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def make_nnunet_env(root: Path, with_gt: bool = True) -> dict[str, str]:
    """Create the three nnU-Net folders with a planned fake dataset; return the environment."""
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    for p in (raw / DATASET, pre / DATASET, res):
        p.mkdir(parents=True, exist_ok=True)
    ds = {
        "channel_names": {"0": "MR"},
        "labels": LABELS,
        "numTraining": len(CASES),
        "file_ending": ".nii.gz",
    }
    for folder in (raw / DATASET, pre / DATASET):
        (folder / "dataset.json").write_text(json.dumps(ds))
    (pre / DATASET / f"{PLANS}.json").write_text(
        json.dumps({"plans_name": PLANS, "configurations": {CONF: {}, "2d": {}}})
    )
    (pre / DATASET / "splits_final.json").write_text(json.dumps(splits()))
    if with_gt:
        for i, c in enumerate(CASES):
            write_seg(pre / DATASET / "gt_segmentations" / f"{c}.nii.gz", reference_map(i))
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(pre),
        nnUNet_results=str(res),
        **{EXT_TRAINER_VAR: str(trainer_dir())},
    )
    # The venv's commands (nnUNetv2_train, ...) first, as after activating it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


FAKE_TRAINER = textwrap.dedent(
    '''\
    """Stand-in for nnUNetv2_train: writes a finished fold and logs its arguments."""
    import json, os, sys, time, zipfile
    from pathlib import Path

    def fake_checkpoint(path):  # a complete (empty) PyTorch archive, as torch.save writes
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"")

    args = sys.argv[1:]
    dataset, conf, fold = args[0], args[1], args[2]
    tr = args[args.index("-tr") + 1]
    plans = args[args.index("-p") + 1]
    calls = Path(os.environ["FAKE_TRAIN_CALLS"])
    with open(calls, "a") as fh:
        fh.write(json.dumps(args) + "\\n")
    print("fake training", " ".join(args), flush=True)
    out = Path(os.environ["nnUNet_results"]) / dataset / f"{tr}__{plans}__{conf}" / f"fold_{fold}"
    out.mkdir(parents=True, exist_ok=True)
    fake_checkpoint(out / "checkpoint_latest.pth")  # as after nnU-Net's first epoch
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")))
    if f"{tr}/fold_{fold}" in os.environ.get("FAKE_TRAIN_FAIL", "").split(","):
        print("fake failure", file=sys.stderr)
        sys.exit(3)
    (out / "validation").mkdir(parents=True, exist_ok=True)
    fake_checkpoint(out / "checkpoint_final.pth")
    (out / "checkpoint_latest.pth").unlink()
    (out / "validation" / "summary.json").write_text("{}")
    '''
)


def write_fake_trainer(folder: Path) -> tuple[str, Path]:
    """Write the fake trainer; return (train command string, file listing the calls)."""
    script = folder / "fake_nnunetv2_train.py"
    script.write_text(FAKE_TRAINER)
    calls = folder / "fake_train_calls.jsonl"
    return f"{sys.executable} {script}", calls


def read_calls(calls: Path) -> list[list[str]]:
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines() if line.strip()]


def write_fold_predictions(
    results: Path,
    trainer: str,
    predict: Callable[[int, np.ndarray], np.ndarray],
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    split: Sequence[Mapping[str, Sequence[str]]] | None = None,
) -> Path:
    """Write ``fold_k/validation/<case>.nii.gz`` = ``predict(i, reference_map(i))``."""
    split = split or splits()
    model = results / DATASET / f"{trainer}__{PLANS}__{CONF}"
    for k in folds:
        val = model / f"fold_{k}" / "validation"
        for c in split[k]["val"]:
            i = CASES.index(c)
            write_seg(val / f"{c}.nii.gz", predict(i, reference_map(i)))
        (val / "summary.json").write_text("{}")
        write_fake_checkpoint(model / f"fold_{k}" / "checkpoint_final.pth")
    return model


def write_fake_checkpoint(path: Path, logging: Mapping[str, list] | None = None) -> None:
    """A real, tiny PyTorch checkpoint (no weights): what benchmark run accepts as a finished
    fold, with nnU-Net's ``logging`` entry set to ``logging`` (default empty)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"logging": dict(logging or {})}, path)
