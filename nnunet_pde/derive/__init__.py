"""``nnunet-pde derive``: new nnU-Net datasets derived from an existing one.

- :mod:`nnunet_pde.derive.noisy_labels`: ``derive noisy-labels``, a new nnU-Net dataset whose
  training labels are corrupted, the clean ones kept beside them.
- :mod:`nnunet_pde.derive.scanner_shift`: ``derive shifted-images``, test images under TorchIO
  intensity/acquisition perturbations at graded severity levels.

The few-label subsets are in :mod:`nnunet_pde.training.subsets` (the trainers draw them);
the robustness evaluation is :mod:`nnunet_pde.benchmark.robustness`.
"""
