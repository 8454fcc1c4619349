#!/usr/bin/env python
"""Wall time of ``nnUNetv2_predict`` for PDE3D against the stock trainer, same input folder.

Runs the real command for each trainer (the first is the reference), alternating the
trainers rep by rep (and who goes first) so drifts of the machine hit all alike, each run
into a fresh output folder. Needs trained folds in ``$nnUNet_results`` (for example
``nnunet-pde benchmark run`` or ``nnUNetv2_train`` of both trainers). Prints one line per
run and a table of median wall times, their ratios to the first trainer and the median of
the per-rep ratios (the runs of one rep are back to back); with
``--output`` writes the same as JSON. Inputs are never modified; outputs go to a
temporary folder that is removed at the end.

Example (the figures of docs/performance.md; MSD Hippocampus test cases)::

    python scripts/benchmark_predict.py -i $nnUNet_raw/Dataset004_Hippocampus/imagesTr \\
        --cases 20 -d 4 -c 3d_fullres -f 0 --reps 3 \\
        -tr nnUNetTrainer_6epochs_6iters_noTTA nnUNetTrainerPDE3D_6epochs_6iters_noTTA \\
        --output docs/results/predict_timing.json

Exit code 0 on success, 2 for bad arguments (with ``error: ...`` on stderr), 1 when a
prediction fails (its stderr tail is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class PredictBenchmarkError(ValueError):
    """Bad input the user can fix (reported as ``error: ...``, exit code 2)."""


def case_files(folder: Path, cases: int | None) -> list[Path]:
    """The first ``cases`` nnU-Net inputs of ``folder`` (all channels of each case)."""
    if not folder.is_dir():
        raise PredictBenchmarkError(f"-i: not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii", ".mha")))
    if not files:
        raise PredictBenchmarkError(f"-i: no .nii.gz/.nii/.mha images in {folder}")
    ids = sorted({p.name.rsplit("_", 1)[0] for p in files})
    if cases is not None:
        if cases < 1:
            raise PredictBenchmarkError(f"--cases must be >= 1, got {cases}")
        ids = ids[:cases]
    keep = set(ids)
    return [p for p in files if p.name.rsplit("_", 1)[0] in keep]


def predict_command(args: argparse.Namespace, trainer: str, inp: Path, out: Path) -> list[str]:
    cmd = [
        "nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", args.dataset,
        "-c", args.configuration, "-tr", trainer, "-f", *args.folds,
        "-device", args.device, "-npp", str(args.processes), "-nps", str(args.processes),
    ]  # fmt: skip
    if args.plans:
        cmd += ["-p", args.plans]
    if args.disable_tta:
        cmd.append("--disable_tta")
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmark_predict.py",
        description="nnUNetv2_predict wall time of several trainers on one input folder, "
        "alternated; ratios to the first trainer.",
    )
    p.add_argument("-i", "--input", type=Path, required=True, help="folder of input images")
    p.add_argument("--cases", type=int, default=None, help="use the first N cases (default all)")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default=None, help="plans identifier (default nnU-Net's)")
    p.add_argument(
        "-tr", "--trainers", nargs="+", required=True, help="trainers; the first is the reference"
    )
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="folds (default 0)")
    p.add_argument("--reps", type=int, default=3, help="runs per trainer (default 3)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="nnUNetv2_predict -npp/-nps (default 1: fewer processes, steadier timing)",
    )
    p.add_argument(
        "--tta", dest="disable_tta", action="store_false", help="keep test-time mirroring"
    )
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        if args.reps < 1:
            raise PredictBenchmarkError(f"--reps must be >= 1, got {args.reps}")
        if len(set(args.trainers)) != len(args.trainers):
            raise PredictBenchmarkError("-tr: a trainer is named twice")
        if shutil.which("nnUNetv2_predict") is None:
            raise PredictBenchmarkError("nnUNetv2_predict is not on PATH (activate the venv)")
        if not os.environ.get("nnUNet_results"):
            raise PredictBenchmarkError("$nnUNet_results is not set")
        files = case_files(args.input, args.cases)
    except PredictBenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {t: [] for t in args.trainers}
    with tempfile.TemporaryDirectory(prefix="nnunet_pde_predict_") as tmp:
        inp = Path(tmp) / "input"
        inp.mkdir()
        for f in files:
            (inp / f.name).symlink_to(f.resolve())
        n_cases = len({f.name.rsplit("_", 1)[0] for f in files})
        print(f"{n_cases} case(s) from {args.input}; {args.reps} rep(s) x {len(times)} trainers")
        for r in range(args.reps):
            order = args.trainers if r % 2 == 0 else args.trainers[::-1]
            for trainer in order:
                out = Path(tmp) / f"out_{r}_{trainer}"
                cmd = predict_command(args, trainer, inp, out)
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
                if proc.returncode != 0:
                    print(f"nnUNetv2_predict failed for {trainer}:", file=sys.stderr)
                    print("\n".join(proc.stderr.splitlines()[-15:]), file=sys.stderr)
                    return 1
                times[trainer].append(seconds)
                print(f"rep {r + 1}/{args.reps} {trainer}: {seconds:.1f} s", flush=True)
                shutil.rmtree(out)
    reference = times[args.trainers[0]]
    ref = statistics.median(reference)
    print(f"\n{'trainer':<50} {'median':>9} {'ratio':>7} {'paired':>7}")
    summary = {}
    for t, v in times.items():
        med = statistics.median(v)
        # Each rep ran the trainers back to back: their ratio sees the same machine state.
        paired = statistics.median(a / r for a, r in zip(v, reference, strict=True))
        summary[t] = {
            "times_s": v,
            "median_s": med,
            "ratio_to_reference": med / ref,
            "paired_ratio_median": paired,
        }
        print(f"{t:<50} {med:>7.1f} s {med / ref:>7.3f} {paired:>7.3f}")
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cases": n_cases,
        "reference": args.trainers[0],
        "trainers": summary,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
