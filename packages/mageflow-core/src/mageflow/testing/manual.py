"""``ManualBackend``: a backend whose broker is the test itself.

Publishing records the message; :meth:`ManualBackend.deliver` runs it when the test says
so, with the run id and attempt the test chooses. That makes duplicate deliveries,
redeliveries after a crash and exotic interleavings deterministic. It runs the real
core wrapper, so everything but the transport is the production path.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mageflow.backend.base import (
    HEADER_KEY,
    JSON,
    Capabilities,
    OutgoingTask,
    RunContext,
    TaskBackend,
    TaskDefinition,
)
from mageflow.errors import CapabilityNotSupportedError, ConfigurationError


@dataclass
class Sent:
    run_id: str
    task: OutgoingTask

    @property
    def key(self) -> str:
        return self.task.headers[HEADER_KEY]


class ManualBackend(TaskBackend):
    name = "manual"
    capabilities = Capabilities(remote_workers=False)

    def __init__(self) -> None:
        self.definitions: dict[str, TaskDefinition] = {}
        self.sent: list[Sent] = []

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ManualBackend:
        if options:
            raise ConfigurationError("the manual backend takes no options")
        return cls()

    def register(self, definition: TaskDefinition) -> None:
        self.definitions[definition.name] = definition

    async def publish(self, task: OutgoingTask) -> str:
        run_id = uuid.uuid4().hex
        self.sent.append(Sent(run_id, task))
        return run_id

    def take(self) -> list[Sent]:
        """Everything published since the last call."""
        out, self.sent = self.sent, []
        return out

    async def deliver(
        self, sent: Sent, *, run_id: str | None = None, attempt: int = 1, final: bool = True
    ) -> JSON:
        """Run one published message now, as a worker would."""
        definition = self.definitions[sent.task.task_name]
        ctx = RunContext(
            task_name=definition.name,
            run_id=run_id or sent.run_id,
            attempt=attempt,
            is_final_attempt=final,
            headers=dict(sent.task.headers),
        )
        return await definition.handler(sent.task.payload, ctx)

    def run_worker(self, *, concurrency: int | None = None) -> None:
        raise CapabilityNotSupportedError("the manual backend has no worker; call deliver()")
