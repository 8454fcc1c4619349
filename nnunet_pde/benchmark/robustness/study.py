"""What a robustness regime declares, for :func:`~nnunet_pde.benchmark.robustness.pipeline.run`.

A regime (few labels, noisy labels, scanner shift) is a :class:`Study`: it checks its own
arguments when it is made, then declares its points (:class:`Point`: which predictions are
scored against which references, at which level of which curve), its curves and what the
outputs record about it. The pipeline runs the same steps for every regime, in one order
(see :func:`~nnunet_pde.benchmark.robustness.pipeline.run`); the three hooks with a default
(:meth:`Study.input_warnings`, :meth:`Study.make_predictions`, :meth:`Study.check_conditions`)
are where a regime adds what only it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nnunet_pde.benchmark.robustness.model import Condition, Curve
from nnunet_pde.benchmark.settings import EvaluationSettings


@dataclass(frozen=True)
class StudyInputs:
    """The checked arguments every regime shares.

    Attributes
    ----------
    trainers, folds, metrics
        Checked trainer names, fold numbers and metric names (in the order given).
    results
        ``$nnUNet_results``: the models, and the default output folder
        ``<results>/<dataset>/nnunet_pde_robustness/<regime>``.
    settings
        Configuration, plans, output folder, imputation and the rest.
    """

    trainers: list[str]
    folds: list[int]
    metrics: list[str]
    results: Path
    settings: EvaluationSettings


@dataclass(frozen=True)
class Point:
    """One (trainer, level) as a regime declares it; the pipeline finds its predictions.

    Attributes
    ----------
    trainer, key, curve, level, label
        As in :class:`~nnunet_pde.benchmark.robustness.model.Condition`.
    point
        The id the curves name this point by (:attr:`Curve.points`), the same for every
        trainer; default ``key``. The condition is found as ``(trainer, point)``.
    reference, dataset_json
        The reference label folder and the ``dataset.json`` with the labels or regions.
    file_ending
        Of the predictions and references (``.nii.gz``).
    dataset, model
        Out-of-fold predictions: the validation predictions of the model folder
        ``$nnUNet_results/<dataset>/<model>__<plans>__<configuration>/fold_<k>/validation``,
        pooled over the folds (each case once).
    predictions
        Test-set predictions instead: this one folder (``dataset`` and ``model`` are then
        unused).
    info
        Facts about the point recorded in ``robustness.json`` (after the pooling record).
    """

    trainer: str
    key: str
    curve: str
    level: float
    label: str
    reference: Path
    dataset_json: Path
    file_ending: str
    dataset: str = ""
    model: str = ""
    predictions: Path | None = None
    point: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study(ABC):
    """A robustness regime: what it scores, made and checked by the regime's function.

    Subclasses (frozen dataclasses too) set :attr:`regime`, :attr:`heading`, :attr:`axis` and
    :attr:`clean_level`, and add their own fields after :attr:`inputs` and :attr:`dataset`.

    Attributes
    ----------
    inputs
        The checked arguments every regime shares.
    dataset
        The dataset whose results folder holds the default output, named in the title.
    """

    #: ``few-labels``, ``noisy-labels`` or ``scanner-shift`` (also the default output folder).
    regime: ClassVar[str]
    #: The title without the dataset (``Robustness to few labels``).
    heading: ClassVar[str]
    #: The x axis of every curve, as the tables name it.
    axis: ClassVar[str]
    #: The x value of the clean point of every curve.
    clean_level: ClassVar[float]

    inputs: StudyInputs
    dataset: str

    @abstractmethod
    def points(self) -> list[Point]:
        """Every (trainer, level) to score, trainer by trainer."""

    @abstractmethod
    def curves(self) -> list[Curve]:
        """The curves: points given as (level, condition key), the clean one included."""

    @abstractmethod
    def meta(self) -> dict[str, Any]:
        """What ``robustness.json`` records about this regime (after configuration, plans
        and folds), ``how`` included."""

    def input_warnings(self) -> list[str]:
        """Warnings about the inputs, before anything is pooled (default: none)."""
        return []

    def make_predictions(self) -> None:
        """Make or check the predictions that :meth:`points` names (default: nothing)."""
        return None

    def check_conditions(self, conditions: Mapping[tuple[str, str], Condition]) -> list[str]:
        """Warnings about the conditions found (and facts added to their ``info``); default
        none."""
        return []
