"""The :class:`StateStore` interface: where a workflow's records live, and how a script
runs atomically on them. It knows no orchestration: the engine's script decides.

A workflow ``wf`` is one hash ``<prefix>:{wf}`` plus auxiliary keys that share its hash
tag (``<hash>:<kind>:<sid>``); ``<prefix>:index`` orders the workflows created within
``active_ttl`` by creation,
``<prefix>:live`` lists those the reconciler still has to look at, and
``<prefix>:ident:<label>`` lists the signatures carrying one identifier (``name=value``).
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mageflow.errors import ConfigurationError

ENTRY_CALL = "return M.main(KEYS, ARGV)"
"""The last line of a script that can also be loaded once as a Redis function library:
everything before it only defines ``M.main``, which runs one call."""


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1 (what ``EVALSHA`` names it by). A script whose last line
    is :data:`ENTRY_CALL` also has a :attr:`library` form for Redis 7 functions."""

    source: str
    sha: str = field(init=False)
    function: str | None = field(init=False)
    """The Redis function name of the library form (one per script version, so processes
    running different versions can share a server), or ``None``. Worked out once: every
    call asks."""

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.source.encode()).hexdigest()
        object.__setattr__(self, "sha", sha)
        entry = self.source.rstrip().endswith(ENTRY_CALL)
        object.__setattr__(self, "function", f"mageflow_{sha[:16]}" if entry else None)

    @property
    def library(self) -> str:
        """The script as a Redis function library (``FUNCTION LOAD``): its definitions run
        once, at load, instead of on every call."""
        name = self.function
        if name is None:
            raise ValueError("this script has no entry function")
        body = self.source.rstrip()[: -len(ENTRY_CALL)]
        return (
            f"#!lua name={name}\n{body}redis.register_function('{name}', "
            "function(KEYS, ARGV) return M.main(KEYS, ARGV) end)\n"
        )


CHUNK = 10_000
"""At most this many hash fields or list members go in one store command."""

_SET_IF_PRESENT = Script(
    "for i = 3, #ARGV do\n"
    "  if redis.call('HGET', KEYS[1], ARGV[i]) then\n"
    "    if redis.call('HGET', KEYS[1], ARGV[1]) == false then\n"
    "      redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "    end\n"
    "    return 1\n"
    "  end\n"
    "end\n"
    "return 0\n"
)

EVENTS_BATCH = 500
"""At most this many stream entries come back from one :meth:`StateStore.read_events`."""

Reply = list[Any] | str | int | None
"""What a script returns: strings, integers, nil, or arrays of strings (or of such arrays)."""


def check_ttls(active_ttl: object, finished_ttl: object) -> None:
    """Both TTLs must be whole seconds, at least 1. Raises :class:`ConfigurationError`."""
    for name, value in (("active_ttl", active_ttl), ("finished_ttl", finished_ttl)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"{name} must be a whole number of seconds of at least 1, not {value!r}"
            )


class StateStore(abc.ABC):
    """Persistence and atomic script execution. :class:`~mageflow.store.RedisStore` and
    :class:`~mageflow.store.MemoryStore` (the same script, run in-process) implement it."""

    prefix: str
    url: str
    active_ttl: int
    finished_ttl: int

    def hash_key(self, wf: str) -> str:
        """The key of workflow ``wf``'s hash; its hash tag is ``{wf}``."""
        return f"{self.prefix}:{{{wf}}}"

    @property
    def index_key(self) -> str:
        """The zset of workflows by creation time (s), for ``mageflow ls``. Entries older
        than ``active_ttl`` are dropped by the next write, and the key expires
        ``active_ttl`` after it: it never outgrows the workflows created within that TTL."""
        return f"{self.prefix}:index"

    @property
    def stats_key(self) -> str | None:
        """The prefix of the per-minute statistics hashes (``<stats_key>:<minute>``) the
        transitions write in the same call, or ``None`` for none. They are cross-workflow
        keys in their own Cluster slot: a store whose scripts cannot touch two slots (a
        Redis Cluster client) returns ``None``, and statistics are off."""
        return f"{self.prefix}:stats"

    @property
    def live_key(self) -> str:
        """The zset of workflows the reconciler looks at (score: when, in ms)."""
        return f"{self.prefix}:live"

    @abc.abstractmethod
    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Reply:
        """Run ``script`` atomically over ``keys``. A script error raises
        :class:`mageflow.errors.EngineError`; an unreachable store
        :class:`mageflow.errors.StoreUnavailableError`."""

    def identifier_key(self, label: str) -> str:
        """The zset of the signature keys carrying identifier ``label`` (score: ms)."""
        return f"{self.prefix}:ident:{label}"

    @abc.abstractmethod
    async def write(
        self,
        wf: str,
        fields: Mapping[str, str],
        lists: Mapping[str, Sequence[str]],
        index: bool = False,
        identified: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        """Create records: hash ``fields`` and auxiliary ``lists`` (``"items:<sid>"`` ...);
        with ``index`` also list the workflow in ``<prefix>:index`` (after the records).

        The lists are written first, then the fields in their order, then the index entry.
        A write may be sent as several commands (at most :data:`CHUNK` fields or members
        each, so no single command holds the server up): if it fails part-way, only a
        prefix of it can be stored. Callers therefore put the record that makes the rest
        reachable (a new workflow's root definition) last, and delete on failure.
        ``identified`` (label -> {signature key: score}) goes to :meth:`index_identified`
        first, so a written record is never missing from the index (an entry without its
        record is dropped by lookups)."""

    @abc.abstractmethod
    async def index_identified(self, entries: Mapping[str, Mapping[str, float]]) -> None:
        """Add signature keys to the identifier index (label -> {key: score}); each
        label's zset then expires ``active_ttl`` after its last write."""

    @abc.abstractmethod
    async def identified(self, labels: Sequence[str]) -> list[str]:
        """The keys indexed under every one of ``labels``, highest score first. Reads the
        smallest of the labels' zsets, never the workflows."""

    @abc.abstractmethod
    async def unindex_identified(self, labels: Sequence[str], keys: Sequence[str]) -> None:
        """Remove ``keys`` from the zsets of ``labels``."""

    @abc.abstractmethod
    async def read_fields(self, requests: Sequence[tuple[str, str]]) -> list[str | None]:
        """One hash field of each of several workflows (``(wf, field)``), one round trip."""

    async def set_if_present(
        self, wf: str, guards: Sequence[str], field_name: str, value: str
    ) -> bool:
        """Set ``field_name`` (unless set) on workflow ``wf`` if its hash has any of the
        fields ``guards``; ``False`` (nothing written, no key created) when it has none."""
        reply = await self.run_script(
            _SET_IF_PRESENT, [self.hash_key(wf)], [field_name, value, *guards]
        )
        return reply == 1

    @abc.abstractmethod
    async def delete(self, wf: str, lists: Sequence[str] = ()) -> None:
        """Delete a workflow's hash and the named auxiliary keys, and unindex it."""

    @abc.abstractmethod
    async def delete_many(self, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
        """:meth:`delete` for many ``(wf, lists)`` at once, in one round trip where the
        store can."""

    @abc.abstractmethod
    async def read(self, wf: str, fields: Sequence[str]) -> list[str | None]:
        """Read hash fields."""

    @abc.abstractmethod
    async def read_all(self, wf: str) -> dict[str, str]:
        """The whole workflow hash."""

    @abc.abstractmethod
    async def read_many(self, wfs: Sequence[str]) -> list[dict[str, str]]:
        """:meth:`read_all` of many workflows, in order, in one round trip where the store
        can (``{}`` for one that does not exist)."""

    async def read_hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """Whole hashes by full key (the statistics' buckets), ``{}`` for a missing one."""
        raise NotImplementedError(f"{type(self).__name__} cannot read hashes by key")

    @abc.abstractmethod
    async def read_list(self, wf: str, name: str, start: int = 0, stop: int = -1) -> list[str]:
        """A range of an auxiliary list, e.g. ``"items:<sid>"``."""

    @abc.abstractmethod
    async def count(self, wf: str, name: str) -> int:
        """Length of an auxiliary list or set (0 when absent)."""

    @abc.abstractmethod
    async def list_workflows(self, limit: int = 100) -> list[str]:
        """Workflow ids, most recent first."""

    @abc.abstractmethod
    async def set_live(self, entries: Mapping[str, float], *, earlier_only: bool = False) -> None:
        """Set the ``live`` scores (ms) of workflows; ``earlier_only``: never move an
        existing score later."""

    @abc.abstractmethod
    async def drop_live(self, wfs: Sequence[str]) -> None:
        """Remove workflows from the ``live`` index."""

    @abc.abstractmethod
    async def wait_published(
        self,
        wf: str,
        channel: str,
        message: str,
        settled: Callable[[], Awaitable[bool]],
        timeout: float | None,
    ) -> None:
        """Return once ``settled()`` is true, checking it after subscribing to the
        workflow's ``channel`` and again whenever ``message`` is published there (pushed,
        never polled; a slow safety re-check covers a message lost on reconnect).
        Raises :class:`TimeoutError` after ``timeout`` seconds."""

    def events_key(self, wf: str) -> str:
        """The stream of workflow ``wf``'s state changes, written by the engine."""
        return f"{self.hash_key(wf)}:events"

    @abc.abstractmethod
    async def read_events(self, wf: str, after: str, timeout: float) -> list[tuple[str, str]]:
        """Entries ``(id, event JSON)`` of workflow ``wf``'s event stream after id
        ``after`` (``"0"``: from the start), at most :data:`EVENTS_BATCH`; when there is
        none yet, wait up to ``timeout`` seconds for one (woken by the engine's append,
        never polled) and return ``[]`` if none came."""

    @property
    def workers_key(self) -> str:
        """The hash of live workers: worker id -> JSON of what it serves and when it was
        last seen (``mageflow workers``, the dashboard); expires with the last heartbeat."""
        return f"{self.prefix}:workers"

    @abc.abstractmethod
    async def put_worker(self, worker_id: str, info: str, ttl: int) -> None:
        """Record (or refresh) a worker's heartbeat ``info``; the hash expires ``ttl``
        seconds after the last heartbeat of any worker."""

    @abc.abstractmethod
    async def drop_workers(self, worker_ids: Sequence[str]) -> None:
        """Forget workers (stopped, or not seen for too long)."""

    @abc.abstractmethod
    async def read_workers(self) -> dict[str, str]:
        """Every recorded worker id -> its heartbeat JSON (stale ones included)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`mageflow.errors.StoreUnavailableError` when unreachable."""

    async def close(self) -> None:
        """Release connections."""
