"""The Redis broker the backend builds from a URL: taskiq-redis's stream broker, fixed so
that a dead worker's messages are redelivered even when nothing new is published, and a
live worker's messages are never taken from it however long their tasks run."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import stamina
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, BrokerMessage, Context, TaskiqFormatter, TaskiqMessage
from taskiq.labels import parse_label
from taskiq_redis import RedisStreamBroker

from mageflow.backend.base import StreamEntry

logger = logging.getLogger(__name__)

T = TypeVar("T")

WAIT_MAX = 2.0
"""Longest pause (s) between two attempts while the broker's Redis is unreachable."""
DEAD_MAXLEN = 10_000
"""About how many dead-lettered entries ``<queue>:dead`` keeps (the oldest are trimmed)."""


def dead_stream(stream: str) -> str:
    """Where the entries of ``stream`` that cannot be run are kept for the operator."""
    return f"{stream}:dead"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


READ_AHEAD_MAX = 1024
"""Messages :class:`ReadAheadFormatter` keeps parsed for the receiver at most (more are
parsed again: prefetched messages beyond this many are rare)."""


class ReadAheadFormatter(TaskiqFormatter):
    """The broker's formatter, remembering the messages :meth:`ReclaimingStreamBroker.listen`
    parsed to check them (poison is dead-lettered there), so taskiq's receiver gets the
    same parse instead of decoding every message a second time. A message is handed out
    once; one the receiver never asks for is dropped after :data:`READ_AHEAD_MAX` more."""

    def __init__(self, inner: TaskiqFormatter) -> None:
        self.inner = inner
        self._parsed: dict[int, tuple[bytes, TaskiqMessage]] = {}

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        return self.inner.dumps(message)

    def loads(self, message: bytes) -> TaskiqMessage:
        got = self._parsed.pop(id(message), None)
        if got is not None and got[0] is message:  # held here, so its id is not reused
            return got[1]
        return self.inner.loads(message)

    def checked(self, data: bytes) -> TaskiqMessage:
        """``data`` parsed, its typed labels checked (raises what the formatter or a label
        parser raises); kept for the receiver's :meth:`loads` of this very object."""
        parsed = self.inner.loads(data)
        check_labels(parsed)
        if len(self._parsed) >= READ_AHEAD_MAX:
            self._parsed.pop(next(iter(self._parsed)))
        self._parsed[id(data)] = (data, parsed)
        return parsed


def check_labels(message: TaskiqMessage) -> None:
    """Raise what taskiq's ``parse_labels`` would raise, without changing the message (the
    receiver parses them itself, and parsing a ``bytes`` label twice would decode it twice)."""
    for label, label_type in (message.labels_types or {}).items():
        if label in message.labels:
            parse_label(message.labels[label], label_type)


def _no_group(exc: Exception) -> bool:
    """The consumer group is gone: ``NOGROUP``, or (Redis 7) ``UNBLOCKED``, the answer to
    a read blocked on a stream or group that was deleted meanwhile (``DEL``, ``FLUSHDB``,
    ``XGROUP DESTROY``)."""
    return isinstance(exc, ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED"))


def _broker_lost(exc: Exception) -> bool:
    """A transient failure of the broker's Redis (``BusyLoadingError``, raised while a
    restarted server loads its data, is a ``ConnectionError``)."""
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError)) or _no_group(exc)


# Reset the idle time of the given entries that are still pending for this consumer.
_KEEP_CLAIMED = """
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
"""


DEAD_CONSUMER_AFTER = 3600.0
"""Seconds a consumer of the group may stay idle, holding nothing, before a worker
deletes it (a worker that died or was replaced leaves its consumer behind)."""

# Delete the consumers of group ARGV[1] idle longer than ARGV[2] ms that hold nothing,
# except ARGV[3] (the caller). One script: no message can be read by a consumer between
# the check and its deletion (DELCONSUMER would drop its pending entries).
_PRUNE_CONSUMERS = """
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) and f['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    n = n + 1
  end
end
return n
"""


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel until done: on Python < 3.12, ``asyncio.wait_for`` (used by redis-py to send
    a command) can swallow a cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)


class ReclaimingStreamBroker(RedisStreamBroker):
    """:class:`taskiq_redis.RedisStreamBroker` with two fixes.

    The stream broker reads with XREADGROUP and XACKs after the task finished, so a dead
    worker's message stays in the group's pending list until a worker claims it
    (XAUTOCLAIM) once idle for ``idle_timeout``. taskiq-redis 1.2 looks for such
    messages only right after a read that returned new messages: with no new traffic
    they are never run. Here the scan also follows empty reads, at most once per
    ``xread_block``. And taskiq-redis lets a task that runs longer than ``idle_timeout``
    be claimed by a second worker; here a worker resets the idle time of the messages it
    holds every ``idle_timeout / 3``, so only the messages of a dead (or frozen) worker
    are claimed, and ``idle_timeout`` bounds the redelivery delay, not the task length.
    Idle messages are claimed one at a time, each when the worker has a slot to run it.

    Outages and poison: a lost connection, a restarting Redis or a consumer group lost
    with the stream never escape :meth:`listen` (the worker waits, with backoff, and
    recreates the group), and an acknowledgement is retried the same way. An entry that
    cannot be a message (no ``data`` field, bytes the formatter rejects) is copied to
    ``<queue>:dead`` with the reason and acknowledged.

    Two costs are cut as well: publishing and acknowledging reuse one client instead of
    building a ``Redis`` object per message, and an acknowledged entry is deleted from the
    stream (XACK + XDEL in one round trip), so the stream holds what is queued or
    running, not every message ever sent. With the store on this Redis (stream delivery)
    the core does both inside the transition that ends a run, and the worker skips that
    round trip (see :class:`StreamMessage`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.formatter = ReadAheadFormatter(self.formatter)
        self.served_streams: list[str] | None = None
        """The streams a worker reads (``None``: ``queue_name`` and the additional ones);
        set by the backend's ``serve_queues``. Their groups are created from the
        stream's start, so what was published before the first worker is run."""
        self._held: set[tuple[Any, Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._client: Redis | None = None
        self._back_at = -math.inf  # when the broker's Redis last answered after failing
        self.dead_consumer_after = DEAD_CONSUMER_AFTER
        """Seconds after which an idle consumer holding nothing is deleted from the group."""
        self.slots: int | None = None
        """How many tasks this worker runs at once (set by :class:`ShutdownSafeReceiver`
        from ``--max-async-tasks``); ``None``: unknown, and a read takes ``xread_count``."""

    @staticmethod
    def delivery_of(context: Context) -> StreamMessage | None:
        """The entry a running task's taskiq ``Context`` was delivered as (``None``: not
        one of this broker's). taskiq 0.13 has no public way from a task to its
        message's acknowledgement; its ``AckController`` keeps the callable this broker
        gave it, a :class:`StreamMessage`. Should a taskiq release change that, this
        answers ``None``: the task then runs as for a redelivery, and the broker
        acknowledges it as usual (``tests/taskiq/test_stream_ack.py`` would fail)."""
        controller = getattr(context, "_ack_controller", None)
        ack = getattr(controller, "_ack", None)
        return ack if isinstance(ack, StreamMessage) else None

    @property
    def client(self) -> Redis:
        if self._client is None:
            self._client = Redis(connection_pool=self.connection_pool)
        return self._client

    async def kick(self, message: BrokerMessage) -> None:
        queue_name = message.labels.get("queue_name") or self.queue_name
        await self.client.xadd(
            queue_name,
            {b"data": message.message},
            maxlen=self.maxlen,
            approximate=self.approximate,
        )

    def streams(self) -> list[str]:
        """The streams this broker's workers read."""
        if self.served_streams is not None:
            return list(self.served_streams)
        return [self.queue_name, *(s for s in self.additional_streams if s != self.queue_name)]

    async def startup(self) -> None:
        await super().startup()
        if self.is_worker_process and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._keep_claimed())

    async def shutdown(self) -> None:
        if self._heartbeat is not None:
            await cancel_and_wait(self._heartbeat)
            self._heartbeat = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await super().shutdown()

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        streams: dict[Any, Any] = dict.fromkeys(self.streams(), ">")
        next_scan = 0.0
        async with Redis(connection_pool=self.connection_pool) as conn:
            while True:
                fetched: Any = await self._riding_out(
                    "reading the stream",
                    lambda: conn.xreadgroup(
                        self.consumer_group_name,
                        self.consumer_name,
                        streams,
                        block=self.block,
                        noack=False,
                        count=self._read_count(),
                    ),
                )
                for stream, entries in fetched or ():
                    for msg_id, fields in entries:
                        message = await self._accepted(stream, msg_id, fields, fresh=True)
                        if message is not None:
                            yield message
                if time.monotonic() < next_scan or self._just_back():
                    continue
                next_scan = time.monotonic() + self.block / 1000
                for stream in streams:
                    # One message per XAUTOCLAIM: the receiver asks for the next message
                    # only when it has a free slot, so a claimed message runs at once.
                    # Claimed in a batch, the rest would wait here, unrenewed, until
                    # another worker claims them too and both run them.
                    cursor: Any = "0-0"
                    while True:
                        reply: Any = await self._riding_out(
                            "claiming idle messages",
                            functools.partial(
                                conn.xautoclaim,
                                stream,
                                self.consumer_group_name,
                                self.consumer_name,
                                min_idle_time=self.idle_timeout,
                                start_id=cursor,
                                count=1,
                            ),
                        )
                        cursor = reply[0]
                        for msg_id, fields in reply[1]:
                            # Redis 6.2 lists deleted entries with no fields. A message
                            # held here was claimed back after failed renewals: skip it.
                            if fields and (stream, msg_id) not in self._held:
                                message = await self._accepted(stream, msg_id, fields)
                                if message is not None:
                                    yield message
                        if cursor in (b"0-0", "0-0"):
                            break

    def _read_count(self) -> int:
        """How many new messages one read takes: as many as the worker has free slots
        (at most READ_MOST), so each starts at once and none waits in a busy worker's
        buffer while another worker is idle. Several at a time, their tasks also end
        together, and the core sends their finishes in one call."""
        if self.slots is None:
            return int(self.count or 1)
        return max(1, min(READ_MOST, self.slots - len(self._held)))

    async def _riding_out(self, what: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run ``command`` until the broker's Redis answers: a dropped connection, a
        restarting or loading server, or a group lost with the stream (a restart without
        persistence) are waited out with capped exponential backoff, never raised. A lost
        group is created again from the stream's start, so nothing added since is skipped.
        """
        try:
            return await command()
        except RedisError as exc:
            if not _broker_lost(exc):
                raise
            logger.warning(
                "%s: the broker's Redis failed (%s); retrying until it is back", what, exc
            )
            regroup = _no_group(exc)
        async for attempt in stamina.retry_context(
            on=_broker_lost, attempts=None, timeout=None, wait_initial=0.05, wait_max=WAIT_MAX
        ):
            with attempt:
                if regroup:
                    await self._create_groups(from_id="0")
                    regroup = False
                try:
                    result = await command()
                except ResponseError as exc:
                    regroup = _no_group(exc)
                    raise
        logger.warning("%s: the broker's Redis is back", what)
        self._back_at = time.monotonic()
        return result

    def _just_back(self) -> bool:
        """Whether the broker's Redis came back less than ``idle_timeout / 2`` ago. The
        messages live workers hold went unrenewed while it was down and may look idle; no
        claim is made until every live worker renewed its own (every ``idle_timeout / 3``),
        so a long outage does not hand running tasks to a second worker."""
        return time.monotonic() - self._back_at < self.idle_timeout / 2000

    async def _declare_consumer_group(self) -> None:
        """Create the groups of :meth:`streams` (taskiq-redis calls this at startup). A
        broker Redis that is down at start raises at once: ``mageflow worker`` turns it into
        one line and exit 2, so a misconfigured URL is seen, and a supervisor restarts the
        worker (outages once it serves are ridden out); a client's publish is retried."""
        from_id = "0" if self.served_streams is not None else self.consumer_id
        await self._create_groups(from_id, quiet=True)

    async def _create_groups(self, from_id: str, *, quiet: bool = False) -> None:
        for stream in self.streams():
            try:
                await self.client.xgroup_create(
                    stream, self.consumer_group_name, id=from_id, mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            else:
                if not quiet:
                    logger.warning(
                        "created the consumer group of %s again (from %s)", stream, from_id
                    )

    async def _accepted(
        self, stream: Any, msg_id: Any, fields: Any, *, fresh: bool = False
    ) -> AckableMessage | None:
        """The entry as a message to run, or ``None`` if it cannot be one: then it is
        dead-lettered to ``<stream>:dead`` and acknowledged, so that it neither stays
        pending nor crashes the next worker that reclaims it."""
        stream = stream.decode() if isinstance(stream, bytes) else stream
        data = fields.get(b"data")
        if data is None:
            reason = f"the entry has no 'data' field (fields: {sorted(fields)!r})"
        else:
            formatter = self.formatter
            try:
                if isinstance(formatter, ReadAheadFormatter):
                    formatter.checked(data)
                else:  # replaced with with_formatter(): parsed twice, as taskiq-redis does
                    check_labels(formatter.loads(message=data))
            except Exception as exc:  # whatever the formatter raises on bad bytes
                reason = f"cannot parse the message: {exc!r}"
            else:
                return self._message(stream, msg_id, data, fresh=fresh)
        dead = dead_stream(stream)
        logger.error("dead-lettering %s entry %s to %s: %s", stream, _text(msg_id), dead, reason)

        async def dead_letter() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    dead,
                    {
                        **fields,
                        "dead_reason": reason,
                        "dead_id": msg_id,
                        "dead_group": self.consumer_group_name,
                        "dead_consumer": self.consumer_name,
                    },
                    maxlen=DEAD_MAXLEN,
                    approximate=True,
                )
                pipe.xack(stream, self.consumer_group_name, msg_id)
                pipe.xdel(stream, msg_id)
                await pipe.execute()

        await self._riding_out("dead-lettering", dead_letter)
        return None

    def _message(self, stream: str, msg_id: Any, data: bytes, *, fresh: bool) -> AckableMessage:
        self._held.add((stream, msg_id))
        return AckableMessage(data=data, ack=StreamMessage(self, stream, msg_id, fresh=fresh))

    async def _ack(self, stream: str, msg_id: Any) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(stream, self.consumer_group_name, msg_id)
            pipe.xdel(stream, msg_id)
            await pipe.execute()

    async def _prune_consumers(self, conn: Redis) -> None:
        """Delete the group's dead consumers (see :data:`DEAD_CONSUMER_AFTER`)."""
        script = conn.register_script(_PRUNE_CONSUMERS)
        # never below two blocking reads and an idle timeout: a live consumer waiting in
        # XREADGROUP is not idle that long (and would only be recreated if deleted)
        bound = str(int(max(self.dead_consumer_after * 1000, 2 * self.block + self.idle_timeout)))
        for stream in self.streams():
            try:
                n = await script(
                    keys=[stream], args=[self.consumer_group_name, bound, self.consumer_name]
                )
            except RedisError as exc:  # an outage, or no group yet: next time
                logger.debug("cannot prune the consumers of %s: %s", stream, exc)
                continue
            if n:
                logger.info("deleted %d dead consumer(s) of %s", n, stream)

    async def _keep_claimed(self) -> None:
        async with Redis(connection_pool=self.connection_pool) as conn:
            script = conn.register_script(_KEEP_CLAIMED)
            failing = False
            next_prune = 0.0
            while True:
                await asyncio.sleep(self.idle_timeout / 3000)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + min(self.dead_consumer_after / 4, 60.0)
                    await self._prune_consumers(conn)
                by_stream: dict[Any, list[Any]] = {}
                for stream, msg_id in list(self._held):
                    by_stream.setdefault(stream, []).append(msg_id)
                for stream, ids in by_stream.items():
                    try:
                        await script(
                            keys=[stream], args=[self.consumer_group_name, self.consumer_name, *ids]
                        )
                    except RedisError as exc:
                        failing = True
                        logger.warning("cannot renew the claim on %d messages: %s", len(ids), exc)
                    else:
                        if failing:  # back after an outage this worker's reads may not see
                            failing, self._back_at = False, time.monotonic()


class StreamMessage:
    """The acknowledgement taskiq's receiver calls once the task of stream entry
    ``msg_id`` ended: XACK + XDEL in one round trip (retried through outages), unless the
    core did both inside the transition that ended the run (``entry.acknowledged``);
    either way the worker stops renewing its claim. The running task reaches it through
    :meth:`ReclaimingStreamBroker.delivery_of`."""

    __slots__ = ("_broker", "_held", "entry", "fresh", "released")

    def __init__(
        self, broker: ReclaimingStreamBroker, stream: str, msg_id: Any, *, fresh: bool
    ) -> None:
        self._broker = broker
        self._held = (stream, msg_id)
        self.entry = StreamEntry(stream, broker.consumer_group_name, _text(msg_id))
        self.fresh = fresh
        """Read from the stream for the first time (``XREADGROUP >``), not claimed from a
        dead worker."""
        self.released = False
        """taskiq's receiver called it: the entry is acknowledged and no longer held (an
        ``ack_type`` label may make it do so before the task runs)."""

    async def __call__(self) -> None:
        try:
            if not self.entry.acknowledged:
                await self._broker._riding_out(
                    "acknowledging", functools.partial(self._broker._ack, *self._held)
                )
        finally:
            self.released = True
            self._broker._held.discard(self._held)


READ_MOST = 32
"""The most new messages one read takes (see ``ReclaimingStreamBroker._read_count``)."""


def build_stream_broker(url: str, *, queue_name: str, idle_timeout: float) -> Any:
    """The recommended Redis broker for MageFlow: a :class:`ReclaimingStreamBroker`.

    A stream broker, because it acknowledges a message only after its task finished and
    hands a dead worker's message to another one once it has been idle ``idle_timeout``
    seconds (``ListQueueBroker`` pops with BRPOP and loses the message if the worker
    dies; ``PubSubBroker`` delivers to every worker). A worker takes only as many
    messages as it has free slots (one per read when it does not know its slots), so
    messages do not wait in a busy worker's buffer while another worker has nothing to
    do.
    """
    return ReclaimingStreamBroker(
        url, queue_name=queue_name, idle_timeout=int(idle_timeout * 1000), xread_count=1
    )
