"""The stream broker parses each message once: the parse ``listen()`` makes to check an
entry (poison is dead-lettered there) is the one taskiq's receiver gets back from the
broker's formatter, with its typed labels still to parse (a ``bytes`` label parsed twice
would be base64-decoded twice). Real Redis, the real broker and formatter."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from taskiq import TaskiqFormatter, TaskiqMessage
from taskiq.labels import LabelType

from mageflow_taskiq.streams import ReadAheadFormatter, build_stream_broker

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Counting(TaskiqFormatter):
    """Delegates to the broker's own formatter and counts the parses."""

    def __init__(self, inner: TaskiqFormatter) -> None:
        self.inner, self.loads_calls = inner, 0

    def dumps(self, message: TaskiqMessage) -> Any:
        return self.inner.dumps(message)

    def loads(self, message: bytes) -> TaskiqMessage:
        self.loads_calls += 1
        return self.inner.loads(message)


async def test_a_message_is_parsed_once_and_its_labels_by_the_receiver(redis_url: str) -> None:
    broker = build_stream_broker(redis_url, queue_name=f"ra-{uuid.uuid4().hex[:8]}", idle_timeout=5)
    broker.is_worker_process = True
    fmt = broker.formatter
    assert isinstance(fmt, ReadAheadFormatter)
    counting = Counting(fmt.inner)
    fmt.inner = counting
    blob = b"\x00\xffbinary"
    await broker.startup()
    try:
        sent = TaskiqMessage(
            task_id="t1",
            task_name="some.task",
            labels={"blob": base64.b64encode(blob).decode(), "n": "3"},
            labels_types={"blob": LabelType.BYTES, "n": LabelType.INT},
            args=[],
            kwargs={"x": 1},
        )
        await broker.kick(fmt.dumps(sent))
        listening = broker.listen()
        message = await anext(listening)
        assert counting.loads_calls == 1, "listen() parsed it to check it"
        # what taskiq's receiver does with it
        got = broker.formatter.loads(message=message.data)
        got.parse_labels()
        assert counting.loads_calls == 1, "the receiver got the same parse"
        assert (got.task_id, got.kwargs) == ("t1", {"x": 1})
        assert got.labels["blob"] == blob, "the bytes label is decoded once"
        assert got.labels["n"] == 3
        # handed out once: a second parse of the same bytes is a fresh one
        again = broker.formatter.loads(message=message.data)
        assert counting.loads_calls == 2 and again is not got
        await listening.aclose()
    finally:
        await broker.shutdown()
