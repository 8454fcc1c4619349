"""The structures of a label map that ``derive noisy-labels`` corrupts: labels or regions.

A :class:`Structure` is a label or region of ``dataset.json`` as nnU-Net's ``LabelManager``
sees it (its values, and the value painted for it into a label map); a :class:`LabelScheme`
is all of a dataset's structures and its ``ignore`` label. :func:`select_structures` picks
the ones a user named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

from nnunet_pde.errors import NnunetPdeError

__all__ = ["LabelScheme", "Structure", "select_structures", "structures_from_dataset_json"]


@dataclass(frozen=True)
class Structure:
    """A label or region of ``dataset.json`` that can be corrupted.

    Attributes
    ----------
    name
        Its key in ``dataset.json["labels"]``, e.g. ``"liver"`` or ``"tumor core"``.
    values
        Label values whose union is its mask (nnU-Net: ``isin(seg, values)``).
    paint
        Value written for it into a label map: the label value, or for a region its entry
        of ``regions_class_order``.
    """

    name: str
    values: tuple[int, ...]
    paint: int

    def mask(self, seg: np.ndarray) -> np.ndarray:
        """Binary mask of this structure in a label map."""
        if len(self.values) == 1:
            return seg == self.values[0]
        return np.isin(seg, self.values)


@dataclass(frozen=True)
class LabelScheme:
    """The structures of a dataset (labels or regions) and its ``ignore`` label value."""

    structures: tuple[Structure, ...]
    regions: bool
    ignore: int | None

    def ancestors(self, s: Structure) -> list[Structure]:
        """Structures whose value set strictly contains ``s``'s (regions containing it)."""
        own = set(s.values)
        return [o for o in self.structures if own < set(o.values)]


def structures_from_dataset_json(
    dataset_json: Mapping[str, Any],
) -> tuple[list[Structure], bool, int | None]:
    """Foreground structures of a ``dataset.json`` as nnU-Net's ``LabelManager`` sees them.

    Parameters
    ----------
    dataset_json
        The parsed ``dataset.json``.

    Returns
    -------
    (structures, regions, ignore_label)
        ``structures`` in file order without ``background`` and ``ignore``; ``regions`` is
        True when a value is a list of more than one label (region-based training, which
        needs ``regions_class_order``); ``ignore_label`` is ``labels["ignore"]`` or None.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise NnunetPdeError(
            "dataset.json has no 'labels' mapping (name -> value or list of values)"
        )
    regions = any(isinstance(v, list | tuple) and len(v) > 1 for v in labels.values())
    ignore = labels.get("ignore")
    if ignore is not None and (isinstance(ignore, list | tuple | bool) or int(ignore) != ignore):
        raise NnunetPdeError(f"dataset.json: the ignore label must be an integer, got {ignore!r}")
    entries = []
    for name, value in labels.items():
        if name == "ignore":
            continue
        values = tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)
        if not values:
            raise NnunetPdeError(f"dataset.json label '{name}' has an empty list of values")
        if name == "background" or set(values) == {0}:
            continue
        entries.append((str(name), values))
    if not entries:
        raise NnunetPdeError("dataset.json declares no foreground label or region")
    if regions:
        order = dataset_json.get("regions_class_order")
        if not isinstance(order, list | tuple) or len(order) != len(entries):
            raise NnunetPdeError(
                "dataset.json declares regions (list values) but its regions_class_order "
                f"({order!r}) does not have one value per region ({len(entries)})"
            )
        structures = [Structure(n, v, int(p)) for (n, v), p in zip(entries, order, strict=True)]
    else:
        structures = [Structure(n, v, v[0]) for n, v in entries]
    return structures, regions, None if ignore is None else int(ignore)


def select_structures(
    scheme: LabelScheme, labels: str | int | Iterable[str | int] | None
) -> tuple[Structure, ...]:
    """The structures named by ``labels`` (names or values), in ``dataset.json`` order."""
    if labels is None:
        return scheme.structures
    items = [labels] if isinstance(labels, str | Integral) else list(labels)
    if not items:
        raise NnunetPdeError("labels is empty; pass None to corrupt every foreground label/region")
    what = "region" if scheme.regions else "label"
    valid = ", ".join(f"'{s.name}' ({s.paint})" for s in scheme.structures)
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | Integral):
            raise NnunetPdeError(f"labels must be names or integer values; got {item!r}")
        match = None
        text = str(item).strip()
        if isinstance(item, str):
            exact = [s for s in scheme.structures if s.name == text]
            folded = [s for s in scheme.structures if s.name.lower() == text.lower()]
            match = exact[0] if exact else (folded[0] if len(folded) == 1 else None)
        if match is None and re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
            if scheme.ignore is not None and value == scheme.ignore:
                raise NnunetPdeError(f"label {value} is the ignore label, which is never changed")
            hits = [s for s in scheme.structures if s.paint == value]
            match = hits[0] if len(hits) == 1 else None
        if match is None:
            if text.lower() == "ignore" and scheme.ignore is not None:
                raise NnunetPdeError("the ignore label is never changed; it cannot be selected")
            how = "regions_class_order value" if scheme.regions else "value"
            raise NnunetPdeError(
                f"unknown {what} {item!r} in labels; this dataset has {valid} (name or {how})"
            )
        chosen.add(match.name)
    return tuple(s for s in scheme.structures if s.name in chosen)
