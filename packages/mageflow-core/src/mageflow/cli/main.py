"""``mageflow`` commands: backends, demo, worker."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from mageflow.app import Mageflow
from mageflow.cli.ops import COMMANDS
from mageflow.errors import MageflowError

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
def worker(target: str, concurrency: int | None) -> None:
    """Serve the tasks of the Mageflow instance TARGET (``module:attr``)."""
    app = load_app(target)
    try:
        console.print(
            f"[bold]mageflow worker[/] backend={app.backend.name} tasks={len(app.tasks)}",
            highlight=False,
        )
        app.run_worker(concurrency=concurrency)
    except KeyboardInterrupt:
        pass
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
        console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
