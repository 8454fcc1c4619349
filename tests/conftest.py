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
from plan_fixtures import PLANS_CASES, load_plans, managers


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


def _write_checkpoint(
    path, trainer, perturb=None, seed=0, trainer_name=None, logging=None, epoch=7
) -> torch.nn.Module:
    """Write a checkpoint shaped like ``nnUNetTrainer.save_checkpoint``'s, of ``trainer``'s
    network on the tiny plans (``perturb(block)`` applied to each PDE block first;
    ``logging``: the logger's entry, absent if None; ``epoch``: ``current_epoch``); return
    the network."""
    from nnunet_pde.network import pde_blocks

    plans, ds = load_plans("tiny_plain")
    pm, cm, n_in, n_out = managers(plans, ds)
    torch.manual_seed(seed)
    net = trainer.build_network_architecture(pm, cm, n_in, n_out, True)
    if perturb is not None:
        with torch.no_grad():
            for block in pde_blocks(net).values():
                perturb(block)
    torch.save(
        {
            "network_weights": net.state_dict(),
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": 0,
                "dataset_json": ds,
                "device": torch.device("cpu"),
            },
            "trainer_name": trainer_name or trainer.__name__,
            "current_epoch": epoch,
            **({"logging": logging} if logging is not None else {}),
        },
        path,
    )
    return net


@pytest.fixture(scope="session")
def write_checkpoint() -> Callable[..., torch.nn.Module]:
    """``write_checkpoint(path, trainer, perturb=None, seed=0, trainer_name=None,
    logging=None, epoch=7)``: a checkpoint as nnU-Net saves it, of ``trainer``'s network on the tiny
    plans; returns the network."""
    return _write_checkpoint
