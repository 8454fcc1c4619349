"""``nnunet-pde benchmark robustness``: metric versus label fraction, label noise or scanner shift.

Three regimes, each scored per case with :mod:`nnunet_pde.metrics` (through
:func:`nnunet_pde.metrics.evaluate.evaluate_folders`) and summarised per trainer, curve, level,
region and metric:

``few-labels``
    Out-of-fold validation predictions of ``<T>_FracNN`` (trained on NN % of each fold's training
    cases) and of ``<T>`` itself (100 %), pooled over the folds like ``benchmark report`` does
    (:func:`nnunet_pde.benchmark.report.pool_predictions`), against
    ``$nnUNet_preprocessed/<dataset>/gt_segmentations``. One curve; x axis = label fraction in
    (0, 1], the clean point is 1.0.
``noisy-labels``
    Out-of-fold predictions of the same trainers on a clean dataset and on datasets derived from
    it by ``nnunet-pde derive noisy-labels``, always against the *clean* labels (raw ``labelsTr``
    of the clean dataset, ``labelsTr_clean`` of a derived one; never the noisy
    ``gt_segmentations``). One curve per corruption mode; x axis = ``magnitude_mm``, the clean
    dataset is magnitude 0.
``scanner-shift``
    Test-set predictions (``nnUNetv2_predict``, ensemble of the folds) of the clean test images
    and of every perturbation and severity level written by ``nnunet-pde derive shifted-images``,
    against the manifest's test labels. One curve per perturbation, split into perturbations that
    nnU-Net's training augmentation covers and those it does not; x axis = severity level, the
    clean images are level 0.

For every curve the summary gives mean, SD and n over cases per level, the drop from the clean
point (:func:`relative_drop`) and the normalised area under the metric-versus-severity curve
(:func:`severity_auc`). Outputs: :data:`ROBUSTNESS_FILES` plus one PNG per curve and metric.

Modules:

- :mod:`~nnunet_pde.benchmark.robustness.model`: output names, the clean point, severity AUC and
  drop (pure functions), and the plan structures (conditions, curves, outcome);
- :mod:`~nnunet_pde.benchmark.robustness.study`: what a regime declares (:class:`~.study.Study`:
  its points, curves and record; :class:`~.study.Point`: one trainer at one level);
- :mod:`~nnunet_pde.benchmark.robustness.pipeline`: :func:`~.pipeline.run` takes a study through
  the same steps in one order: output folder, predictions, pooling, evaluation against the
  references, summaries, writing the outputs;
- :mod:`~nnunet_pde.benchmark.robustness.render`: Markdown tables and PNG curves;
- :mod:`~nnunet_pde.benchmark.robustness.few_labels`, :mod:`~.noisy_labels`,
  :mod:`~.scanner_shift`: the three regimes, each a function that checks its arguments and a
  :class:`~.study.Study`; :mod:`~.predictions` makes the scanner-shift test predictions
  (``nnUNetv2_predict``).
"""

from __future__ import annotations

from nnunet_pde.benchmark.robustness.few_labels import few_label_trainer, robustness_few_labels
from nnunet_pde.benchmark.robustness.model import (
    AUC_CSV,
    DEFAULT_METRICS,
    PER_CASE_CSV,
    RELATIVE_DROP_METRICS,
    ROBUSTNESS_FILES,
    ROBUSTNESS_JSON,
    SUMMARY_CSV,
    TABLES_MD,
    RobustnessOutcome,
    drop_kind,
    relative_drop,
    severity_auc,
)
from nnunet_pde.benchmark.robustness.noisy_labels import robustness_noisy_labels
from nnunet_pde.benchmark.robustness.render import format_auc_overview
from nnunet_pde.benchmark.robustness.scanner_shift import (
    read_shift_manifest,
    robustness_scanner_shift,
)
from nnunet_pde.formats import SHIFT_MANIFEST

__all__ = [
    "AUC_CSV",
    "DEFAULT_METRICS",
    "PER_CASE_CSV",
    "RELATIVE_DROP_METRICS",
    "ROBUSTNESS_FILES",
    "ROBUSTNESS_JSON",
    "SHIFT_MANIFEST",
    "SUMMARY_CSV",
    "TABLES_MD",
    "RobustnessOutcome",
    "drop_kind",
    "few_label_trainer",
    "format_auc_overview",
    "read_shift_manifest",
    "relative_drop",
    "robustness_few_labels",
    "robustness_noisy_labels",
    "robustness_scanner_shift",
    "severity_auc",
]
