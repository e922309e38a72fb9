"""``task_identifiers``: checking them, indexing them, finding signatures by them.

Each identifier ``name=value`` has one sorted set in the store (``<prefix>:ident:<label>``,
score = the signature's creation time) listing the keys of the signatures carrying it.
The build adds a workflow's keys there in the same write as its records, under their
final keys (a signature moved into a chain or swarm is indexed again under its new key);
entries whose signature is gone (expired, moved, deleted) are dropped by the lookups
that meet them. A label is the value's text: a string as it is, anything else as
compact JSON, so ``12345`` and ``"12345"`` find the same signatures (the task still
receives the original types).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mageflow.engine import fields as F
from mageflow.engine import join_key, split_key
from mageflow.errors import InvalidIdentifiersError
from mageflow.flows.messages import dumps, to_jsonable
from mageflow.store.base import StateStore

CHECK_BATCH = 500
"""Candidates whose signature is checked per store round trip during a lookup."""

_SUFFIX = ":" + F.IDENTS


def text_of(value: Any) -> str:
    """How an identifier value is indexed and shown: a string as is, else compact JSON."""
    data = to_jsonable(value, "an identifier value")
    if isinstance(data, str):
        return data
    return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)


def checked(identifiers: Any, what: str = "task_identifiers") -> dict[str, Any]:
    """``identifiers`` as a dict of names to JSON values. Raises
    :class:`InvalidIdentifiersError` for anything else."""
    if not isinstance(identifiers, Mapping):
        raise InvalidIdentifiersError(
            f"{what} must be a mapping of names to values, e.g. {{'order_id': '12345'}}; "
            f"got {type(identifiers).__name__}"
        )
    for name in identifiers:
        if not isinstance(name, str) or not name or "=" in name:
            raise InvalidIdentifiersError(
                f"{what} names must be non-empty strings without '=', got {name!r}; "
                "rename the identifier"
            )
    return dict(identifiers)


def labels_of(identifiers: Mapping[str, Any]) -> list[str]:
    """The index labels ``name=text`` of checked identifiers."""
    return [f"{name}={text_of(value)}" for name, value in identifiers.items()]


def to_index(wf: str, fields: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """The index entries (label -> {key: creation ms}) of the nodes with identifiers
    among the records ``fields`` about to be written to workflow ``wf``."""
    entries: dict[str, dict[str, float]] = {}
    for field, raw in fields.items():
        if not field.endswith(_SUFFIX):
            continue
        sid = field[: -len(_SUFFIX)]
        score = float(fields.get(F.of(sid, F.CREATED), 0))
        for label in labels_of(json.loads(raw)):
            entries.setdefault(label, {})[join_key(wf, sid)] = score
    return entries


async def find(store: StateStore, identifiers: Any, limit: int = 100) -> list[str]:
    """Keys of the signatures carrying every pair of ``identifiers``, newest first, at
    most ``limit``. Reads the smallest matching index entry and checks each candidate's
    own record; stale entries met on the way are removed."""
    wanted = checked(identifiers, "the identifiers to find")
    if not wanted:
        raise InvalidIdentifiersError("give at least one identifier to find, e.g. order_id=1")
    labels = labels_of(wanted)
    candidates = await store.identified(labels)
    found: list[str] = []
    stale: list[str] = []
    for start in range(0, len(candidates), CHECK_BATCH):
        batch = candidates[start : start + CHECK_BATCH]
        requests = [(wf, F.of(sid, F.IDENTS)) for wf, sid in map(split_key, batch)]
        for key, raw in zip(batch, await store.read_fields(requests), strict=True):
            if raw is not None and set(labels) <= set(labels_of(json.loads(raw))):
                found.append(key)
            else:
                stale.append(key)
        if len(found) >= limit:
            break
    await store.unindex_identified(labels, stale)
    return found[:limit]


def stored(identifiers: Any) -> str:
    """The JSON a node's ``idents`` record holds."""
    return dumps(to_jsonable(checked(identifiers), "task_identifiers"), "task_identifiers")
