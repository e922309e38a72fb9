"""Where a workflow's records live and how a script runs atomically on them."""

from mageflow.store.base import Script, StateStore
from mageflow.store.memory import MemoryStore
from mageflow.store.redis import RedisStore, redact_url

__all__ = ["MemoryStore", "RedisStore", "Script", "StateStore", "redact_url"]
