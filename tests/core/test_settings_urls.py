"""Settings and URLs from the environment or the caller (issue 13, items 8 and 12):
out-of-range or malformed values are a :class:`ConfigurationError` naming the setting,
and no error shows a password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from mageflow import Mageflow, SwarmConfig
from mageflow.errors import ConfigurationError, InvalidSwarmConfigError, StoreUnavailableError
from mageflow.plugins.settings import MageflowSettings
from mageflow.store import MemoryStore, RedisStore, redact_url
from mageflow.testing.manual import ManualBackend


# -- item 12: settings ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAGEFLOW_ACTIVE_TTL", "abc"),
        ("MAGEFLOW_ACTIVE_TTL", "0"),
        ("MAGEFLOW_FINISHED_TTL", "-5"),
        ("MAGEFLOW_RESEND_AFTER", "0"),
        ("MAGEFLOW_RESEND_AFTER", "nan"),
        ("MAGEFLOW_FINISH_LINGER", "-0.001"),
        ("MAGEFLOW_FINISH_LINGER", "2"),
        ("MAGEFLOW_FINISH_LINGER", "soon"),
        ("MAGEFLOW_REDIS_URL", "http://x"),
        ("MAGEFLOW_REDIS_URL", "localhost:6379"),
    ],
)
def test_bad_settings_raise_configuration_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        MageflowSettings()
    with pytest.raises(ConfigurationError, match=name):
        Mageflow(backend=ManualBackend())


def test_the_finish_linger_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Mageflow(backend=ManualBackend()).engine.finish_linger == 0.005
    monkeypatch.setenv("MAGEFLOW_FINISH_LINGER", "0")
    app = Mageflow(backend=ManualBackend())
    assert app.engine.finish_linger == 0
    app.use(store=MemoryStore())
    assert app.engine.finish_linger == 0


def test_bad_store_arguments_raise_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        Mageflow(backend=ManualBackend(), redis_url="http://x")
    with pytest.raises(ConfigurationError, match="finished_ttl"):
        RedisStore("redis://localhost:6379/0", finished_ttl=-1)
    with pytest.raises(ConfigurationError, match="active_ttl"):
        MemoryStore(active_ttl=0)


def test_settings_error_does_not_show_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGEFLOW_REDIS_URL", "http://user:s3cret@x/?password=s3cret")
    with pytest.raises(ConfigurationError) as info:
        MageflowSettings()
    assert "s3cret" not in str(info.value)


# -- item 8: URLs shown without their password ----------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h/0?password=PW", "redis://h/0?password=***"),
        ("unix:///tmp/r.sock?db=1&password=PW", "unix:///tmp/r.sock?db=1&password=***"),
        ("redis://u:PW@h:6379/0?Password=PW&x=1", "redis://u:***@h:6379/0?Password=***&x=1"),
        ("redis://:PW@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("rediss://u@h:6380", "rediss://u@h:6380"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url", ["unix:///nonexistent/mageflow.sock?password=PW", "redis://:PW@[::1]:1/0"]
)
@pytest.mark.asyncio
async def test_store_unavailable_shows_no_password(url: str) -> None:
    store = RedisStore(url)
    with pytest.raises(StoreUnavailableError) as info:
        await store.ping()
    assert "PW" not in str(info.value)
    assert redact_url(url) in str(info.value)
    await store.close()


def test_cli_error_shows_no_password(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/none.sock?password=PW"
    done = subprocess.run(
        [sys.executable, "-m", "mageflow", "--redis-url", url, "ls"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "PW" not in out
    assert "password=***" in out


def test_store_url_of_a_client_keeps_ipv6_brackets() -> None:
    store = RedisStore(aioredis.Redis(host="::1", port=6390, db=2))
    assert store.url == "redis://[::1]:6390/2"
    unix = RedisStore(aioredis.Redis(unix_socket_path="/tmp/x.sock", password="PW"))
    assert "PW" not in unix.url and "/tmp/x.sock" in unix.url


@pytest.mark.parametrize(
    "values",
    [
        {"max_concurrency": 0},
        {"stop_after_n_failures": -1},
        {"max_concurrency": "many"},
        {"cap": 3},
    ],
)
def test_swarm_config_out_of_range_is_typed(values: dict[str, Any]) -> None:
    with pytest.raises(InvalidSwarmConfigError, match="at least 1"):
        SwarmConfig(**values)
