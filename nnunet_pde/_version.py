"""The version of nnunet-pde, in a module of its own (layer 0, imports nothing).

Modules that record the version in what they write (``metrics/evaluate.py``,
``derive/noisy_labels.py``, ``derive/scanner_shift.py``) import it from here, not from the
package root, which re-exports the PDE API. ``pyproject.toml`` states the same version for
the distribution's metadata.
"""

__version__ = "0.1.0"
