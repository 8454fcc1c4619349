"""Fixtures shared by the top-level tests."""

from __future__ import annotations

import pytest
from plan_fixtures import PLANS_CASES


@pytest.fixture(params=sorted(PLANS_CASES))
def plans_case(request) -> str:
    """Name of a plans fixture: tiny/BraTS-sized x default/ResEnc M plans."""
    return request.param
