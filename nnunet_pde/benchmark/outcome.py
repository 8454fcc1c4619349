"""What a report command wrote: the base of ``benchmark report``'s and ``benchmark
robustness``'s outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class WrittenOutcome:
    """The output folder, the files written into it and the rows they hold.

    Attributes
    ----------
    output, files
        The output folder and every file written into it (in the order written).
    per_case, summary
        The rows of the per-case CSV and of ``summary.csv``.
    meta
        What the JSON record holds besides the rows (settings, software, warnings ...).
    """

    output: Path
    files: list[Path]
    per_case: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    meta: dict[str, Any]

    def written_lines(self) -> list[str]:
        """``wrote N files to DIR:`` and one indented line per file name."""
        return [
            f"wrote {len(self.files)} files to {self.output}:",
            *(f"  {f.name}" for f in self.files),
        ]
