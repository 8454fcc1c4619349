"""nnU-Net trainer classes of nnunet-pde.

This folder is what ``nnUNet_extTrainer`` points at (``eval "$(nnunet-pde env)"``).
nnU-Net imports every module here by its bare name while it searches for a trainer, so
modules import each other through the installed package path ``nnunet_pde.trainers.*``.
"""
