"""Where a workflow's records live and how a script runs atomically on them."""

from mageflow.store.base import Script, StateStore, check_ttls
from mageflow.store.connect import CLUSTER_SCHEMES, redact_url
from mageflow.store.memory import MemoryStore
from mageflow.store.redis import URL_SCHEMES, RedisStore, check_store_url

__all__ = [
    "CLUSTER_SCHEMES",
    "URL_SCHEMES",
    "MemoryStore",
    "RedisStore",
    "Script",
    "StateStore",
    "check_store_url",
    "check_ttls",
    "redact_url",
]
