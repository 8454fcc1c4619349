"""Fixtures of the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_fixtures import make_nnunet_env, write_fake_trainer


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """nnU-Net's environment in ``tmp_path`` (no ground truth) with a fake
    ``nnUNetv2_train`` that records its calls: ``FAKE_TRAIN_CALLS`` names the record,
    ``FAKE_TRAIN_CMD`` the command."""
    env = make_nnunet_env(tmp_path, with_gt=False)
    cmd, calls = write_fake_trainer(tmp_path)
    env["FAKE_TRAIN_CALLS"] = str(calls)
    env["FAKE_TRAIN_CMD"] = cmd
    return env
