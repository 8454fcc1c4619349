"""``nnunet-pde benchmark run`` and ``nnunet-pde benchmark report``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from nnunet_pde.benchmark.layout import BenchmarkError

__all__ = ["register_cli"]

_RUN_EXAMPLE = """\
examples:
  # five folds of two trainers on this machine, one training at a time
  nnunet-pde benchmark run 501 --trainers nnUNetTrainerPDE3D nnUNetTrainerPDE3D_Backbone

  # see what would run (finished folds are skipped, interrupted ones get --c)
  nnunet-pde benchmark run 501 --trainers nnUNetTrainerPDE3D --dry-run

  # on a SLURM cluster: one job per (trainer, fold), 1 GPU and 24 h each
  nnunet-pde benchmark run 501 --trainers nnUNetTrainerPDE3D nnUNetTrainerPDE3D_Backbone \\
      --executor slurm --partition gpu --gpus 1 --time 24:00:00 --mem 64

Run the same command again after an interruption or a failure: finished folds are skipped.
Manifests and logs: $nnUNet_results/<dataset>/nnunet_pde_benchmark/. See docs/benchmarking.md.
"""

_REPORT_EXAMPLE = """\
example:
  nnunet-pde benchmark report 501 \\
      --trainers nnUNetTrainerPDE3D_Backbone nnUNetTrainerPDE3D nnUNetTrainerPDE3D_LossOnly \\
      --reference nnUNetTrainerPDE3D_Backbone --impute worst --worst-value 373.13

writes per_case_metrics.csv, summary.csv, per_fold.csv, tables.md, tables.tex,
boxplot_dice.png, boxplot_hd95_mm.png, report.html and report.json into
$nnUNet_results/<dataset>/nnunet_pde_report (or --output). See docs/benchmarking.md.
"""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset id (e.g. 501) or name (Dataset501_SyntheticBraTS)")
    p.add_argument(
        "-c",
        "--configuration",
        default="3d_fullres",
        help="nnU-Net configuration (default 3d_fullres)",
    )
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans (default nnUNetPlans)")
    p.add_argument(
        "--trainers",
        nargs="+",
        required=True,
        metavar="TRAINER",
        help="trainer class names, as for nnUNetv2_train -tr",
    )
    p.add_argument(
        "--folds",
        nargs="+",
        default=["0", "1", "2", "3", "4"],
        metavar="FOLD",
        help="folds (default 0 1 2 3 4)",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from nnunet_pde.benchmark.executors import LocalExecutor, SlurmExecutor, parse_time_minutes
    from nnunet_pde.benchmark.run import run_benchmark

    try:
        if args.executor == "slurm":
            slurm_opts = {"--jobs": args.jobs != 1, "--cuda-devices": bool(args.cuda_devices)}
        else:
            slurm_opts = {
                "--partition": args.partition is not None,
                "--gpus": args.gpus is not None,
                "--time": args.time is not None,
                "--mem": args.mem is not None,
                "--cpus-per-task": args.cpus_per_task is not None,
                "--slurm-folder": args.slurm_folder is not None,
                "--no-wait": args.no_wait,
            }
        wrong = [k for k, given in slurm_opts.items() if given]
        if wrong:
            other = "local" if args.executor == "slurm" else "slurm"
            raise BenchmarkError(
                f"{', '.join(wrong)} only apply to --executor {other}, not {args.executor}"
            )
        if args.executor == "slurm":
            from nnunet_pde.benchmark.layout import require_env_folder, resolve_dataset_name

            folder = args.slurm_folder
            if folder is None:
                results = require_env_folder("nnUNet_results")
                name = resolve_dataset_name(args.dataset)
                folder = results / name / "nnunet_pde_benchmark" / "slurm"
            executor: Any = SlurmExecutor(
                folder,
                partition=args.partition,
                gpus=1 if args.gpus is None else args.gpus,
                time_min=parse_time_minutes(args.time or "24:00:00"),
                mem_gb=args.mem,
                cpus_per_task=args.cpus_per_task,
                wait=not args.no_wait,
            )
        else:
            executor = LocalExecutor(jobs=args.jobs, cuda_devices=args.cuda_devices)
        outcome = run_benchmark(
            args.dataset,
            args.trainers,
            executor,
            configuration=args.configuration,
            plans=args.plans,
            folds=args.folds,
            device=args.device,
            extra_args=shlex.split(args.extra_args or ""),
            train_command=shlex.split(args.train_command),
            dry_run=args.dry_run,
            print_fn=lambda s: print(s, flush=True),
        )
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if outcome.interrupted:
        return 130
    return 0 if outcome.ok else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from nnunet_pde.benchmark.report import make_report
    from nnunet_pde.metrics import ImputationPolicy

    try:
        if args.worst_value is not None and args.impute != "worst":
            raise BenchmarkError("--worst-value only applies to --impute worst")
        if args.impute == "worst" and args.worst_value is None:
            raise BenchmarkError("--impute worst needs --worst-value MM (e.g. 373.13 as in BraTS)")
        outcome = make_report(
            args.dataset,
            args.trainers,
            configuration=args.configuration,
            plans=args.plans,
            folds=args.folds,
            reference=args.reference,
            output=args.output,
            overwrite=args.overwrite,
            tolerance_mm=args.tolerance_mm,
            policy=ImputationPolicy(args.impute, args.worst_value),
            metrics=args.metrics,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            num_workers=args.workers,
            progress=not args.no_progress,
            print_fn=lambda s: print(s, flush=True),
        )
    except (BenchmarkError, ValueError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from nnunet_pde.benchmark.report import TABLES_MD, table_rows

    dice_rows = table_rows(outcome.summary, "dice")
    if dice_rows:
        width = [max(len(r[i]) for r in dice_rows) for i in range(5)]
        print("\nDice (mean ± SD, 95% CI, p Holm vs reference):")
        for r in dice_rows:
            print(
                "  "
                + "  ".join(r[i].ljust(width[i]) for i in range(5))
                + (f"  p_Holm={r[7]}" if r[7] else "  (reference)")
            )
    print(f"\nwrote {len(outcome.files)} files to {outcome.output}:")
    for f in outcome.files:
        print(f"  {f.name}")
    print(f"open {outcome.output / 'report.html'}; tables for the paper: {TABLES_MD}, tables.tex")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``benchmark`` (with ``run`` and ``report``) to an argparse subparsers object."""
    bench = subparsers.add_parser(
        "benchmark",
        help="train a cross-validation grid of trainers (run) and compare them (report)",
        description="Cross-validation benchmarking of several trainers: `run` trains every "
        "(trainer, fold) with nnUNetv2_train, locally or on SLURM, resumably; `report` pools "
        "the out-of-fold predictions and writes tables with statistics, box plots and an HTML "
        "page. See docs/benchmarking.md.",
    )
    sub = bench.add_subparsers(dest="benchmark_command", required=True, metavar="ACTION")

    p = sub.add_parser(
        "run",
        help="run nnUNetv2_train for every (trainer, fold); resumable",
        description="Run `nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS` for "
        "every trainer and fold. Finished folds (checkpoint_final.pth and "
        "validation/summary.json) are skipped; folds with a checkpoint but not finished are "
        "continued with --c. Writes a manifest (commands, times, exit codes, versions, git "
        "revision) and one log per fold to $nnUNet_results/<dataset>/nnunet_pde_benchmark/. "
        "Exit code 0 when every fold is finished, 1 when one failed, 2 for bad input.",
        epilog=_RUN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--device",
        default=None,
        help="nnUNetv2_train -device (cuda, cpu, mps; default: nnU-Net's, cuda)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="where to run: this machine (default) or SLURM jobs through submitit",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="local executor: trainings at once (default 1; each takes a GPU's memory)",
    )
    p.add_argument(
        "--cuda-devices",
        nargs="+",
        default=None,
        metavar="ID",
        help="local executor: GPUs to share out, one training per GPU at a time "
        "(CUDA_VISIBLE_DEVICES=ID each), e.g. --cuda-devices 0 1 2 3",
    )
    g = p.add_argument_group("slurm executor")
    g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    g.add_argument(
        "--gpus", type=int, default=None, help="GPUs per job (default 1; 0 for CPU-only jobs)"
    )
    g.add_argument(
        "--time",
        default=None,
        help="time limit per job: MINUTES, HH:MM:SS or D-HH:MM:SS (default 24:00:00)",
    )
    g.add_argument("--mem", type=float, default=None, help="memory per job in GB")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per job")
    g.add_argument(
        "--slurm-folder",
        type=Path,
        default=None,
        help="submitit's folder for job scripts and SLURM output, on a shared file system "
        "(default $nnUNet_results/<dataset>/nnunet_pde_benchmark/slurm)",
    )
    g.add_argument(
        "--no-wait",
        action="store_true",
        help="submit the jobs and return (the manifest records the job ids)",
    )
    p.add_argument(
        "--extra-args",
        default="",
        metavar="'ARGS'",
        help="more nnUNetv2_train arguments, one quoted string, e.g. --extra-args '--npz'",
    )
    p.add_argument(
        "--train-command",
        default="nnUNetv2_train",
        metavar="'CMD'",
        help="the training command, e.g. 'apptainer exec nnunet.sif nnUNetv2_train' "
        "(default nnUNetv2_train)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the decisions and the commands; run and write nothing",
    )
    p.set_defaults(func=_cmd_run)

    from nnunet_pde.metrics import IMPUTATION_POLICIES

    p = sub.add_parser(
        "report",
        help="tables, statistics, box plots and an HTML page of the cross-validation results",
        description="Pool every trainer's out-of-fold predictions (fold_X/validation, each "
        "case once), evaluate them against $nnUNet_preprocessed/<dataset>/gt_segmentations "
        "with nnunet-pde's metrics (Dice, HD95, NSD, ASSD ...; docs/evaluation.md) and write: "
        "per-case CSV; per trainer and region mean ± SD, bootstrap 95% CI of the mean and "
        "paired Wilcoxon signed-rank tests against --reference with Holm correction (CSV, "
        "Markdown, LaTeX); per-fold means; box plots of Dice and HD95; a self-contained HTML "
        "page.",
        epilog=_REPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--reference",
        default=None,
        help="trainer the others are tested against (default: the first of --trainers)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="output folder (default $nnUNet_results/<dataset>/nnunet_pde_report)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")
    p.add_argument(
        "--tolerance-mm", type=float, default=1.0, help="NSD tolerance in mm (default 1.0)"
    )
    p.add_argument(
        "--impute",
        choices=IMPUTATION_POLICIES,
        default="volume_diagonal",
        help="what infinite distances (one mask empty) count as: left out, --worst-value "
        "mm, or the image diagonal (default volume_diagonal)",
    )
    p.add_argument(
        "--worst-value",
        type=float,
        default=None,
        metavar="MM",
        help="the value in mm for --impute worst (BraTS uses 373.13)",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["dice", "hd95_mm", "nsd", "assd_mm"],
        metavar="METRIC",
        help="metrics in the tables (default dice hd95_mm nsd assd_mm; also hausdorff_mm, "
        "precision, recall, pred_volume_mm3, ref_volume_mm3)",
    )
    p.add_argument(
        "--bootstrap",
        type=_positive_int,
        default=10_000,
        help="bootstrap resamples (default 10000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="evaluation processes (default: CPUs, at most 8)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_report)
    return bench
