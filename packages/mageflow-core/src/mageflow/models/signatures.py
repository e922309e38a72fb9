"""Pydantic models of what is stored for a signature, a chain and a swarm."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from mageflow.errors import InvalidNameError
from mageflow.models.status import SignatureStatus

Kind = Literal["task", "chain", "swarm", "graph", "branch"]


class NodeDef(BaseModel):
    """Structural definition of one signature (never user data). Short field names keep
    the hash small; the engine script reads them (glossary: ``transitions.lua``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Kind = Field(alias="k")
    task: str | None = Field(default=None, alias="t")
    parent: str | None = Field(default=None, alias="p")
    owner: str | None = Field(default=None, alias="of")
    on_success: list[str] = Field(default_factory=list, alias="ok")
    on_error: list[str] = Field(default_factory=list, alias="err")
    max_concurrency: int | None = Field(default=None, alias="mc")
    stop_after_n_failures: int | None = Field(default=None, alias="sa")
    name: str | None = Field(default=None, alias="n")
    priority: int | None = Field(default=None, alias="pr")
    delay_ms: int | None = Field(default=None, alias="dl")
    """Start this long after becoming due."""
    start_at_ms: int | None = Field(default=None, alias="at")
    """Start no earlier than this (ms since the epoch)."""
    native_delay: bool = Field(default=False, alias="nd")
    queue: str | None = Field(default=None, alias="q")
    """The queue the task is routed to (``None``: the default queue)."""
    """The task manager holds the delay (the engine dispatches at once, with the delay)."""
    graph_name: str | None = Field(default=None, alias="gn")
    """A graph node's name in its graph (its dependents' results are keyed by it)."""
    requires: list[str] = Field(default_factory=list, alias="rq")
    """A graph node's required dependencies (sids)."""
    optional: list[str] = Field(default_factory=list, alias="oq")
    """A graph node's optional dependencies (sids)."""
    required_by: list[str] = Field(default_factory=list, alias="rd")
    """The nodes that require this graph node (its out-edges)."""
    optional_for: list[str] = Field(default_factory=list, alias="od")
    """The nodes for which this graph node is an optional dependency."""
    selector: str | None = Field(default=None, alias="sl")
    """A branch's selector sid."""
    cases: dict[str, str] = Field(default_factory=dict, alias="cs")
    """A branch's case sids by the selector result that picks them."""
    default: str | None = Field(default=None, alias="df")
    """A branch's case when the selector's result names none."""

    def dump(self) -> str:
        """The stored JSON. Raises :class:`InvalidNameError` for a name that is not text."""
        try:
            return self.model_dump_json(by_alias=True, exclude_none=True, exclude_defaults=True)
        except PydanticSerializationError as exc:
            raise InvalidNameError(
                f"a task or workflow name cannot be stored ({exc}); use UTF-8 text"
            ) from None


def check_name(value: object, what: str) -> str:
    """``value`` when it can be stored as a name: a non-empty string of UTF-8 text (no
    lone surrogates). Raises :class:`InvalidNameError` naming ``what`` otherwise."""
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"{what} must be a non-empty string, not {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidNameError(
            f"{what} {value!r} is not UTF-8 text ({exc.reason} at position {exc.start}); "
            "use a name without lone surrogates"
        ) from None
    return value


def timestamp_of(ms: str | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)


class SignatureState(BaseModel):
    """A snapshot of one signature, chain or swarm, as ``get_state()`` and the CLI show it."""

    key: str
    kind: Kind
    name: str
    status: SignatureStatus
    attempts: int = 0
    created_at: datetime | None = None
    dispatched_at: datetime | None = None
    """When it was dispatched: a task first handed to the task manager, a chain or swarm
    begun. A task dispatched but not started waits for a worker that serves it."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    parent: str | None = None
    children: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    """For swarms: items total / queued / running / finished / failed."""
    closed: bool | None = None
    """For swarms: ``False`` while it takes more items (it completes only once closed)."""
    priority: int | None = None
    queue: str | None = None
    """The queue it is routed to: only workers serving it run it (``None``: default)."""
    not_before: datetime | None = None
    """A delay or start time: the node starts no earlier than this."""
    identifiers: dict[str, Any] = Field(default_factory=dict)
    """The ``task_identifiers`` it was signed with (``find_by_identifiers`` finds it)."""
    steps_done: int | None = None
    """For chains: steps finished (``len(children)`` once the chain is done)."""

    @staticmethod
    def timestamps(c: str | None, t0: str | None, t1: str | None) -> dict[str, datetime | None]:
        return {
            "created_at": timestamp_of(c),
            "started_at": timestamp_of(t0),
            "finished_at": timestamp_of(t1),
        }
