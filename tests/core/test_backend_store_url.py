"""A backend that asks for the store's Redis URL (``store_url_option``) receives it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import redis.asyncio as aioredis

from mageflow import Mageflow
from mageflow.backend.base import OutgoingTask, TaskBackend, TaskDefinition
from mageflow.plugins.hookspecs import BackendSpec, hookimpl
from mageflow.plugins.manager import plugin_manager
from mageflow.store import MemoryStore

URL = "redis://localhost:6399/3"


class AsksForStoreUrl(TaskBackend):
    """Defaults its own broker to the store's Redis."""

    name = "asks-url"
    accepted_options = ("broker_url", "store_url")
    store_url_option = "store_url"

    def __init__(self, broker_url: str | None = None, store_url: str | None = None) -> None:
        self.broker_url = broker_url or store_url

    def register(self, definition: TaskDefinition) -> None: ...

    async def publish(self, task: OutgoingTask) -> str:
        return "run"

    def run_worker(self, *, concurrency: int | None = None) -> None: ...


class Silent(AsksForStoreUrl):
    name = "no-url"
    store_url_option = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TaskBackend:
        assert "store_url" not in options, "a backend that did not ask gets no URL"
        return super().from_options(options)


class Plugin:
    @hookimpl
    def register_backends(self, register: Callable[[BackendSpec], None]) -> None:
        register(BackendSpec(name="asks-url", target=f"{__name__}:AsksForStoreUrl"))
        register(BackendSpec(name="no-url", target=f"{__name__}:Silent"))


@pytest.fixture(autouse=True)
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MAGEFLOW_REDIS_URL", raising=False)
    pm = plugin_manager()
    pm.register(Plugin(), name="store-url-test")
    yield
    pm.unregister(name="store-url-test")


def test_redis_url_reaches_a_backend_that_asks() -> None:
    mf = Mageflow(backend="asks-url", redis_url=URL)
    assert isinstance(mf.backend, AsksForStoreUrl) and mf.backend.broker_url == URL


def test_a_url_passed_positionally_or_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Mageflow(URL, backend="asks-url").backend.broker_url == URL  # type: ignore[attr-defined]
    monkeypatch.setenv("MAGEFLOW_REDIS_URL", URL)
    assert Mageflow(backend="asks-url").backend.broker_url == URL  # type: ignore[attr-defined]


def test_the_backends_own_option_wins() -> None:
    mf = Mageflow(backend="asks-url", redis_url=URL, store_url="redis://other:6379/0")
    assert mf.backend.broker_url == "redis://other:6379/0"  # type: ignore[attr-defined]


def test_none_without_a_store_url() -> None:
    assert Mageflow(backend="asks-url").backend.broker_url is None  # type: ignore[attr-defined]
    client = aioredis.Redis.from_url(URL)
    assert Mageflow(client, backend="asks-url").backend.broker_url is None  # type: ignore[attr-defined]
    mf = Mageflow(backend="asks-url", redis_url=URL, store=MemoryStore())
    assert mf.backend.broker_url is None  # type: ignore[attr-defined]


def test_a_backend_that_does_not_ask_gets_nothing() -> None:
    mf = Mageflow(backend="no-url", redis_url=URL)
    assert isinstance(mf.backend, Silent) and mf.backend.broker_url is None
