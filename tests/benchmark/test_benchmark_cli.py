"""The ``benchmark`` command line: help texts with examples, and the wiring into ``nnunet-pde``."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("run", ["--trainers", "--executor", "--dry-run", "--partition", "examples:"]),
        ("report", ["--reference", "--impute", "--overwrite", "--tolerance-mm", "example:"]),
    ],
)
def test_help_has_options_and_an_example(action: str, expected: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nnunet_pde.cli", "benchmark", action, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for text in expected:
        assert text in proc.stdout
    assert f"nnunet-pde benchmark {action}" in proc.stdout


def test_nnunet_pde_has_the_benchmark_subcommand() -> None:
    from nnunet_pde.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["benchmark", "run", "501", "--trainers", "T", "--dry-run"])
    assert args.dry_run and args.trainers == ["T"] and args.folds == ["0", "1", "2", "3", "4"]
    args = parser.parse_args(["benchmark", "report", "501", "--trainers", "A", "B"])
    assert args.reference is None and args.impute == "volume_diagonal"
