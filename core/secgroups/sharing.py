"""Sharing what the compiler's many frozen objects hold alike (memory, not meaning).

The operator keeps a parsed model per rule, group and address group, slim facts and a
compiled entry per pod, and a compiled rule per rule: a few hundred thousand pydantic
instances at 30,000 pods and 20,000 rules. Two things of theirs repeat:

* **the set of fields given** (``__pydantic_fields_set__``): pydantic builds one per
  instance, and a set of five to nine names takes 728 bytes — more than the instance
  and its ``__dict__`` together. A frozen model never changes its own (pydantic adds
  to it only on attribute assignment, which a frozen model refuses; ``model_copy``
  copies it before adding), so instances with equal sets can share one:
  :func:`share_fields_set`, the ``model_post_init`` of the frozen bases in ``models``,
  ``compiled`` and ``facts``. What the set says is unchanged (``exclude_unset`` and
  ``model_fields_set`` see the same names);
* **label sets**: the pods of a workload carry equal labels; :func:`share_labels`
  keeps one dict of each for the (frozen) pod facts;
* **strings** that many objects name: namespaces, node names, label keys and values,
  group names. :func:`intern` makes equal strings one object where they enter
  (the operator's intake); JSON decoding makes a new one for every occurrence.
"""

from __future__ import annotations

import sys
from typing import Any

_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
#: More distinct sets than this are left unshared (the models have a handful each).
_MAX_FIELDS_SETS = 4096


def share_fields_set(model: Any, context: Any = None, /) -> None:
    """Replace ``model``'s set of given fields by the shared equal one (frozen models only)."""
    fields = model.__pydantic_fields_set__
    key = frozenset(fields)
    shared = _FIELDS_SETS.get(key)
    if shared is None:
        if len(_FIELDS_SETS) >= _MAX_FIELDS_SETS:
            return
        shared = _FIELDS_SETS[key] = set(key)
    object.__setattr__(model, "__pydantic_fields_set__", shared)


_LABEL_SETS: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
#: Distinct label sets kept for sharing (a bound: they stay while the process runs).
_MAX_LABEL_SETS = 1 << 16


def share_labels(labels: dict[str, str]) -> dict[str, str]:
    """The one dict equal to ``labels`` (pods of a workload carry the same labels); for
    the labels of frozen facts, which nobody changes in place."""
    if not labels:
        return labels
    key = tuple(sorted(labels.items()))
    shared = _LABEL_SETS.get(key)
    if shared is None:
        if len(_LABEL_SETS) >= _MAX_LABEL_SETS:
            return labels
        shared = _LABEL_SETS[key] = labels
    return shared


def intern(text: str) -> str:
    """The one copy of ``text`` (``sys.intern``: dropped again when nothing uses it)."""
    return sys.intern(text)
