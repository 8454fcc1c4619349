"""Robustness regimes of the paper's experimental plan.

- :mod:`nnunet_pde.robustness.subsets`: nested, seeded few-label training subsets of a fold
  (used by the ``*_FracNN`` trainers through ``do_split``).
- :mod:`nnunet_pde.robustness.noisy_labels`: ``nnunet-pde derive noisy-labels``, a new nnU-Net
  dataset whose training labels are corrupted, the clean ones kept beside them.
- :mod:`nnunet_pde.robustness.scanner_shift`: ``nnunet-pde derive shifted-images``, test
  images under TorchIO intensity/acquisition perturbations at graded severity levels.
- :mod:`nnunet_pde.robustness.report`: ``nnunet-pde benchmark robustness``, metric vs label
  fraction / noise magnitude / shift severity per trainer, always against clean labels.
"""
