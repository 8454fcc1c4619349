"""Five-fold cross-validation benchmarking of several trainers (docs/benchmarking.md).

* :mod:`~nnunet_pde.benchmark.run` - ``nnunet-pde benchmark run``: ``nnUNetv2_train`` for
  every (trainer, fold), resumable, through an executor of
  :mod:`~nnunet_pde.commands` (local or SLURM), with a manifest
  (:mod:`~nnunet_pde.benchmark.manifest`);
* :mod:`~nnunet_pde.benchmark.report` - ``nnunet-pde benchmark report``: pooled out-of-fold
  evaluation, tables, statistics (:mod:`~nnunet_pde.benchmark.stats`), figures, HTML;
* :mod:`~nnunet_pde.benchmark.robustness` - ``nnunet-pde benchmark robustness``.

The command line is :mod:`nnunet_pde.cli.benchmark`.

Nothing here imports torch or nnunetv2: training runs in ``nnUNetv2_train`` subprocesses.
"""

from __future__ import annotations

from nnunet_pde.benchmark.stats import bootstrap_ci, holm, paired_wilcoxon
from nnunet_pde.errors import BenchmarkError

__all__ = ["BenchmarkError", "bootstrap_ci", "holm", "paired_wilcoxon"]
