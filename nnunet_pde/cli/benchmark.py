"""``nnunet-pde benchmark run``, ``export``, ``report`` and ``robustness``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnunet_pde.cli.options import (
    add_command,
    command_option,
    device_option,
    evaluation_options,
    extra_args_option,
    imputation_policy,
    overwrite_option,
    positive_int,
    seed_option,
    tolerance_option,
    trainer_grid_options,
    workers_option,
)
from nnunet_pde.errors import BenchmarkError

if TYPE_CHECKING:
    from nnunet_pde.benchmark.outcome import WrittenOutcome

__all__ = ["register_cli"]

_RUN_EXAMPLE = """\
examples:
  # five folds of two trainers on this machine, one training at a time
  nnunet-pde benchmark run 501 --trainers nnUNetTrainerPDE3D nnUNetTrainerPDE3D_Backbone

  # see what would run (finished folds are skipped, interrupted ones get --c)
  nnunet-pde benchmark run 501 --trainers nnUNetTrainerPDE3D --dry-run

  # three repeated trainings of each (trainer, fold), each run in its own results tree
  nnunet-pde benchmark run 501 --trainers nnUNetTrainerPDE3D nnUNetTrainerPDE3D_Backbone \
      --folds 0 --runs 3

  # only run 2 (e.g. on a second machine)
  nnunet-pde benchmark run 501 --trainers nnUNetTrainerPDE3D --folds 0 --run 2

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

  # three repeated trainings per trainer (benchmark run --runs 3): the between-run spread
  nnunet-pde benchmark report 501 --trainers nnUNetTrainerPDE3D_Backbone nnUNetTrainerPDE3D \
      --folds 0 --runs 3

writes per_case_metrics.csv, summary.csv, per_fold.csv, tables.md, tables.tex,
boxplot_dice.png, boxplot_hd95_mm.png, report.html and report.json (with --runs N > 1
also runs.csv) into
$nnUNet_results/<dataset>/nnunet_pde_report (or --output). See docs/benchmarking.md.
"""

_EXPORT_EXAMPLE = """\
examples:
  # a record (per-case metrics + training log, no images) of every finished fold
  nnunet-pde benchmark export 501 --trainers nnUNetTrainerPDE3D nnUNetTrainerPDE3D_Backbone \\
      --folds 0 --runs 3 --output records/

  # later, anywhere, without the results tree: the same report from the records
  nnunet-pde benchmark report 501 --trainers nnUNetTrainerPDE3D_Backbone nnUNetTrainerPDE3D \\
      --folds 0 --runs 3 --records records/ --output report/

Run export again as trainings finish: up-to-date records are kept, new or retrained folds
are (re)written, unfinished folds are listed. See docs/benchmarking.md.
"""


def _check_executor_options(args: argparse.Namespace) -> None:
    """Refuse options of the other executor, and ``--device cuda`` without CUDA."""
    if args.executor == "slurm":
        given = {"--jobs": args.jobs != 1, "--cuda-devices": bool(args.cuda_devices)}
    else:
        given = {
            "--partition": args.partition is not None,
            "--gpus": args.gpus is not None,
            "--time": args.time is not None,
            "--mem": args.mem is not None,
            "--cpus-per-task": args.cpus_per_task is not None,
            "--slurm-folder": args.slurm_folder is not None,
            "--no-wait": args.no_wait,
        }
    if args.executor == "local" and args.device == "cuda" and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise BenchmarkError(
                "cuda: this machine has no CUDA device that torch can use; pass "
                "--device cpu (or mps on Apple silicon), or run on a GPU machine",
                "--device",
            )
    wrong = [k for k, flag_given in given.items() if flag_given]
    if wrong:
        other = "local" if args.executor == "slurm" else "slurm"
        raise BenchmarkError(
            f"{', '.join(wrong)} only apply to --executor {other}, not {args.executor}"
        )


def _executor(args: argparse.Namespace) -> Any:
    """The :mod:`nnunet_pde.commands` executor that ``--executor`` and its options ask for."""
    from nnunet_pde.commands import LocalExecutor, SlurmExecutor, parse_time_minutes

    if args.executor != "slurm":
        return LocalExecutor(jobs=args.jobs, cuda_devices=args.cuda_devices)
    from nnunet_pde.folders import require_env_folder, resolve_dataset_name

    folder = args.slurm_folder
    if folder is None:
        results = require_env_folder("nnUNet_results")
        name = resolve_dataset_name(args.dataset)
        folder = results / name / "nnunet_pde_benchmark" / "slurm"
    return SlurmExecutor(
        folder,
        partition=args.partition,
        gpus=1 if args.gpus is None else args.gpus,
        time_min=parse_time_minutes(args.time or "24:00:00"),
        mem_gb=args.mem,
        cpus_per_task=args.cpus_per_task,
        wait=not args.no_wait,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from nnunet_pde.benchmark.run import run_benchmark
    from nnunet_pde.benchmark.runs import parse_runs

    _check_executor_options(args)
    outcome = run_benchmark(
        args.dataset,
        args.trainers,
        _executor(args),
        configuration=args.configuration,
        plans=args.plans,
        folds=args.folds,
        device=args.device,
        extra_args=shlex.split(args.extra_args or ""),
        train_command=shlex.split(args.train_command),
        dry_run=args.dry_run,
        print_fn=lambda s: print(s, flush=True),
        runs=parse_runs(args.runs, args.run),
        records=args.records,
    )
    if outcome.interrupted:
        return 130
    return 0 if outcome.ok else 1


def _print_written(outcome: WrittenOutcome) -> None:
    """The output folder and the files written into it, after a blank line."""
    print("\n" + "\n".join(outcome.written_lines()))


def _evaluation_settings(args: argparse.Namespace, **fields: Any) -> Any:
    """The :class:`~nnunet_pde.benchmark.settings.EvaluationSettings` of the trainer-grid and
    scoring options that ``export``, ``report`` and ``robustness`` share, plus ``fields``."""
    from nnunet_pde.benchmark.settings import EvaluationSettings

    return EvaluationSettings(
        configuration=args.configuration,
        plans=args.plans,
        folds=args.folds,
        overwrite=args.overwrite,
        tolerance_mm=args.tolerance_mm,
        num_workers=args.workers,
        progress=not args.no_progress,
        print_fn=lambda s: print(s, flush=True),
        **fields,
    )


def _report_settings(args: argparse.Namespace) -> Any:
    """:func:`_evaluation_settings` with the output, imputation and metric options of
    ``report`` and ``robustness``."""
    return _evaluation_settings(
        args,
        output=args.output,
        policy=imputation_policy(args, BenchmarkError),
        metrics=args.metrics,
    )


def _cmd_export(args: argparse.Namespace) -> int:
    from nnunet_pde.benchmark.records import export_records
    from nnunet_pde.benchmark.runs import parse_runs

    outcome = export_records(
        args.dataset,
        args.trainers,
        args.output,
        runs=parse_runs(args.runs, args.run),
        settings=_evaluation_settings(args),
    )
    print("\n" + "\n".join(outcome.summary_lines()))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from nnunet_pde.benchmark.render import run_spread_lines, table_rows
    from nnunet_pde.benchmark.report import TABLES_MD, make_report
    from nnunet_pde.benchmark.runs import parse_runs

    outcome = make_report(
        args.dataset,
        args.trainers,
        reference=args.reference,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        settings=_report_settings(args),
        runs=parse_runs(args.runs),
        records=args.records,
    )
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
    for line in run_spread_lines(outcome.runs, "dice"):
        print(line)
    _print_written(outcome)
    print(f"open {outcome.output / 'report.html'}; tables for the paper: {TABLES_MD}, tables.tex")
    return 0


_ROBUSTNESS_EXAMPLES = {
    "few-labels": """\
example:
  # nnUNetTrainerPDE3D_Frac05 ... _Frac50 and nnUNetTrainerPDE3D (100 %), same for the backbone
  nnunet-pde benchmark robustness few-labels 501 \\
      --trainers nnUNetTrainerPDE3D_Backbone nnUNetTrainerPDE3D --fractions 5 10 25 50

writes per_case.csv, summary.csv, auc.csv, tables.md, robustness.json and one PNG per
metric into $nnUNet_results/<dataset>/nnunet_pde_robustness/few-labels (or --output).
See docs/robustness.md.
""",
    "noisy-labels": """\
example:
  # 501 is clean, 601 and 602 were made by `nnunet-pde derive noisy-labels 501 ...`
  nnunet-pde benchmark robustness noisy-labels --datasets 501 601 602 \\
      --trainers nnUNetTrainerPDE3D_Backbone nnUNetTrainerPDE3D

Always scored against the clean labels (labelsTr of the clean dataset, labelsTr_clean of a
derived one). One curve per corruption mode, x = magnitude_mm, the clean dataset at 0.
Outputs in $nnUNet_results/<clean dataset>/nnunet_pde_robustness/noisy-labels.
""",
    "scanner-shift": """\
example:
  nnunet-pde derive shifted-images 501 --output shift501
  nnunet-pde benchmark robustness scanner-shift 501 --shifted shift501 \\
      --trainers nnUNetTrainerPDE3D_Backbone nnUNetTrainerPDE3D --predict --device cuda

--predict runs nnUNetv2_predict for every missing (trainer, perturbation, level) folder
under shift501/predictions/<trainer>/ (resumable); without it missing predictions are an
error that lists the commands. Outputs in
$nnUNet_results/<dataset>/nnunet_pde_robustness/scanner-shift.
""",
}


def _cmd_robustness(args: argparse.Namespace) -> int:
    from nnunet_pde.benchmark import robustness as rob

    settings = _report_settings(args)
    if args.regime == "few-labels":
        outcome = rob.robustness_few_labels(
            args.dataset, args.trainers, fractions=args.fractions, settings=settings
        )
    elif args.regime == "noisy-labels":
        outcome = rob.robustness_noisy_labels(args.datasets, args.trainers, settings=settings)
    else:
        outcome = rob.robustness_scanner_shift(
            args.dataset,
            args.shifted,
            args.trainers,
            settings,
            predictions=args.predictions,
            predict=args.predict,
            device=args.device,
            extra_args=shlex.split(args.extra_args or ""),
            predict_command=shlex.split(args.predict_command),
        )
    print("\n" + rob.format_auc_overview(outcome))
    if outcome.warnings:
        print(f"\n{len(outcome.warnings)} warning(s), also in {rob.TABLES_MD}:")
        for w in outcome.warnings:
            print(f"  - {w}")
    _print_written(outcome)
    print(f"tables: {outcome.output / rob.TABLES_MD}")
    return 0


_ROBUSTNESS_HELPS = {
    "few-labels": "pool the out-of-fold predictions of <T>_FracNN and of <T> (all labels); "
    "metric vs label fraction",
    "noisy-labels": "the same trainers on a clean dataset and its noisy-label copies, "
    "scored against the clean labels; metric vs noise magnitude per mode",
    "scanner-shift": "test predictions on shifted images (optionally made here with "
    "nnUNetv2_predict); metric vs severity per perturbation",
}


def _scanner_shift_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shifted",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder of nnunet-pde derive shifted-images (nnunet_pde_shift.json)",
    )
    p.add_argument(
        "--predictions",
        type=Path,
        default=None,
        metavar="DIR",
        help="predictions as DIR/<trainer>/clean and DIR/<trainer>/<perturbation>/"
        "level<k> (default: <shifted>/predictions)",
    )
    p.add_argument(
        "--predict",
        action="store_true",
        help="run nnUNetv2_predict for the missing prediction folders (resumable)",
    )
    device_option(p, "nnUNetv2_predict")
    extra_args_option(p, "nnUNetv2_predict", "'-npp 1 -nps 1'")
    command_option(p, "--predict-command", "nnUNetv2_predict", "prediction")


def _register_robustness(sub: Any) -> None:
    rp = sub.add_parser(
        "robustness",
        help="metric vs label fraction, label noise or scanner shift, per trainer",
        description="Robustness comparisons of trainers: `few-labels` (the _FracNN trainers), "
        "`noisy-labels` (datasets from `nnunet-pde derive noisy-labels`, scored against the "
        "clean labels) and `scanner-shift` (test images from `nnunet-pde derive "
        "shifted-images`). Each writes per-case and summary CSVs, the drop from the clean "
        "point, the normalised area under the metric-versus-severity curve (AUC), Markdown "
        "tables and one figure per curve. See docs/robustness.md.",
    )
    rsub = rp.add_subparsers(dest="regime", required=True, metavar="REGIME")
    for regime, text in _ROBUSTNESS_HELPS.items():
        p = add_command(
            rsub,
            regime,
            _cmd_robustness,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=_ROBUSTNESS_EXAMPLES[regime],
        )
        trainer_grid_options(p, dataset=regime != "noisy-labels")
        if regime == "few-labels":
            p.add_argument(
                "--fractions",
                nargs="+",
                default=["5", "10", "25", "50"],
                metavar="PERCENT",
                help="label fractions in percent, the NN of the <T>_FracNN trainers (default "
                "5 10 25 50); 100 %% is <T> itself and always included",
            )
        elif regime == "noisy-labels":
            p.add_argument(
                "--datasets",
                nargs="+",
                required=True,
                metavar="DATASET",
                help="the clean dataset and its noisy-label copies (ids or names)",
            )
        else:
            _scanner_shift_options(p)
        evaluation_options(
            p,
            output_default="$nnUNet_results/<dataset>/nnunet_pde_robustness/" + regime,
            metrics_default=("dice", "hd95_mm"),
        )


def _executor_options(p: argparse.ArgumentParser) -> None:
    """--executor, the local executor's --jobs/--cuda-devices and the SLURM group."""
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="where to run: this machine (default) or SLURM jobs through submitit",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
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


def _run_selection(p: argparse.ArgumentParser, runs_help: str, run_help: str) -> None:
    """``--runs N`` or ``--run R`` (:func:`nnunet_pde.benchmark.runs.parse_runs`)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--runs", type=positive_int, default=None, metavar="N", help=runs_help)
    g.add_argument("--run", type=positive_int, default=None, metavar="R", help=run_help)


def _register_run(sub: Any) -> None:
    p = add_command(
        sub,
        "run",
        _cmd_run,
        help="run nnUNetv2_train for every (trainer, fold); resumable",
        description="Run `nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS` for "
        "every trainer and fold. Finished folds (checkpoint_final.pth and "
        "validation/summary.json) are skipped; folds with a checkpoint but not finished are "
        "continued with --c. Writes a manifest (commands, times, exit codes, versions, git "
        "revision) and one log per fold to $nnUNet_results/<dataset>/nnunet_pde_benchmark/. "
        "Exit code 0 when every fold is finished, 1 when one failed, 2 for bad input.",
        epilog=_RUN_EXAMPLE,
    )
    trainer_grid_options(p)
    device_option(p, "nnUNetv2_train")
    _executor_options(p)
    extra_args_option(p, "nnUNetv2_train", "--extra-args '--npz'")
    command_option(p, "--train-command", "nnUNetv2_train", "training")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the decisions and the commands; run and write nothing",
    )
    _run_selection(
        p,
        "repeated trainings: train runs 1..N of every (trainer, fold), run 1 in "
        "$nnUNet_results, run r in $nnUNet_results/nnunet_pde_runs/run_r (default 1)",
        "train only run R (its results tree as for --runs)",
    )
    p.add_argument(
        "--records",
        type=Path,
        default=None,
        metavar="DIR",
        help="also skip the folds that have a record in DIR (`benchmark export --output "
        "DIR`), e.g. trained on another machine whose results tree is gone",
    )


def _register_export(sub: Any) -> None:
    p = add_command(
        sub,
        "export",
        _cmd_export,
        help="write a small record (per-case metrics, training log) of every finished fold",
        description="For every finished (run, trainer, fold) (checkpoint_final.pth and "
        "validation/summary.json), evaluate its validation predictions as `benchmark report` "
        "does and write <output>/<trainer>__<plans>__<configuration>/run_<r>/fold_<k>/ with "
        "metrics_per_case.csv and record.json (cases, settings, nnU-Net's per-epoch logger). "
        "No image and no weight is copied. `benchmark report --records OUTPUT` builds the "
        "report from them without the results tree.",
        epilog=_EXPORT_EXAMPLE,
    )
    trainer_grid_options(p)
    p.add_argument("--output", type=Path, required=True, help="records folder (created if missing)")
    _run_selection(p, "export runs 1..N of `benchmark run --runs N` (default 1)", "only run R")
    overwrite_option(p, "rewrite every record (default: only those whose checkpoint changed)")
    tolerance_option(p)
    workers_option(p)


def _register_report(sub: Any) -> None:
    p = add_command(
        sub,
        "report",
        _cmd_report,
        help="tables, statistics, box plots and an HTML page of the cross-validation results",
        description="Pool every trainer's out-of-fold predictions (fold_X/validation, each "
        "case once), evaluate them against $nnUNet_preprocessed/<dataset>/gt_segmentations "
        "with nnunet-pde's metrics (Dice, HD95, NSD, ASSD ...; docs/evaluation.md) and write: "
        "per-case CSV; per trainer and region mean ± SD, bootstrap 95% CI of the mean and "
        "paired Wilcoxon signed-rank tests against --reference with Holm correction (CSV, "
        "Markdown, LaTeX); per-fold means; box plots of Dice and HD95; a self-contained HTML "
        "page.",
        epilog=_REPORT_EXAMPLE,
    )
    trainer_grid_options(p)
    p.add_argument(
        "--reference",
        default=None,
        help="trainer the others are tested against (default: the first of --trainers)",
    )
    evaluation_options(
        p,
        output_default="$nnUNet_results/<dataset>/nnunet_pde_report",
        metrics_default=("dice", "hd95_mm", "nsd", "assd_mm"),
    )
    p.add_argument(
        "--bootstrap",
        type=positive_int,
        default=10_000,
        help="bootstrap resamples (default 10000)",
    )
    seed_option(p, "bootstrap seed (default 0)")
    p.add_argument(
        "--runs",
        type=positive_int,
        default=None,
        metavar="N",
        help="pool runs 1..N of `benchmark run --runs N`: per-case statistics on each case's "
        "mean over the runs, plus the between-run spread of every metric and Welch tests of "
        "the run means (runs.csv; default 1)",
    )
    p.add_argument(
        "--records",
        type=Path,
        default=None,
        metavar="DIR",
        help="build the report from the fold records of `benchmark export --output DIR` "
        "instead of the results tree ($nnUNet_results/_preprocessed are then not needed; "
        "default output DIR/report)",
    )


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``benchmark`` (``run``, ``export``, ``report``, ``robustness``) to an argparse
    subparsers object."""
    bench = subparsers.add_parser(
        "benchmark",
        help="train a cross-validation grid of trainers (run), compare them (report) and their "
        "robustness (robustness)",
        description="Cross-validation benchmarking of several trainers: `run` trains every "
        "(trainer, fold) with nnUNetv2_train, locally or on SLURM, resumably; `export` "
        "keeps a small record of each finished fold; `report` pools "
        "the out-of-fold predictions and writes tables with statistics, box plots and an HTML "
        "page; `robustness` compares them with few labels, noisy labels or shifted test "
        "images. See docs/benchmarking.md and docs/robustness.md.",
    )
    sub = bench.add_subparsers(dest="benchmark_command", required=True, metavar="ACTION")
    _register_run(sub)
    _register_export(sub)
    _register_report(sub)
    _register_robustness(sub)
    return bench
