"""Fixtures shared by the top-level tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence

import pytest
import torch

# The Triton backend's tests run its kernels on CPU tensors through Triton's interpreter.
# It must be on before triton is first imported (triton.language defines its own helpers
# with @jit at import time); on a machine with CUDA the kernels run compiled instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from plan_fixtures import PLANS_CASES


@pytest.fixture(params=sorted(PLANS_CASES))
def plans_case(request) -> str:
    """Name of a plans fixture: tiny/BraTS-sized x default/ResEnc M plans."""
    return request.param


#: Resolves each name in argv with nnU-Net's own finder and prints ``RESOLVED name``.
_FINDER_SCRIPT = (
    "import sys\n"
    "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
    "for n in sys.argv[1:]:\n"
    "    c = f(n)\n"
    "    assert c.__name__ == n, (c, n)\n"
    "    print('RESOLVED', n)\n"
)


@pytest.fixture
def resolve_with_nnunet_finder() -> Callable[[Sequence[str]], list[str]]:
    """``resolve(names)``: the names that nnU-Net's own finder
    (``recursive_find_trainer_class_by_name``) resolves to a class of that name, sorted, in a
    fresh interpreter whose only pointer to our trainers is ``nnUNet_extTrainer``, as
    ``nnUNetv2_train`` and ``nnUNetv2_predict`` find them. A name it cannot resolve fails
    the subprocess (CalledProcessError)."""
    from nnunet_pde.env import EXT_TRAINER_VAR, trainer_dir

    def resolve(names: Sequence[str]) -> list[str]:
        env = dict(os.environ, **{EXT_TRAINER_VAR: str(trainer_dir())})
        out = subprocess.run(
            [sys.executable, "-c", _FINDER_SCRIPT, *names],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sorted(re.findall(r"^RESOLVED (\S+)$", out, flags=re.M))

    return resolve
