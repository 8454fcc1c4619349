"""Fixtures shared by the top-level tests."""

from __future__ import annotations

import os

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
