"""The numerical tests catch the mutations a review of the PDE layer named
(scripts/check_mutations.py: each applied to a copy of the package, its test must fail)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from plan_fixtures import REPO


@pytest.mark.slow
def test_every_named_mutation_fails_its_test():
    listed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_mutations.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    n = len([line for line in listed if line.strip()])
    assert n >= 23, listed  # the list only grows (7 Triton, 1 PCR, 1 kernel-cache mutation)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_mutations.py")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"summary: {n} of {n} mutations caught" in proc.stdout
