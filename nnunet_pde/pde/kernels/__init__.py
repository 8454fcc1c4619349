"""The PDE block's fast kernels behind one interface (see ``docs/pde_layer.md``).

* :mod:`.spec` declares every kernel once (name, inputs, outputs): the ops' schemas, fake
  implementations and argument checks are derived from it.
* :mod:`.backend` picks the backend for a tensor (``c``, ``triton`` or ``torch``) and says
  why; ``NNUNET_PDE_BACKEND`` forces one.
* :mod:`.ops` registers each kernel once as a ``torch.library`` custom op (CPU and CUDA,
  fake implementation, autograd), dispatching to the chosen backend.
* :mod:`.triton_aos` holds the Triton kernels of the AOS step (CUDA), :mod:`.triton_tail`
  and :mod:`.triton_reaction` those of the rest of the block (standardisation, gate and
  energy, reaction, parameter transforms, partial sums), registered as ops in
  :mod:`.triton_ops`; the C kernels live in
  :mod:`nnunet_pde.pde.native` and ``csrc/``; the torch implementation is in
  :mod:`nnunet_pde.pde.fused`.
"""

from .backend import BackendError, Choice, choose, describe

__all__ = ["BackendError", "Choice", "choose", "describe"]
