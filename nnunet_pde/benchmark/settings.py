"""The settings that ``benchmark report`` and the three robustness regimes share, and where
their outputs go.

:class:`EvaluationSettings` holds which model folders are pooled (configuration, plans, folds),
how they are scored (NSD tolerance, imputation, metrics, workers) and where the outputs go; the
public functions take it as ``settings=`` or its fields as keyword arguments
(``make_report(..., folds=[0, 1], overwrite=True)``). :class:`OutputFiles` writes the files of
one output folder and remembers them, in the order written.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_pde.errors import BenchmarkError
from nnunet_pde.folders import gt_segmentations
from nnunet_pde.metrics import ImputationPolicy

__all__ = ["EvaluationSettings", "OutputFiles", "dataset_references", "evaluate_fold_folder"]


@dataclass(frozen=True)
class EvaluationSettings:
    """Which model folders, how they are scored, and where the outputs go.

    Attributes
    ----------
    configuration, plans, folds
        Which model folders (``<trainer>__<plans>__<configuration>``) and folds to pool.
    output
        Output folder (default: the command's folder under ``$nnUNet_results/<dataset>``).
    overwrite
        Whether outputs of an earlier run may be replaced (otherwise ``FileExistsError``
        before any evaluation).
    tolerance_mm
        NSD tolerance in mm.
    policy
        Imputation of infinite distances (default :class:`ImputationPolicy`'s).
    metrics
        Metrics in the tables and figures (default: the command's).
    num_workers, progress
        Evaluation processes and progress bars (see
        :func:`nnunet_pde.metrics.evaluate.evaluate_folders`).
    environ
        Environment holding the nnU-Net folder variables (default ``os.environ``).
    print_fn
        Where progress lines go.
    """

    configuration: str = "3d_fullres"
    plans: str = "nnUNetPlans"
    folds: Sequence[int | str] = (0, 1, 2, 3, 4)
    output: str | os.PathLike[str] | None = None
    overwrite: bool = False
    tolerance_mm: float = 1.0
    policy: ImputationPolicy | None = None
    metrics: Sequence[str] | None = None
    num_workers: int | None = None
    progress: bool = True
    environ: Mapping[str, str] | None = None
    print_fn: Callable[[str], None] = print

    @classmethod
    def of(cls, settings: EvaluationSettings | None = None, **options: Any) -> EvaluationSettings:
        """``settings`` (default: the defaults) with the fields in ``options`` replaced.

        Raises ``TypeError`` for a name that is not a field, as a keyword argument would.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
        return dataclasses.replace(settings or cls(), **options)

    @property
    def env(self) -> Mapping[str, str]:
        """:attr:`environ`, or ``os.environ``."""
        return os.environ if self.environ is None else self.environ

    @property
    def imputation(self) -> ImputationPolicy:
        """:attr:`policy`, or the default policy."""
        return self.policy or ImputationPolicy()

    def metric_list(self, default: Sequence[str]) -> list[str]:
        """:attr:`metrics`, or ``default`` when None."""
        return list(default if self.metrics is None else self.metrics)

    def output_folder(self, default: Path) -> Path:
        """:attr:`output`, or ``default`` when None."""
        return Path(self.output) if self.output is not None else default


@dataclass
class OutputFiles:
    """The files written into ``folder``, in order."""

    folder: Path
    written: list[Path] = field(default_factory=list)

    def put(self, name: str, writer: Callable[[Path], None]) -> None:
        """Write ``folder / name`` with ``writer(path)`` and record it."""
        path = self.folder / name
        writer(path)
        self.written.append(path)

    def put_text(self, name: str, text: str) -> None:
        """Write UTF-8 ``text`` to ``folder / name``."""
        self.put(name, lambda p: p.write_text(text, encoding="utf-8"))

    def put_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``folder / name``."""
        self.put(name, lambda p: p.write_bytes(data))


def evaluate_fold_folder(
    folder: Path, reference: Path, dataset_json: Path, settings: EvaluationSettings
) -> list[dict[str, Any]]:
    """Per-case rows of the predictions in ``folder`` against ``reference`` (nothing written).

    References without a prediction are left out (a fold's validation folder holds only its
    cases).
    """
    from nnunet_pde.metrics.evaluate import evaluate_folders

    rows, _ = evaluate_folders(
        folder,
        reference,
        dataset_json=dataset_json,
        num_workers=settings.num_workers,
        tolerance_mm=settings.tolerance_mm,
        progress=settings.progress,
        policy=settings.imputation,
        allow_missing_predictions=True,
        write=False,
    )
    return rows


def dataset_references(pre: Path) -> tuple[Path, Path]:
    """``gt_segmentations`` and ``dataset.json`` of a preprocessed dataset folder; a
    BenchmarkError if nnUNetv2_plan_and_preprocess has not written them."""
    gt = gt_segmentations(pre)
    ds_json = pre / "dataset.json"
    if not ds_json.is_file():
        raise BenchmarkError(f"{ds_json} does not exist (nnUNetv2_plan_and_preprocess copies it)")
    return gt, ds_json
