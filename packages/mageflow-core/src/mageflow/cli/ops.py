"""Operator commands: status, tree, watch, ls, suspend, resume, interrupt, cancel, retry."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.tree import Tree

from mageflow.app import Mageflow
from mageflow.cli.views import (
    FailedItems,
    ProgressMeter,
    StoreView,
    duration_of,
    failed_items,
    ls_row,
    parse_age,
    read_only,
)
from mageflow.errors import ConfigurationError, MageflowError
from mageflow.flows import identifiers as idents
from mageflow.flows import reconcile
from mageflow.flows.inspect import Readable, read_state
from mageflow.flows.stats import read_stats
from mageflow.models.signatures import SignatureState
from mageflow.models.status import SignatureStatus
from mageflow.store.memory import MemoryStore

T = TypeVar("T")
console = Console()
STATUS_STYLE = {
    "done": "green",
    "failed": "red",
    "active": "cyan",
    "pending": "white",
    "suspended": "yellow",
    "interrupted": "yellow",
    "canceled": "magenta",
    "skipped": "bright_black",
}


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def build_app(app_target: str | None, redis_url: str | None) -> Mageflow:
    """The instance the command works on: ``--app module:attr``, else one built from the
    environment (``MAGEFLOW_BACKEND``, ``MAGEFLOW_REDIS_URL``, adapter settings)."""
    if app_target:
        from mageflow.cli.main import load_app

        return load_app(app_target)
    mf = Mageflow(redis_url=redis_url) if redis_url else Mageflow()
    if isinstance(mf.store, MemoryStore):
        raise ConfigurationError(
            "no Redis configured: set MAGEFLOW_REDIS_URL or pass --redis-url (the in-memory "
            "store lives inside one process and cannot be inspected from outside)"
        )
    return mf


def run(coro_fn: Callable[[Mageflow], Awaitable[T]], ctx: click.Context) -> T:
    async def main() -> T:
        mf = build_app(ctx.obj.get("app"), ctx.obj.get("redis_url"))
        try:
            await mf.store.ping()
            return await coro_fn(mf)
        finally:
            await mf.aclose()

    try:
        return asyncio.run(main())
    except MageflowError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


def error_text(error: dict[str, Any] | None) -> str:
    """``Type: message`` of a stored error, ``""`` for none."""
    return "" if not error else f"{error.get('type')}: {error.get('message')}"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="milliseconds") if value else "-"


def _summary(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_identifiers(state: SignatureState) -> str:
    """``name=value, ...`` (markup-safe): how the commands show ``task_identifiers``."""
    pairs = (f"{k}={idents.text_of(v)}" for k, v in state.identifiers.items())
    return escape(", ".join(pairs))


def parse_id(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``--id name=value`` options as identifiers (values are text: ``1`` finds ``"1"``)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {value!r}", ctx, param)
        out[name] = text
    return out


HOLDING = (SignatureStatus.SUSPENDED, SignatureStatus.INTERRUPTED)
WAITING_SCAN = 100
"""Nodes ``status`` reads below a chain or swarm to find the tasks waiting for a worker."""


def waiting_note(state: SignatureState) -> str | None:
    """For a task dispatched but not started: what it waits for ("for a worker that serves
    task X"). A task whose workflow is suspended waits for ``resume``: callers skip those."""
    if state.kind != "task" or state.status is not SignatureStatus.PENDING:
        return None
    if state.dispatched_at is None:
        return None
    age = (datetime.now(timezone.utc) - state.dispatched_at).total_seconds()
    served = f"queue {state.queue!r} and " if state.queue else ""
    return f"for a worker that serves {served}task {state.name!r} (dispatched {age:.0f} s ago)"


async def find_waiting(mf: Readable, state: SignatureState) -> list[tuple[str, str]]:
    """``(key, note)`` of the tasks at or below ``state`` that wait for a worker, reading
    at most :data:`WAITING_SCAN` nodes; nothing below a suspended or finished node."""
    parent = state.parent
    while parent is not None:  # held by a suspended ancestor: waiting for resume instead
        above = await read_state(mf, parent)
        if above.status in HOLDING:
            return []
        parent = above.parent
    found: list[tuple[str, str]] = []
    todo, budget = [state], WAITING_SCAN
    while todo and budget > 0:
        node = todo.pop()
        note = waiting_note(node)
        if note is not None:
            found.append((node.key, note))
        if node.status in HOLDING or node.status.is_terminal:
            continue
        for child in reversed(node.children[:budget]):
            budget -= 1
            todo.append(await read_state(mf, child))
    return found


def print_state(state: SignatureState, waiting: Sequence[tuple[str, str]] = ()) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("key", state.key)
    table.add_row("kind", state.kind)
    table.add_row("name", state.name)
    table.add_row("status", styled(state.status.value))
    table.add_row("attempts", str(state.attempts))
    if state.identifiers:
        table.add_row("identifiers", shown_identifiers(state))
    table.add_row("created", _when(state.created_at))
    table.add_row("dispatched", _when(state.dispatched_at))
    table.add_row("started", _when(state.started_at))
    table.add_row("finished", _when(state.finished_at))
    if state.started_at and state.finished_at:
        table.add_row("duration", f"{(state.finished_at - state.started_at).total_seconds():.3f} s")
    if state.closed is False:
        table.add_row("swarm", "[yellow]open[/]: completes once close_swarm() is called")
    if state.priority is not None:
        table.add_row("priority", str(state.priority))
    if state.not_before is not None:
        table.add_row("not before", _when(state.not_before))
    if state.counts:
        table.add_row("items", ", ".join(f"{k} {v}" for k, v in state.counts.items()))
    elif state.kind == "chain":
        table.add_row("steps", f"{state.steps_done or 0}/{len(state.children)} done")
    if state.error:
        table.add_row("error", f"[red]{state.error.get('type')}: {state.error.get('message')}[/]")
    if state.result is not None:
        table.add_row("result", _summary(state.result))
    for key, note in waiting:
        if key == FAILED:
            table.add_row("failed", note)
            continue
        where = "" if key == state.key else f"{key} "
        table.add_row("waiting", f"[yellow]{where}{note}[/]")
    console.print(table)


FAILED = "\0failed"
"""Marks a row of ``print_state``'s notes that shows a failed item."""


def _failed_rows(failed: FailedItems) -> list[tuple[str, str]]:
    rows = [(FAILED, f"[red]{escape(f'{k} {n}: {error_text(e)}')}[/]") for k, n, e in failed.shown]
    if failed.more > 0:
        rows.append((FAILED, f"[red]... and {failed.more} more failed[/]"))
    return rows


async def build_tree(
    mf: Readable, key: str, max_items: int, node: Tree | None = None, held: bool = False
) -> Tree:
    state = await read_state(mf, key)
    label = f"{state.kind} [bold]{state.name}[/] {styled(state.status.value)} [dim]{key}[/]"
    if state.identifiers:
        label += f" [blue]{shown_identifiers(state)}[/]"
    if state.error:
        label += f" [red]{state.error.get('type')}[/]"
    if state.closed is False:
        label += " [yellow]open[/]"
    note = None if held else waiting_note(state)
    if note:
        label += f" [yellow]waiting {note}[/]"
    held = held or state.status in HOLDING
    branch = Tree(label) if node is None else node.add(label)
    if state.kind == "swarm" and state.counts.get("total", 0) > max_items:
        counts = ", ".join(f"{k} {v}" for k, v in state.counts.items())
        branch.add(f"[dim]{counts} (over {max_items} items: counts only)[/]")
        return branch
    for child in state.children:
        await build_tree(mf, child, max_items, branch, held)
    return branch


@click.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--failed",
    "first_failed",
    default=5,
    show_default=True,
    help="Failed items shown with their errors (the rest are counted).",
)
@click.pass_context
def status(ctx: click.Context, key: str, as_json: bool, first_failed: int) -> None:
    """Status, timings, attempts, error and result of one signature, chain or swarm, its
    failed items with their errors, and which of its tasks wait for a worker."""
    if as_json:
        click.echo(read_only(lambda v: read_state(v, key), ctx).model_dump_json(indent=2))
        return

    async def with_details(v: StoreView) -> tuple[SignatureState, list[tuple[str, str]]]:
        state = await read_state(v, key)
        failed = await failed_items(v, state, first_failed)
        waiting = await find_waiting(v, state)
        return state, [*_failed_rows(failed), *waiting]

    print_state(*read_only(with_details, ctx))


@click.command()
@click.argument("key")
@click.option(
    "--max-items",
    default=50,
    show_default=True,
    help="Swarms larger than this show counts per status instead of items.",
)
@click.pass_context
def tree(ctx: click.Context, key: str, max_items: int) -> None:
    """The whole workflow as a tree: chain steps in order, swarm items, nesting."""
    console.print(read_only(lambda v: build_tree(v, key, max_items), ctx))


@click.command()
@click.argument("key")
@click.option(
    "--interval",
    default=0.25,
    show_default=True,
    help="At most one refresh per period (s); refreshes are pushed by the engine's events.",
)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.pass_context
def watch(ctx: click.Context, key: str, interval: float, timeout: float | None) -> None:
    """Live progress until the workflow is terminal; exits 1 unless it succeeded."""

    async def follow(mf: StoreView) -> str:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            bar = progress.add_task(key, total=None, detail="")
            meter = ProgressMeter()
            changed = await _pushed_changes(mf, key)
            while True:
                state = await read_state(mf, key)
                frame = meter.update(state)
                progress.update(
                    bar, total=frame.total, completed=frame.done, detail=escape(frame.detail)
                )
                if state.status.is_terminal:
                    return state.status.value
                if deadline is not None and loop.time() > deadline:
                    raise click.ClickException(f"{key} still {state.status.value} after timeout")
                await _next_change(changed, interval)

    final = read_only(follow, ctx)
    console.print(f"{key} finished: {styled(final)}")
    sys.exit(0 if final == "done" else 1)


async def _pushed_changes(mf: StoreView, key: str) -> asyncio.Event:
    """An event set whenever the engine streams a change under ``key`` (``wf.events()``)."""
    from mageflow.flows.stream import node_events

    changed = asyncio.Event()
    changes = node_events(mf, key)

    async def pump() -> None:
        async for _ in changes:
            changed.set()
        changed.set()

    task = asyncio.get_running_loop().create_task(pump())
    changed.pump = task  # type: ignore[attr-defined]  # kept alive with the event
    return changed


async def _next_change(changed: asyncio.Event, interval: float) -> None:
    """Wait for the next pushed change (a slow re-read every 5 s regardless), then
    ``interval`` more so a burst of changes is shown once."""
    try:
        await asyncio.wait_for(changed.wait(), 5.0)
    except asyncio.TimeoutError:
        return
    changed.clear()
    await asyncio.sleep(interval)


@click.command(name="ls")
@click.option("--status", "status_filter", multiple=True, help="Only these statuses.")
@click.option("--name", "name_filter", default=None, help="Only names containing this.")
@click.option(
    "--id",
    "id_filter",
    multiple=True,
    callback=parse_id,
    metavar="NAME=VALUE",
    help="Signatures (at any depth) with this task identifier; repeat to require several.",
)
@click.option("--kind", "kind_filter", multiple=True, help="Only these kinds (task, chain, swarm).")
@click.option("--since", "since", default=None, help="Only created within this age (30s, 15m, 2h).")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of the rows.")
@click.pass_context
def ls(
    ctx: click.Context,
    status_filter: tuple[str, ...],
    name_filter: str | None,
    id_filter: dict[str, str],
    kind_filter: tuple[str, ...],
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Recent and running workflows, newest first, with full keys, durations and errors;
    with ``--id``, the signatures that carry those identifiers (the identifier index)."""
    max_age = None if since is None else parse_age(since)

    async def keys(mf: StoreView) -> list[str]:
        if id_filter:
            return await idents.find(mf.store, id_filter, limit * 4)
        return [f"{wf}.r" for wf in await mf.store.list_workflows(limit=limit * 4)]

    def wanted(state: SignatureState) -> bool:
        if kind_filter and state.kind not in kind_filter:
            return False
        if max_age is None:
            return True
        age = datetime.now(timezone.utc) - (state.created_at or datetime.now(timezone.utc))
        return age.total_seconds() <= max_age

    async def listing(mf: StoreView) -> list[SignatureState]:
        out: list[SignatureState] = []
        for key in await keys(mf):
            try:
                state = await read_state(mf, key)
            except MageflowError:
                continue  # expired meanwhile
            if status_filter and state.status.value not in status_filter:
                continue
            if name_filter and name_filter not in state.name:
                continue
            if not wanted(state):
                continue
            out.append(state)
            if len(out) >= limit:
                break
        return out

    states = read_only(listing, ctx)
    if as_json:
        click.echo(json.dumps([ls_row(s) for s in states], indent=2, default=str))
        return
    width = max((len(s.key) for s in states), default=3)
    table = Table(
        "kind", "name", "status", "created", "duration", "progress", "error", "identifiers"
    )
    table.columns.insert(0, Column("key", no_wrap=True, min_width=width))
    for s in states:
        progress = ", ".join(f"{k} {v}" for k, v in s.counts.items() if v) if s.counts else ""
        if s.kind == "chain":
            progress = f"step {s.steps_done or 0}/{len(s.children)}"
        took = duration_of(s)
        table.add_row(
            s.key,
            s.kind,
            escape(s.name),
            styled(s.status.value),
            _when(s.created_at),
            "" if took is None else f"{took:.1f} s",
            progress,
            f"[red]{escape(_summary_text(error_text(s.error)))}[/]",
            shown_identifiers(s),
        )
    console.print(table)


def _summary_text(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lifecycle(verb: str, doc: str) -> click.Command:
    @click.command(name=verb, help=doc)
    @click.argument("key")
    @click.pass_context
    def command(ctx: click.Context, key: str) -> None:
        async def act(mf: Mageflow) -> str:
            sig = await mf.load(key)
            await getattr(sig, verb)()
            return (await sig.get_status()).value

        console.print(f"{key}: {styled(run(act, ctx))}")

    return command


LIFECYCLE = [
    _lifecycle("suspend", "Stop what has not started; running tasks finish."),
    _lifecycle("resume", "Continue a suspended or interrupted workflow."),
    _lifecycle("interrupt", "Suspend and cancel running tasks where the backend can."),
    _lifecycle(
        "cancel",
        "Stop a node for good (its callbacks never fire): a root ends; a step or item "
        "counts as failed (Canceled) for its parent.",
    ),
    _lifecycle(
        "retry",
        "Re-run a failed root workflow from where it failed; done results stay, "
        "nothing done runs again.",
    ),
]


@click.command(name="reconcile")
@click.option(
    "--forever", is_flag=True, help="Keep sweeping, as every worker does, until interrupted."
)
@click.pass_context
def reconcile_command(ctx: click.Context, forever: bool) -> None:
    """Re-send tasks that were dispatched and never started, once they are due
    (MAGEFLOW_RESEND_AFTER). Workers do this on their own; use it when none runs."""

    async def act(mf: Mageflow) -> int:
        if forever:
            await reconcile.run_until(mf, asyncio.Event())
        return await mf.reconcile()

    console.print(f"re-sent {run(act, ctx)} task(s) that were dispatched and never started")


@click.command(name="stats")
@click.option("--window", default="15m", show_default=True, help="How far back (30s, 15m, 1h).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def stats_command(ctx: click.Context, window: str, as_json: bool) -> None:
    """Per task name: attempts started, retried, done, failed, mean and p95 duration; and
    top-level workflows by outcome, over a recent window (at most an hour)."""
    seconds = parse_age(window)
    found = read_only(lambda v: read_stats(v.store, seconds), ctx)
    if as_json:
        click.echo(found.model_dump_json(indent=2))
        return
    table = Table("task", "started", "retried", "done", "failed", "mean", "p95")
    for name, t in found.tasks.items():
        table.add_row(
            escape(name),
            str(t.started),
            str(t.retried),
            str(t.done),
            f"[red]{t.failed}[/]" if t.failed else "0",
            "-" if t.mean_s is None else f"{t.mean_s:.3f} s",
            "-" if t.p95_s is None else f"{t.p95_s:.3f} s",
        )
    console.print(f"since {_when(found.since)} ({found.window_s // 60} min)")
    console.print(table)
    flows = ", ".join(f"{k} {v}" for k, v in sorted(found.workflows.items())) or "none"
    console.print(f"workflows: {flows}", highlight=False)


COMMANDS = [status, tree, watch, ls, *LIFECYCLE, reconcile_command, stats_command]
