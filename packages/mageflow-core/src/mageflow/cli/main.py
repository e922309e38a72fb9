"""``mageflow`` commands: backends, demo, worker."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import sys

import click
from rich.console import Console
from rich.table import Table

from mageflow.app import Mageflow
from mageflow.cli.ops import COMMANDS
from mageflow.errors import MageflowError
from mageflow.store import redact_url

console = Console()


@click.group()
@click.version_option(package_name="mageflow-core")
@click.option(
    "--redis-url",
    envvar="MAGEFLOW_REDIS_URL",
    default=None,
    help="Redis holding workflow state [env MAGEFLOW_REDIS_URL].",
)
@click.option(
    "--app",
    "app_target",
    envvar="MAGEFLOW_APP",
    default=None,
    help="MODULE:ATTR of your Mageflow instance, for commands that publish "
    "(resume, retry) or cancel (interrupt) [env MAGEFLOW_APP].",
)
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, app_target: str | None) -> None:
    """MageFlow: task orchestration on the task manager you already use."""
    ctx.obj = {"redis_url": redis_url, "app": app_target}


@cli.command()
def backends() -> None:
    """List installed backends with their versions."""
    from mageflow.plugins.manager import backend_specs, broken_plugins, distribution_version

    table = Table("backend", "distribution", "version", "target")
    for name, spec in sorted(backend_specs().items()):
        table.add_row(name, spec.distribution or "?", distribution_version(spec), spec.target)
    for name, error in sorted(broken_plugins.items()):
        table.add_row(name, "?", "?", f"[red]failed to load: {error}[/]")
    console.print(table)


@cli.command()
@click.option("--redis-url", default=None, help="Store in Redis instead of memory.")
def demo(redis_url: str | None) -> None:
    """Run a chain, a capped swarm, a failing task and a nested workflow, in-process."""
    from mageflow.cli.demo import run_demo

    asyncio.run(run_demo(console, redis_url))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TASK_MANAGER_LOGGERS = ("mageflow", "taskiq", "hatchet_sdk", "hatchet")


def configure_logging(level: str) -> None:
    """One handler on the root logger at ``level``; MageFlow's and the task managers'
    loggers at that level too."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().setLevel(level.upper())
    for name in TASK_MANAGER_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def worker_banner(
    app: Mageflow, concurrency: int | None, served: list[str] | None = None
) -> list[str]:
    """What ``mageflow worker`` prints before it serves: backend and its settings, the
    store (password hidden), queues, concurrency and the task names."""
    info = dict(app.backend.describe())
    queue = info.pop("queue_name", None) or info.pop("queues", None) or "default"
    if served:
        queue = ",".join(served)
    settings = ", ".join(f"{k}={v}" for k, v in info.items())
    return [
        f"[bold]mageflow worker[/] backend={app.backend.name}"
        + (f" ({settings})" if settings else ""),
        f"  store    {redact_url(app.store.url)} (prefix {app.store.prefix})",
        f"  queues   {queue}",
        f"  concurrency {concurrency if concurrency is not None else 'backend default'}",
        f"  tasks    {len(app.tasks)}: {', '.join(sorted(app.tasks)) or '-'}",
    ]


async def _check_store(app: Mageflow) -> None:
    try:
        await app.store.ping()
    finally:
        await app.store.close()


def unreachable(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` (or what caused it) is a failed connection."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (ConnectionError, TimeoutError)) or "Connection" in name:
            return redact_text(f"{name}: {seen}".splitlines()[0])
        seen = seen.__cause__ or seen.__context__
    return None


def redact_text(text: str) -> str:
    """``text`` with the password of any URL in it hidden."""
    url = r"\b(rediss?(?:\+cluster)?|amqps?|https?)://[^\s'\"]+"
    return re.sub(url, lambda m: redact_url(m[0]), text)


def load_app(target: str) -> Mageflow:
    """Import ``module:attr`` and return the Mageflow instance it names."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:ATTR, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, Mageflow):
        raise click.BadParameter(f"{target!r} is not a Mageflow instance")
    return app


@cli.command()
@click.argument("target")
@click.option("--concurrency", type=int, default=None, help="Tasks one worker runs at once.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Logging of MageFlow and the task manager (its loggers and the root).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (needs mageflow-core[metrics]).",
)
@click.option(
    "--queues",
    default=None,
    help="Comma-separated queues to serve (default: 'default', the tasks given no queue).",
)
def worker(
    target: str,
    concurrency: int | None,
    log_level: str,
    metrics_port: int | None,
    queues: str | None,
) -> None:
    """Serve the tasks of the Mageflow instance TARGET (``module:attr``)."""
    configure_logging(log_level)
    app = load_app(target)
    served = None if queues is None else [q.strip() for q in queues.split(",") if q.strip()]
    try:  # the banner too: a Ctrl-C right after it must not exit 1 through click
        for line in worker_banner(app, concurrency, served):
            console.print(line, highlight=False)
        asyncio.run(_check_store(app))
        if metrics_port is not None:
            from mageflow.plugins.metrics import serve_metrics

            serve_metrics(app, metrics_port)
            console.print(f"  metrics  http://0.0.0.0:{metrics_port}/metrics", highlight=False)
        app.run_worker(concurrency=concurrency, queues=served)
    except KeyboardInterrupt:
        pass
    except MageflowError:
        raise
    except Exception as exc:
        reason = unreachable(exc)
        if reason is None:
            raise
        console.print(
            f"[red]error:[/] cannot reach the task manager: {reason}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    console.print("mageflow worker stopped")


for _command in COMMANDS:
    cli.add_command(_command)

from mageflow.cli.dashboard.command import COMMANDS as DASHBOARD_COMMANDS  # noqa: E402

for _command in DASHBOARD_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except MageflowError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
