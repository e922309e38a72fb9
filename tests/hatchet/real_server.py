"""A real Hatchet for the real-engine tier: the one ``HATCHET_CLIENT_TOKEN`` points at, or a
``hatchet-lite`` container started with testcontainers when a Docker engine answers.

:func:`real_hatchet` yields a :class:`RealServer` or calls ``pytest.skip`` with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hatchet_sdk import ClientConfig, Hatchet

ENGINE_ISSUER = "mageflow-hatchet-test-engine"  # the ``iss`` of HatchetTestEngine tokens
LITE_IMAGE = os.environ.get(
    "MAGEFLOW_HATCHET_LITE_IMAGE", "ghcr.io/hatchet-dev/hatchet/hatchet-lite:latest"
)
LITE_TENANT = "707d0855-80ab-4e1f-a156-f1c4546cbf52"  # the tenant hatchet-lite seeds
START_TIMEOUT = 180.0
LITE_ENV = {  # as in Hatchet's docker-compose.hatchet.yml for hatchet-lite
    "DATABASE_URL": "postgresql://hatchet:hatchet@postgres:5432/hatchet?sslmode=disable",
    "SERVER_AUTH_COOKIE_DOMAIN": "localhost",
    "SERVER_AUTH_COOKIE_INSECURE": "t",
    "SERVER_AUTH_SET_EMAIL_VERIFIED": "t",
    "SERVER_GRPC_BIND_ADDRESS": "0.0.0.0",
    "SERVER_GRPC_INSECURE": "t",
    "SERVER_GRPC_PORT": "7077",
    "SERVER_GRPC_BROADCAST_ADDRESS": "localhost:7077",
    "SERVER_INTERNAL_CLIENT_INTERNAL_GRPC_BROADCAST_ADDRESS": "localhost:7077",
    "SERVER_URL": "http://localhost:8888",
    "SERVER_DEFAULT_ENGINE_VERSION": "V1",
}


def _claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


class RealServer:
    """A real Hatchet, in the shape :class:`WorkerProcess` expects of a server. Every
    client and worker of one session uses its own namespace, so runs never mix with
    anyone else's on a shared tenant."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, "HATCHET_CLIENT_NAMESPACE": f"mfc{uuid.uuid4().hex[:8]}"}

    def client_env(self) -> dict[str, str]:
        return dict(self.env)

    def hatchet(self) -> Hatchet:
        prefix = "HATCHET_CLIENT_"
        saved = {k: v for k, v in os.environ.items() if k.startswith(prefix)}
        try:
            for k in saved:
                del os.environ[k]
            os.environ.update(self.env)
            return Hatchet(config=ClientConfig(_env_file=None))
        finally:
            for k in self.env:
                os.environ.pop(k, None)
            os.environ.update(saved)

    def wait_for_worker(self, name: str, timeout: float = 30.0) -> Any:
        """The worker called ``name`` (namespaced), once the server lists it as active."""
        client = self.hatchet()
        full = client.config.apply_namespace(name)
        deadline = time.monotonic() + timeout
        while True:
            for worker in client.workers.list().rows or []:
                status = str(getattr(worker.status, "value", worker.status))
                if worker.name == full and status == "ACTIVE":
                    return worker
            if time.monotonic() >= deadline:
                raise TimeoutError(f"worker {full!r} not active within {timeout}s")
            time.sleep(min(0.5, timeout))


@contextmanager
def real_hatchet() -> Iterator[RealServer]:
    token = os.environ.get("HATCHET_CLIENT_TOKEN")
    if token:
        if _claims(token).get("iss") == ENGINE_ISSUER:
            pytest.skip(
                "HATCHET_CLIENT_TOKEN was minted by the in-process HatchetTestEngine, not by "
                "a real Hatchet; unset it, or point it at a real server"
            )
        env = {k: v for k, v in os.environ.items() if k.startswith("HATCHET_CLIENT_")}
        yield RealServer(env)
        return
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=5).ping()
    except Exception as exc:
        pytest.skip(
            "no real Hatchet: HATCHET_CLIENT_TOKEN is not set, and no Docker engine answers "
            f"to start {LITE_IMAGE} with testcontainers ({type(exc).__name__}: {exc})"
        )
    with _hatchet_lite() as env:
        yield RealServer(env)


@contextmanager
def _hatchet_lite() -> Iterator[dict[str, str]]:
    """Postgres + hatchet-lite on a private Docker network; returns the client env."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.waiting_utils import wait_for_logs

    with Network() as network:
        postgres = (
            DockerContainer("postgres:15.6")
            .with_network(network)
            .with_network_aliases("postgres")
            .with_env("POSTGRES_USER", "hatchet")
            .with_env("POSTGRES_PASSWORD", "hatchet")
            .with_env("POSTGRES_DB", "hatchet")
        )
        with postgres:
            wait_for_logs(postgres, "database system is ready to accept connections", 60)
            lite = DockerContainer(LITE_IMAGE).with_network(network).with_exposed_ports(8888, 7077)
            for key, value in LITE_ENV.items():
                lite = lite.with_env(key, value)
            with lite:
                host = lite.get_container_host_ip()
                rest = f"http://{host}:{lite.get_exposed_port(8888)}"
                _wait_ready(f"{rest}/api/ready")
                code, output = lite.exec(
                    ["/hatchet-admin", "token", "create", "--config", "/config",
                     "--tenant-id", LITE_TENANT]
                )  # fmt: skip
                assert code == 0, output
                token = output.decode().strip().splitlines()[-1]
                yield {
                    "HATCHET_CLIENT_TOKEN": token,
                    "HATCHET_CLIENT_TLS_STRATEGY": "none",
                    "HATCHET_CLIENT_HOST_PORT": f"{host}:{lite.get_exposed_port(7077)}",
                    "HATCHET_CLIENT_SERVER_URL": rest,
                }


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"hatchet-lite not ready at {url} within {START_TIMEOUT}s")
        time.sleep(1)
