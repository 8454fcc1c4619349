"""Short trainer of the real-data end-to-end test (tests/e2e/test_real_data.py).

MSD Hippocampus on a 2-core CPU: nnU-Net plans a 40x56x40 patch with batch 7, and one
training iteration takes about 5-12 s there, so nnU-Net's 1000 x 250 iterations or the
demo's 20 x 8 do not fit a CI test of a few minutes. The length below was picked from the
measurement recorded in the test's docstring.
"""

from __future__ import annotations

from nnunet_pde.trainers.nnUNetTrainerPDE3D import nnUNetTrainerPDE3D


class nnUNetTrainerPDE3D_10epochs_8iters(nnUNetTrainerPDE3D):
    """The full model for 10 epochs x 8 training iterations, 1 validation iteration per
    epoch, no intermediate checkpoint: the real-data end-to-end test on a CPU."""

    epochs = 10
    iterations_per_epoch = 8
    val_iterations_per_epoch = 1
    save_every_epochs = 1000
