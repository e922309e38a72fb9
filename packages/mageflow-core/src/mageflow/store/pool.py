"""A blocking connection pool whose uncontended path costs no lock, no timer and no
observability events: redis-py's ``BlockingConnectionPool`` takes an ``asyncio.Condition``
and arms a timeout for every command, a third of a worker's client CPU per store call."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


class LeanBlockingConnectionPool(aioredis.BlockingConnectionPool):
    """``BlockingConnectionPool`` that hands out an idle connection and takes it back
    directly while nobody waits for one. When every connection is busy, a caller goes the
    parent's way (it waits, up to ``timeout``), and so does every release until no caller
    is left there, so that the parent wakes its waiters as before. A connection handed
    out is checked as the parent checks it (connected, no reply left unread).

    Not taken while the pool is in redis-py's maintenance mode or has a credential
    provider (its re-authentication listens to releases); redis-py's own pool metrics
    (OpenTelemetry) do not count what the lean path lends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0
        """Callers inside the parent's ``get_connection`` (waiting for a connection)."""
        self._lean = self.connection_kwargs.get("credential_provider") is None

    def _lean_now(self) -> bool:
        return self._lean and not self._queued and not getattr(self, "_in_maintenance", False)

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        if self._available_connections and self._lean_now():
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        self._queued += 1
        try:
            return await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            self._queued -= 1

    async def release(self, connection: Any) -> None:
        reconnect = getattr(connection, "should_reconnect", None)
        if (
            not self._lean_now()
            or connection not in self._in_use_connections
            or (reconnect is not None and reconnect())
        ):
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)
