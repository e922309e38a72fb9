"""Configuration read from the environment (``MAGEFLOW_*``), checked when read."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mageflow.errors import ConfigurationError
from mageflow.store import check_store_url, redact_url

_SECRET = frozenset({"redis_url"})
"""Settings whose value may hold a password: shown redacted in errors."""


class MageflowSettings(BaseSettings):
    """``MAGEFLOW_BACKEND`` (default ``local``), ``MAGEFLOW_REDIS_URL`` (unset: in-memory
    store; ``redis://``, ``rediss://``, ``unix://`` or ``memory://``),
    ``MAGEFLOW_KEY_PREFIX``, ``MAGEFLOW_ACTIVE_TTL`` / ``MAGEFLOW_FINISHED_TTL`` (whole
    seconds, at least 1), ``MAGEFLOW_RESEND_AFTER`` (seconds, more than 0, a dispatched
    task may stay unstarted before the reconciler re-sends it), ``MAGEFLOW_LEASE``
    (seconds, more than 0, a running attempt holds its task between two renewals: a copy
    of the same run waits that long after the attempt's worker died before taking over),
    ``MAGEFLOW_FINISH_LINGER`` (seconds, 0 to 1, default 0.005: how long at most finishes
    of one workflow that came while its previous engine call was in flight wait for more
    to share their call, as long as more come within a fifth of it; 0: not at all),
    ``MAGEFLOW_PACKED_STATE`` (default on; ``0`` while workers older than the run record
    still serve the store, see "Upgrading while workflows run" in the configuration docs).

    Raises :class:`ConfigurationError` naming the variable for a value out of range or
    of the wrong type."""

    model_config = SettingsConfigDict(env_prefix="MAGEFLOW_", extra="ignore")

    backend: str = "local"
    redis_url: str | None = None
    key_prefix: str = Field(default="mageflow", min_length=1)
    active_ttl: int = Field(default=7 * 24 * 3600, ge=1)
    finished_ttl: int = Field(default=24 * 3600, ge=1)
    resend_after: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    lease: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    finish_linger: float = Field(default=0.005, ge=0, le=1, allow_inf_nan=False)
    packed_state: bool = True

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc)) from None

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url:
            try:
                check_store_url(url)
            except ConfigurationError as exc:
                raise ConfigurationError(f"MAGEFLOW_REDIS_URL: {exc}") from None
        return url or None


def _explain(exc: ValidationError) -> str:
    problems = []
    for e in exc.errors():
        name = str(e["loc"][0]) if e["loc"] else "?"
        raw = e.get("input")
        shown = redact_url(str(raw)) if name in _SECRET and isinstance(raw, str) else raw
        msg = str(e.get("ctx", {}).get("error", "")) or e["msg"]
        problems.append(f"MAGEFLOW_{name.upper()}={shown!r}: {msg}")
    return "invalid MageFlow settings: " + "; ".join(problems)
