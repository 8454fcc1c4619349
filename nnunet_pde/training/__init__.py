"""Trainer-side building blocks shared by the trainer classes in ``trainers/``.

Each mixin overrides one narrow nnU-Net hook and is configured by class attributes, so a
trainer variant is a few class attributes, not a copied method. Put the mixins *before*
``nnUNetTrainer`` in the bases. Nothing here imports nnunetv2: the mixins use the
trainer's attributes by name (``self.network``, ``self.loss``, ``self.logger``, ...).

Modules:

* :mod:`.init_hooks`: nnUNetTrainer's ``__init__`` written once, with the hooks
  ``adapt_plans`` and ``after_init`` (:class:`~.init_hooks.InitHooksMixin`);
* :mod:`.length`: the training length as class attributes (``TrainingLengthMixin``);
* :mod:`.subsets`: nested, seeded few-label subsets of a fold and ``FewLabelMixin``;
* :mod:`.schedulers`: learning rates stepped per epoch (warm-up + cosine, step decay);
* :mod:`.optimizers`: AdamW with warm-up and cosine annealing (``AdamWCosineMixin``);
* :mod:`.loss_terms`: the regularised loss and the per-epoch log and plot of its terms
  (``RegularizedLossMixin``);
* :mod:`.diagnostics`: the per-epoch state of the PDE blocks (``PDEDiagnosticsMixin``);
* :mod:`.logged_series`: per-epoch series in nnU-Net's logger.
"""
