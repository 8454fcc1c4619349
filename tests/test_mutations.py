"""The numerical tests catch the mutations a review of the PDE layer named
(scripts/check_mutations.py: each applied to a copy of the package, its test must fail)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from plan_fixtures import REPO


@pytest.mark.slow
def test_every_named_mutation_fails_its_test():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_mutations.py")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary: 15 of 15 mutations caught" in proc.stdout
