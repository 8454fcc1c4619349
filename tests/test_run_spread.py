"""scripts/run_spread.py: run means, spread between runs, differences from the reference."""

from __future__ import annotations

import csv
import importlib.util

import pytest
from plan_fixtures import REPO

spec = importlib.util.spec_from_file_location("run_spread", REPO / "scripts" / "run_spread.py")
run_spread = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_spread)


def _write(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["trainer", "region", "dice", "hd95_mm"])
        w.writeheader()
        w.writerows(rows)


def test_spread_and_differences(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _write(
        a,
        [
            {"trainer": "ref", "region": "R", "dice": 0.5, "hd95_mm": "inf"},
            {"trainer": "ref", "region": "R", "dice": 0.7, "hd95_mm": 2.0},
            {"trainer": "new", "region": "R", "dice": 0.8, "hd95_mm": 1.0},
        ],
    )
    _write(
        b,
        [
            {"trainer": "ref", "region": "R", "dice": 0.4, "hd95_mm": 3.0},
            {"trainer": "new", "region": "R", "dice": 0.6, "hd95_mm": 1.0},
        ],
    )
    assert (
        run_spread.main([str(a), str(b), "--reference", "ref", "--json", str(tmp_path / "o.json")])
        == 0
    )
    rows = {
        (r["metric"], r["trainer"]): r
        for r in run_spread.spread_table(
            [run_spread.run_means(p, ["dice", "hd95_mm"]) for p in (a, b)],
            "ref",
            ["dice", "hd95_mm"],
        )
    }
    assert rows[("dice", "ref")]["run_means"] == pytest.approx([0.6, 0.4])
    assert rows[("dice", "ref")]["spread"] == pytest.approx(0.2)
    assert rows[("dice", "new")]["minus_reference"] == pytest.approx([0.2, 0.2])
    assert rows[("hd95_mm", "ref")]["run_means"] == pytest.approx([2.0, 3.0])  # inf left out
    assert "spread between runs" in capsys.readouterr().out


def test_needs_two_existing_runs(tmp_path, capsys):
    assert run_spread.main([str(tmp_path / "a.csv"), "--reference", "x"]) == 2
    assert (
        run_spread.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--reference", "x"]) == 2
    )
    assert capsys.readouterr().err.count("error:") == 2
