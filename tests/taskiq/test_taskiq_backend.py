"""TaskiqBackend configuration, and the adapter run in-process on taskiq's InMemoryBroker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from taskiq import InMemoryBroker, SimpleRetryMiddleware, SmartRetryMiddleware
from taskiq.kicker import AsyncKicker
from taskiq.serializers import PickleSerializer
from taskiq_redis import ListQueueBroker

from mageflow import Mageflow
from mageflow.backend.base import HEADER_KEY, OutgoingTask, RunContext, TaskDefinition
from mageflow.backend.local import LocalBackend
from mageflow.errors import ConfigurationError, NonRetryableError
from mageflow.plugins.hookspecs import BackendSpec
from mageflow.plugins.manager import backend_for_native
from mageflow.store import MemoryStore
from mageflow_taskiq.backend import (
    ENV_BROKER,
    ENV_IDLE_TIMEOUT,
    ENV_QUEUE,
    ENV_URL,
    FALLBACK_TASK,
    TaskiqBackend,
)
from mageflow_taskiq.streams import ReclaimingStreamBroker


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_BROKER, ENV_URL, ENV_QUEUE, ENV_IDLE_TIMEOUT):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"fake_taskiq_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from taskiq import InMemoryBroker
            broker = InMemoryBroker()
            def make_broker():
                return InMemoryBroker()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_nothing_configured_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match=f"{ENV_BROKER}.*{ENV_URL}"):
        TaskiqBackend.from_options({})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"brokr": InMemoryBroker()}, "unknown option.*brokr.*accepted: broker="),
        ({"broker": InMemoryBroker(), "broker_url": "redis://x"}, "not both"),
        ({"broker": InMemoryBroker(), "queue_name": "q"}, "only with broker_url"),
        ({"broker": object()}, "must be a taskiq broker"),
        ({"broker": "no_colon"}, "module:attribute"),
        ({"broker": "no_such_module_xyz:broker"}, "cannot import"),
    ],
)
def test_bad_options_raise_configuration_error(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        TaskiqBackend.from_options(options)


def test_pickle_is_refused() -> None:
    broker = InMemoryBroker().with_serializer(PickleSerializer())
    with pytest.raises(ConfigurationError, match="JSON"):
        TaskiqBackend.from_options({"broker": broker})


def test_broker_from_url_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TaskiqBackend.from_options({"broker_url": "redis://localhost:1/0"})
    assert isinstance(backend.broker, ReclaimingStreamBroker)
    assert (backend.broker.queue_name, backend.broker.idle_timeout) == ("mageflow", 60_000)
    assert backend.capabilities.remote_workers
    assert not backend.capabilities.cancel_running
    assert not backend.capabilities.delayed_start

    monkeypatch.setenv(ENV_URL, "redis://localhost:1/0")
    monkeypatch.setenv(ENV_QUEUE, "jobs")
    monkeypatch.setenv(ENV_IDLE_TIMEOUT, "2.5")
    backend = TaskiqBackend.from_options({})
    assert (backend.broker.queue_name, backend.broker.idle_timeout) == ("jobs", 2500)
    assert backend.describe()["queue_name"] == "jobs"

    monkeypatch.setenv(ENV_IDLE_TIMEOUT, "soon")
    with pytest.raises(ConfigurationError, match=ENV_IDLE_TIMEOUT):
        TaskiqBackend.from_options({})


@pytest.mark.parametrize("value", ["0", "-1", "0.5", "nan", "inf", "abc"])
def test_idle_timeout_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """0 hands every running message to another worker (double runs), -1 made workers
    exit: both are a ConfigurationError, from the environment or the option."""
    monkeypatch.setenv(ENV_URL, "redis://localhost:1/0")
    monkeypatch.setenv(ENV_IDLE_TIMEOUT, value)
    with pytest.raises(ConfigurationError, match=f"{ENV_IDLE_TIMEOUT} must be .* at least 1"):
        TaskiqBackend.from_options({})
    monkeypatch.delenv(ENV_IDLE_TIMEOUT)
    with pytest.raises(ConfigurationError, match="idle_timeout= must be"):
        TaskiqBackend.from_options({"idle_timeout": float(value) if value != "abc" else value})


@pytest.mark.parametrize("url", ["http://x", "localhost:6379", "memory://"])
def test_broker_url_of_another_scheme_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        TaskiqBackend.from_options({"broker_url": url})
    monkeypatch.setenv(ENV_URL, f"{url}?password=PW")
    with pytest.raises(ConfigurationError, match=ENV_URL) as info:
        TaskiqBackend.from_options({})
    assert "PW" not in str(info.value)


@pytest.mark.parametrize("url", ["redis+cluster://u:PW@h:7000", "rediss+cluster://h:7000"])
def test_broker_on_a_redis_cluster_is_refused_with_the_layout_to_use(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """The stream broker needs a single Redis; the state may stay on the cluster."""
    with pytest.raises(ConfigurationError, match="is a Redis Cluster") as info:
        TaskiqBackend.from_options({"broker_url": url})
    assert "single Redis" in str(info.value) and "PW" not in str(info.value)
    monkeypatch.setenv(ENV_URL, url)
    with pytest.raises(ConfigurationError, match=ENV_URL):
        TaskiqBackend.from_options({})


def test_broker_from_import_string(app_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TaskiqBackend.from_options({"broker": f"{app_module}:broker"})
    assert backend.broker is sys.modules[app_module].broker
    assert backend.describe()["import_path"] == f"{app_module}:broker"

    monkeypatch.setenv(ENV_BROKER, f"{app_module}:make_broker")  # a factory, as taskiq allows
    monkeypatch.setenv(ENV_URL, "redis://ignored")  # the broker variable wins
    assert isinstance(TaskiqBackend.from_options({}).broker, InMemoryBroker)


def test_a_taskiq_broker_selects_the_backend() -> None:
    broker = ListQueueBroker("redis://localhost:1")
    app = Mageflow(broker, "redis://localhost:1/0")
    assert isinstance(app.backend, TaskiqBackend)
    assert app.backend.broker is broker
    spec = backend_for_native(InMemoryBroker())
    assert spec is not None and spec.name == "taskiq"
    assert backend_for_native(object()) is None


# -- a store the workers cannot share is refused ------------------------------------------
async def test_client_without_redis_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAGEFLOW_REDIS_URL", raising=False)
    app = Mageflow(backend="taskiq", broker_url="redis://localhost:1/0")

    @app.task("refused.echo")
    async def echo(msg: dict[str, Any]) -> dict[str, Any]:
        return msg

    for attempt in (lambda: app.sign("refused.echo"), lambda: app.chain(["refused.echo"])):
        with pytest.raises(ConfigurationError, match=r"MAGEFLOW_REDIS_URL=.*redis_url="):
            await attempt()
    with pytest.raises(ConfigurationError, match="MAGEFLOW_REDIS_URL"):
        app.run_worker()
    await app.aclose()


async def test_the_refusal_leaves_test_harnesses_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the instance connects nothing and refuses nothing: the pytest plugin swaps
    in the local backend; an explicit store= is taken as given; restoring brings the
    refusal back."""
    monkeypatch.delenv("MAGEFLOW_REDIS_URL", raising=False)
    app = Mageflow(backend="taskiq", broker_url="redis://localhost:1/0")
    assert app.backend.describe()["broker"] == "ReclaimingStreamBroker"
    previous = app.use(LocalBackend(), MemoryStore())
    assert isinstance(app.store, MemoryStore)
    app.use(*previous)
    with pytest.raises(ConfigurationError, match="MAGEFLOW_REDIS_URL"):
        app.store  # noqa: B018
    explicit = Mageflow(backend="taskiq", broker_url="redis://localhost:1/0", store=MemoryStore())
    assert isinstance(explicit.store, MemoryStore)
    # in-process taskiq (InMemoryBroker) shares this process's memory: nothing to refuse
    assert isinstance(Mageflow(InMemoryBroker()).store, MemoryStore)


def test_mageflow_worker_without_redis_url_exits_with_the_reason(
    app_module: str, tmp_path: Path
) -> None:
    (tmp_path / f"{app_module}_mf.py").write_text(
        textwrap.dedent(
            """
            from mageflow import Mageflow
            mf = Mageflow(backend="taskiq", broker_url="redis://localhost:1/0")

            @mf.task("refused.echo")
            async def echo(msg):
                return msg
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGEFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run(
        [sys.executable, "-m", "mageflow", "worker", f"{app_module}_mf:mf"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "MAGEFLOW_REDIS_URL" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_retry_middleware_is_added_once_and_only_when_missing() -> None:
    broker = InMemoryBroker()
    TaskiqBackend(broker)
    TaskiqBackend(broker)
    assert sum(isinstance(m, SimpleRetryMiddleware) for m in broker.middlewares) == 1

    smart = InMemoryBroker().with_middlewares(SmartRetryMiddleware(default_delay=0))
    TaskiqBackend(smart)
    assert len(smart.middlewares) == 1


def test_in_memory_broker_runs_no_workers() -> None:
    backend = TaskiqBackend.from_options({"broker": InMemoryBroker()})
    assert not backend.capabilities.remote_workers
    with pytest.raises(ConfigurationError, match="no workers"):
        backend.run_worker()


async def test_in_memory_round_trip_with_retries() -> None:
    seen: list[tuple[Any, RunContext]] = []

    async def handler(payload: Any, ctx: RunContext) -> Any:
        seen.append((payload, ctx))
        if payload == "fatal":
            raise NonRetryableError("no")
        if payload == "flaky" and not ctx.is_final_attempt:
            raise RuntimeError("again")
        return payload

    backend = TaskiqBackend.from_options({"broker": InMemoryBroker()})
    backend.register(TaskDefinition(name="t.h", handler=handler, retries=2))
    await backend.startup()
    ids = await backend.publish_many(
        [OutgoingTask("t.h", p, {HEADER_KEY: p}) for p in ("ok", "flaky", "fatal")]
    )
    for _ in range(40):
        await backend.broker.wait_all()
        await asyncio.sleep(0.05)
    await backend.shutdown()

    by_payload: dict[str, list[RunContext]] = {}
    for payload, ctx in seen:
        by_payload.setdefault(payload, []).append(ctx)
    attempts = {p: [(c.attempt, c.is_final_attempt) for c in cs] for p, cs in by_payload.items()}
    assert attempts == {
        "ok": [(1, False)],
        "flaky": [(1, False), (2, False), (3, True)],
        "fatal": [(1, False)],
    }
    for run_id, payload in zip(ids, ("ok", "flaky", "fatal"), strict=True):
        assert {c.run_id for c in by_payload[payload]} == {run_id}
        assert {c.headers[HEADER_KEY] for c in by_payload[payload]} == {payload}


async def test_unknown_task_names_reach_the_core_not_sent_by_mageflow_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """taskiq would drop a message whose task the worker lacks; the adapter hands it to
    the core. A message that MageFlow did not send (no signature key, any arguments) is
    only logged, as taskiq would."""
    broker = InMemoryBroker()
    app = Mageflow(broker)
    assert broker.find_task("no.such.task") is broker.find_task(FALLBACK_TASK)
    await app.ensure_started()
    kicker: AsyncKicker[Any, Any] = AsyncKicker("no.such.task", broker, {})
    with caplog.at_level("WARNING", logger="mageflow.worker"):
        await kicker.kiq(1, 2, other=3)
        await broker.wait_all()
    assert "'no.such.task' is not registered" in caplog.text
    assert "not sent by MageFlow" in caplog.text
    await app.aclose()


def test_plugin_registers_the_backend_without_importing_taskiq() -> None:
    code = textwrap.dedent(
        """
        import sys
        from mageflow_taskiq import plugin
        specs = []
        plugin.register_backends(register=specs.append)
        print(repr(specs[0]))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("taskiq", "taskiq_redis")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": ":".join(p for p in sys.path if p)},
    ).stdout.splitlines()  # fmt: skip
    assert out[0] == repr(
        BackendSpec(
            name="taskiq",
            target="mageflow_taskiq.backend:TaskiqBackend",
            native_option="broker",
            native_modules=("taskiq", "taskiq_redis"),
            distribution="mageflow-taskiq",
        )
    )
    assert out[1] == "[]"
