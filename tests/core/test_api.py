"""The public API is exactly ``mageflow.__all__``; configuration picks backends by name."""

from __future__ import annotations

import pytest

import mageflow
from mageflow import Mageflow
from mageflow.backend.local import LocalBackend
from mageflow.errors import ConfigurationError, TaskNotRegisteredError, UnknownBackendError
from mageflow.plugins import backend_specs
from mageflow.store import MemoryStore, RedisStore

PUBLIC = {
    "Backoff",
    "BranchSignature",
    "Capabilities",
    "ChainSignature",
    "GraphNode",
    "GraphSignature",
    "Mageflow",
    "Options",
    "ReturnValue",
    "RunContext",
    "Signature",
    "SignatureState",
    "SignatureStatus",
    "SwarmConfig",
    "SwarmSignature",
    "TaskBackend",
    "TaskContext",
    "TaskDefinition",
    "TaskLike",
    "__version__",
    "branch",
    "chain",
    "current_task",
    "errors",
    "find_by_identifiers",
    "graph",
    "handle_task_callback",
    "load",
    "register_task",
    "sign",
    "swarm",
    "swarm_of",
}


def test_public_api_is_all() -> None:
    assert set(mageflow.__all__) == PUBLIC
    for name in mageflow.__all__:
        assert hasattr(mageflow, name), name


def test_local_backend_registered_through_entry_point() -> None:
    spec = backend_specs()["local"]
    assert spec.target == "mageflow.backend.local:LocalBackend"


def test_unknown_backend_lists_installed_and_suggests() -> None:
    with pytest.raises(UnknownBackendError) as info:
        Mageflow(backend="lcoal")
    message = str(info.value)
    assert "local" in message
    assert "Did you mean 'local'" in message


def test_backend_and_store_from_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("MAGEFLOW_BACKEND", "local")
    monkeypatch.setenv("MAGEFLOW_REDIS_URL", redis_url)
    mf = Mageflow()
    assert isinstance(mf.backend, LocalBackend)
    assert isinstance(mf.store, RedisStore)
    monkeypatch.delenv("MAGEFLOW_REDIS_URL")
    assert isinstance(Mageflow().store, MemoryStore)


def test_redis_url_positional_and_unknown_backend_option() -> None:
    mf = Mageflow("redis://127.0.0.1:1/0", backend="local")
    assert isinstance(mf.store, RedisStore)
    with pytest.raises(ConfigurationError, match="workers="):
        Mageflow(backend="local", brokr="x")
    with pytest.raises(ConfigurationError, match="no installed backend accepts"):
        Mageflow(object())


async def test_module_level_functions_use_default_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the default instance is the first one created in the process; start from none
    monkeypatch.setattr(mageflow.app, "_default", None)
    monkeypatch.delenv("MAGEFLOW_REDIS_URL", raising=False)
    default = mageflow.app.default_instance()

    @mageflow.register_task("api-default-task")
    @mageflow.handle_task_callback()
    async def task(message: dict[str, object]) -> str:
        return "ok"

    assert "api-default-task" in default.tasks
    sig = await mageflow.sign("api-default-task")
    assert (await mageflow.load(sig.key)).key == sig.key
    assert await sig.aio_run({}, timeout=5) == "ok"
    with pytest.raises(TaskNotRegisteredError):
        await mageflow.sign("api-no-such-task")
