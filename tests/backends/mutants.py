"""Deliberately broken variants of the ``local`` backend, one broken promise each.

``tests/backends/test_contract_mutations.py`` runs the contract suite against every one
and expects it to fail: a suite that stays green against one of these has gone blind to
that promise. Each variant breaks what a real adapter could get wrong, in the adapter's
own code (the core and the engine are untouched).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

from mageflow.backend.base import JSON, RunContext, TaskDefinition, TaskHandler
from mageflow.backend.local import LocalBackend, _Message
from mageflow.errors import NonRetryableError
from mageflow.faults import SimulatedCrash
from tests.backends.test_local_contract import LEASE


class _Rewrites(LocalBackend):
    """Hands the core a rewritten ``RunContext`` (the backend's own bookkeeping is right)."""

    def rewrite(self, ctx: RunContext) -> RunContext:
        raise NotImplementedError

    def register(self, definition: TaskDefinition) -> None:
        inner = definition.handler

        async def handler(payload: JSON, ctx: RunContext) -> JSON:
            return await inner(payload, self.rewrite(ctx))

        super().register(dataclasses.replace(definition, handler=handler))


class NewRunIdPerDelivery(_Rewrites):
    def rewrite(self, ctx: RunContext) -> RunContext:
        return dataclasses.replace(ctx, run_id=uuid.uuid4().hex)


class AlwaysFinal(_Rewrites):
    def rewrite(self, ctx: RunContext) -> RunContext:
        return dataclasses.replace(ctx, is_final_attempt=True)


class NeverFinal(_Rewrites):
    def rewrite(self, ctx: RunContext) -> RunContext:
        return dataclasses.replace(ctx, is_final_attempt=False)


class AttemptAlwaysOne(_Rewrites):
    def rewrite(self, ctx: RunContext) -> RunContext:
        return dataclasses.replace(ctx, attempt=1)


class _WrapsHandler(LocalBackend):
    """Runs the core's handler through :meth:`call`."""

    async def call(self, inner: TaskHandler, payload: JSON, ctx: RunContext) -> JSON:
        raise NotImplementedError

    def register(self, definition: TaskDefinition) -> None:
        inner = definition.handler

        async def handler(payload: JSON, ctx: RunContext) -> JSON:
            return await self.call(inner, payload, ctx)

        super().register(dataclasses.replace(definition, handler=handler))


class RetriesNonRetryable(_WrapsHandler):
    """Treats ``NonRetryableError`` like any other error."""

    async def call(self, inner: TaskHandler, payload: JSON, ctx: RunContext) -> JSON:
        try:
            return await inner(payload, ctx)
        except NonRetryableError as exc:
            raise RuntimeError(str(exc)) from exc


class RetriesCanceled(_WrapsHandler):
    """A canceled run comes back as an ordinary failure, so it is retried."""

    async def call(self, inner: TaskHandler, payload: JSON, ctx: RunContext) -> JSON:
        try:
            return await inner(payload, ctx)
        except asyncio.CancelledError as exc:
            raise RuntimeError("cancelled") from exc


class CancelDoesNothing(LocalBackend):
    """Declares ``cancel_running`` (inherited) but stops nothing."""

    async def cancel(self, run_ids: Any) -> None:
        return None


class NoRoomForCrashRedelivery(_WrapsHandler):
    """Counts a crash redelivery as an attempt and drops a message past the retry budget
    without calling the handler (arq's ``max_tries``)."""

    crashed: set[str]

    async def call(self, inner: TaskHandler, payload: JSON, ctx: RunContext) -> JSON:
        try:
            return await inner(payload, ctx)
        except SimulatedCrash:
            self.crashed = {*getattr(self, "crashed", set()), ctx.run_id}
            raise

    async def _execute(self, message: _Message) -> None:
        crashed = getattr(self, "crashed", set())
        if message.run_id in crashed:
            crashed.discard(message.run_id)
            message.attempt += 1
        definition = self.definitions.get(message.task.task_name)
        if definition is not None and message.attempt > definition.retries + 1:
            self._outstanding -= 1  # dropped unhandled
            return
        await super()._execute(message)


class NoLeaseRenewal(LocalBackend):
    """Hands a message to another worker once it has run for the harness's declared
    lease, as a broker whose claims the worker never renews does."""

    async def _execute(self, message: _Message) -> None:
        loop = asyncio.get_running_loop()
        again = self.redeliver(message.run_id, message.task, message.attempt)
        timer = loop.call_later(LEASE, loop.create_task, again)
        try:
            await super()._execute(message)
        finally:
            if not timer.cancelled():
                timer.cancel()
            again.close()  # not started: the lease did not lapse


MUTANTS: dict[str, tuple[type[LocalBackend], str]] = {
    # name: (variant, the contract tests that must catch it: a pytest -k expression)
    "new-run-id-per-delivery": (NewRunIdPerDelivery, "attempts_are_reported"),
    "always-final": (AlwaysFinal, "attempts_are_reported"),
    "never-final": (NeverFinal, "attempts_are_reported"),
    "attempt-always-1": (AttemptAlwaysOne, "attempts_are_reported"),
    "non-retryable-retried": (RetriesNonRetryable, "non_retryable"),
    "canceled-retried": (RetriesCanceled, "canceled_run_is_not_retried"),
    "cancel-does-nothing": (CancelDoesNothing, "interrupt or canceled_run_is_not_retried"),
    "no-room-for-crash-redelivery": (NoRoomForCrashRedelivery, "redelivery_after_the_final"),
    "no-lease-renewal": (NoLeaseRenewal, "longer_than_the_lease"),
}
