"""Configuration read from the environment (``MAGEFLOW_*``)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class MageflowSettings(BaseSettings):
    """``MAGEFLOW_BACKEND`` (default ``local``), ``MAGEFLOW_REDIS_URL`` (unset: in-memory
    store), ``MAGEFLOW_KEY_PREFIX``, ``MAGEFLOW_ACTIVE_TTL`` / ``MAGEFLOW_FINISHED_TTL``
    (seconds), ``MAGEFLOW_RESEND_AFTER`` (seconds a dispatched task may stay unstarted
    before the reconciler re-sends it)."""

    model_config = SettingsConfigDict(env_prefix="MAGEFLOW_", extra="ignore")

    backend: str = "local"
    redis_url: str | None = None
    key_prefix: str = "mageflow"
    active_ttl: int = 7 * 24 * 3600
    finished_ttl: int = 24 * 3600
    resend_after: float = 30.0
