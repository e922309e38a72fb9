"""``mageflow dashboard`` and ``mageflow workers``."""

from __future__ import annotations

import json
import secrets
import time

import click
from rich.table import Table

from mageflow.app import Mageflow
from mageflow.cli.ops import console, run
from mageflow.cli.views import StoreView, read_only
from mageflow.flows import workers as registry


@click.command(name="workers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def workers_command(ctx: click.Context, as_json: bool) -> None:
    """List the live workers (each records a heartbeat in the store)."""

    async def listing(view: StoreView) -> list[registry.WorkerInfo]:
        return await registry.live_workers(view)

    found = read_only(listing, ctx)
    if as_json:
        click.echo(json.dumps([w.as_dict() for w in found], indent=2))
        return
    table = Table("worker", "backend", "host", "pid", "queues", "concurrency", "tasks", "seen")
    now = time.time()
    for w in found:
        table.add_row(
            w.id,
            w.backend,
            w.host,
            str(w.pid),
            ",".join(w.queues),
            "-" if w.concurrency is None else str(w.concurrency),
            str(len(w.tasks)),
            f"{now - w.last_seen:.0f} s ago",
        )
    console.print(table)
    console.print(f"{len(found)} live worker(s)")


@click.command(name="dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--token",
    envvar="MAGEFLOW_DASHBOARD_TOKEN",
    default=None,
    help="Needed by lifecycle actions; generated and printed when listening beyond "
    "localhost without one [env MAGEFLOW_DASHBOARD_TOKEN].",
)
@click.pass_context
def dashboard_command(ctx: click.Context, host: str, port: int, token: str | None) -> None:
    """Serve the live web dashboard (needs ``pip install 'mageflow-core[dashboard]'``)."""
    try:
        import uvicorn

        from mageflow.cli.dashboard.server import create_app, is_loopback
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'mageflow-core[dashboard]' ({exc})"
        ) from None
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(16)
        console.print(f"lifecycle actions need this token: [bold]{token}[/]", highlight=False)

    async def serve(mf: Mageflow) -> None:
        config = uvicorn.Config(create_app(mf, token=token), host=host, port=port)
        console.print(f"mageflow dashboard on http://{host}:{port}/", highlight=False)
        await uvicorn.Server(config).serve()

    run(serve, ctx)


COMMANDS = [workers_command, dashboard_command]
