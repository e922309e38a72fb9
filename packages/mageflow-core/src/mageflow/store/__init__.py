"""Persistence and atomic state transitions."""

from mageflow.store.base import Publish, StartOutcome, StateStore, join_key, split_key
from mageflow.store.memory import MemoryStore
from mageflow.store.redis import RedisStore, redact_url

__all__ = [
    "MemoryStore",
    "Publish",
    "RedisStore",
    "StartOutcome",
    "StateStore",
    "join_key",
    "redact_url",
    "split_key",
]
