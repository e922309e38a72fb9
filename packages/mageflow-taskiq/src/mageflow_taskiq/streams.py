"""The Redis broker the backend builds from a URL: taskiq-redis's stream broker, fixed so
that a dead worker's messages are redelivered even when nothing new is published, and a
live worker's messages are never taken from it however long their tasks run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq import AckableMessage, BrokerMessage
from taskiq_redis import RedisStreamBroker

logger = logging.getLogger(__name__)

# Reset the idle time of the given entries that are still pending for this consumer.
_KEEP_CLAIMED = """
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
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

    Two costs are cut as well: publishing and acknowledging reuse one client instead of
    building a ``Redis`` object per message, and an acknowledged entry is deleted from the
    stream (XACK + XDEL in one round trip), so the stream holds what is queued or
    running, not every message ever sent.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: set[tuple[Any, Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._client: Redis | None = None

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
        streams: dict[Any, Any] = {self.queue_name: ">", **self.additional_streams}
        next_scan = 0.0
        async with Redis(connection_pool=self.connection_pool) as conn:
            while True:
                fetched: Any = await conn.xreadgroup(
                    self.consumer_group_name,
                    self.consumer_name,
                    streams,
                    block=self.block,
                    noack=False,
                    count=self.count,
                )
                for stream, entries in fetched or ():
                    for msg_id, fields in entries:
                        yield self._message(stream, msg_id, fields)
                if time.monotonic() < next_scan:
                    continue
                next_scan = time.monotonic() + self.block / 1000
                for stream in streams:
                    # One message per XAUTOCLAIM: the receiver asks for the next message
                    # only when it has a free slot, so a claimed message runs at once.
                    # Claimed in a batch, the rest would wait here, unrenewed, until
                    # another worker claims them too and both run them.
                    cursor: Any = "0-0"
                    while True:
                        reply: Any = await conn.xautoclaim(
                            stream,
                            self.consumer_group_name,
                            self.consumer_name,
                            min_idle_time=self.idle_timeout,
                            start_id=cursor,
                            count=1,
                        )
                        cursor = reply[0]
                        for msg_id, fields in reply[1]:
                            # Redis 6.2 lists deleted entries with no fields. A message
                            # held here was claimed back after failed renewals: skip it.
                            if fields and (stream, msg_id) not in self._held:
                                yield self._message(stream, msg_id, fields)
                        if cursor in (b"0-0", "0-0"):
                            break

    def _message(self, stream: Any, msg_id: Any, fields: Any) -> AckableMessage:
        stream = stream.decode() if isinstance(stream, bytes) else stream
        held = (stream, msg_id)
        self._held.add(held)

        async def ack_and_release() -> None:
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.xack(stream, self.consumer_group_name, msg_id)
                    pipe.xdel(stream, msg_id)
                    await pipe.execute()
            finally:
                self._held.discard(held)

        return AckableMessage(data=fields[b"data"], ack=ack_and_release)

    async def _keep_claimed(self) -> None:
        async with Redis(connection_pool=self.connection_pool) as conn:
            script = conn.register_script(_KEEP_CLAIMED)
            while True:
                await asyncio.sleep(self.idle_timeout / 3000)
                by_stream: dict[Any, list[Any]] = {}
                for stream, msg_id in list(self._held):
                    by_stream.setdefault(stream, []).append(msg_id)
                for stream, ids in by_stream.items():
                    try:
                        await script(
                            keys=[stream], args=[self.consumer_group_name, self.consumer_name, *ids]
                        )
                    except RedisError as exc:
                        logger.warning("cannot renew the claim on %d messages: %s", len(ids), exc)


def build_stream_broker(url: str, *, queue_name: str, idle_timeout: float) -> Any:
    """The recommended Redis broker for MageFlow: a :class:`ReclaimingStreamBroker`.

    A stream broker, because it acknowledges a message only after its task finished and
    hands a dead worker's message to another one once it has been idle ``idle_timeout``
    seconds (``ListQueueBroker`` pops with BRPOP and loses the message if the worker
    dies; ``PubSubBroker`` delivers to every worker). ``xread_count=1``: a worker takes
    a message only when it has a free slot, so messages do not wait in a busy worker's
    buffer while another worker has nothing to do.
    """
    return ReclaimingStreamBroker(
        url, queue_name=queue_name, idle_timeout=int(idle_timeout * 1000), xread_count=1
    )
