"""A dashboard served by uvicorn on a free local port, over a given app."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from mageflow import Mageflow

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(mf: Mageflow, token: str | None = None) -> AsyncIterator[str]:
    """Serve the dashboard over ``mf``; yields its base URL."""
    import uvicorn

    from mageflow.cli.dashboard.server import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(mf, token=token), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


Serving = Callable[..., Any]
