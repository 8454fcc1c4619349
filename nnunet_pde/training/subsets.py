"""Few-label training subsets: nested, seeded, identical across trainers.

The few-label regime of the paper trains on a fraction of each cross-validation fold's
training cases and validates on the fold's *full* validation set. The subset of a fold is a
prefix of one seeded permutation of the fold's (sorted) training case ids, so

* it depends only on the case ids, the fraction and the seed: every trainer (and every
  derived dataset with the same case ids, e.g. a noisy-label copy) gets the same cases;
* subsets are nested: the 10 % subset contains the 5 % one, and so on;
* it has ``ceil(fraction * n)`` cases, at least one.

:class:`FewLabelMixin` applies it in nnU-Net's ``do_split`` (nothing here imports nnunetv2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnunet_pde.files import write_json
from nnunet_pde.formats import SUBSET_FILE

__all__ = [
    "FEW_LABEL_FRACTIONS",
    "SEED_ENV_VAR",
    "SUBSET_FILE",
    "FewLabelMixin",
    "check_fraction",
    "few_label_subset",
    "subset_size",
    "write_subset_record",
]

#: The label fractions of the paper's few-label regime (the ``_FracNN`` trainers).
FEW_LABEL_FRACTIONS: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50)
#: Environment variable that replaces the trainers' subset seed (same value for every
#: trainer of a comparison, or the subsets differ).
SEED_ENV_VAR = "NNUNET_PDE_FEW_LABEL_SEED"


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float if it lies in (0, 1]; ValueError otherwise."""
    f = float(fraction)
    if not (0.0 < f <= 1.0) or math.isnan(f):
        raise ValueError(
            f"label fraction must be in (0, 1] (e.g. 0.25 for 25 % of the training cases), "
            f"got {fraction!r}"
        )
    return f


def subset_size(n_cases: int, fraction: float) -> int:
    """Cases in the subset: ``ceil(fraction * n_cases)``, at least 1, at most ``n_cases``.

    The product is rounded to 9 decimals first so that e.g. ``0.1 * 30`` gives 3, not 4.
    """
    f = check_fraction(fraction)
    if n_cases < 1:
        raise ValueError("the fold has no training cases to take a subset of")
    return min(n_cases, max(1, math.ceil(round(f * n_cases, 9))))


def few_label_subset(train_keys: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """The ``fraction`` subset of ``train_keys``, sorted.

    Parameters
    ----------
    train_keys
        Case identifiers of the fold's training set (any order; duplicates are an error).
    fraction
        Share of the cases to keep, in (0, 1].
    seed
        Seed of the permutation; subsets for different fractions with the same seed are
        nested.

    Returns
    -------
    list[str]
        ``subset_size(len(train_keys), fraction)`` identifiers in sorted order.
    """
    keys = sorted(str(k) for k in train_keys)
    if len(set(keys)) != len(keys):
        raise ValueError("train_keys contains duplicate case identifiers")
    n = subset_size(len(keys), fraction)
    order = np.random.default_rng(int(seed)).permutation(len(keys))
    return sorted(keys[i] for i in order[:n])


def write_subset_record(
    folder: str | os.PathLike[str],
    *,
    fraction: float,
    seed: int,
    fold: int | str,
    train_keys: Sequence[str],
    selected: Sequence[str],
    val_keys: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write :data:`SUBSET_FILE` into ``folder`` (atomically) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "fraction": float(fraction),
        "seed": int(seed),
        "fold": fold,
        "n_total": len(train_keys),
        "n_selected": len(selected),
        "train_keys": list(selected),
        "excluded_keys": sorted(set(train_keys) - set(selected)),
        "val_keys": list(val_keys),
        **(dict(extra) if extra else {}),
    }
    path = folder / SUBSET_FILE
    write_json(path, record, indent=2)
    return path


class FewLabelMixin:
    """Train on a nested, seeded fraction of each fold's training cases (few-label regime).

    ``do_split`` returns nnU-Net's split with the training keys reduced to
    :func:`few_label_subset` of them; the validation keys stay the fold's full validation
    set, so nnU-Net's final validation scores every validation case. The subset is written
    to ``few_label_subset.json`` in the fold folder. ``few_label_fraction = None`` keeps the
    whole fold. The seed is ``few_label_seed`` unless the environment variable
    ``NNUNET_PDE_FEW_LABEL_SEED`` is set.
    """

    few_label_fraction: ClassVar[float | None] = None
    few_label_seed: ClassVar[int] = 0

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        if self.few_label_fraction is None:
            return tr_keys, val_keys
        env_seed = os.environ.get(SEED_ENV_VAR)
        try:
            seed = self.few_label_seed if env_seed in (None, "") else int(env_seed)
        except ValueError:
            raise ValueError(f"{SEED_ENV_VAR} must be an integer, got '{env_seed}'") from None
        selected = few_label_subset(tr_keys, self.few_label_fraction, seed)
        self.print_to_log_file(
            f"Few-label regime: training on {len(selected)} of {len(tr_keys)} training cases "
            f"(fraction {self.few_label_fraction:g}, seed {seed}); validating on all "
            f"{len(val_keys)} validation cases."
        )
        if self.local_rank == 0:
            write_subset_record(
                self.output_folder,
                fraction=self.few_label_fraction,
                seed=seed,
                fold=self.fold,
                train_keys=tr_keys,
                selected=selected,
                val_keys=val_keys,
                extra={"trainer": type(self).__name__},
            )
        return selected, val_keys
