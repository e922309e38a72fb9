"""``ls --json`` and its filters, full keys, durations and errors; ``status`` listing
failed items; ``watch`` progress; ``stats``; read-only commands without a backend. The
CLI is a separate process reading a real Redis; the workers run in this process."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.cli.views import ProgressMeter, format_seconds
from mageflow.errors import TaskFailedError
from mageflow.models.signatures import SignatureState
from mageflow.models.status import SignatureStatus
from mageflow.store import RedisStore
from tests.core.test_cli_ops import Cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def setup(redis_url: str) -> AsyncIterator[tuple[Mageflow, Cli]]:
    prefix = f"depth-{uuid.uuid4().hex[:6]}"
    mf = Mageflow(
        backend=LocalBackend(workers=2, concurrency=20), store=RedisStore(redis_url, prefix=prefix)
    )

    @mf.task("d.inc")
    async def inc(msg: dict[str, Any]) -> int:
        return int(msg.get("mageflow_results") or 0) + 1

    @mf.task("d.maybe")
    async def maybe(msg: dict[str, Any]) -> int:
        if msg.get("fail"):
            raise RuntimeError(f"item {msg['i']} broke")
        return 1

    yield mf, Cli(redis_url, prefix)
    await mf.aclose()


async def test_ls_json_filters_full_keys_duration_and_error(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    wf = await mf.chain(["d.inc", "d.inc", "d.inc"], name="three")
    assert await wf.aio_run({}, timeout=10) == 3
    bad = await mf.sign("d.maybe", fail=True, i=1)
    with pytest.raises(TaskFailedError):
        await bad.aio_run({}, timeout=10)

    code, out, err = await cli("ls", "--json")
    assert code == 0, err
    rows = {r["key"]: r for r in json.loads(out)}
    assert rows[wf.key]["status"] == "done" and rows[wf.key]["steps_done"] == 3
    assert rows[wf.key]["duration_s"] >= 0
    assert rows[bad.key]["error"] == {"type": "RuntimeError", "message": "item 1 broke"}

    code, out, _ = await cli("ls", "--json", "--kind", "chain", "--since", "1h")
    assert [r["key"] for r in json.loads(out)] == [wf.key]
    code, out, _ = await cli("ls", "--json", "--status", "failed")
    assert [r["key"] for r in json.loads(out)] == [bad.key]

    code, out, _ = await cli("ls")
    assert "RuntimeError: item 1 broke" in out and "step 3/3" in out
    cli.env["COLUMNS"] = "80"  # a narrow terminal still shows whole keys
    code, out, _ = await cli("ls")
    assert wf.key in out and bad.key in out


async def test_status_lists_failed_items_first_n_and_counts_the_rest(
    setup: tuple[Mageflow, Cli],
) -> None:
    mf, cli = setup
    items = [await mf.sign("d.maybe", fail=i % 2 == 0, i=i) for i in range(10)]
    sw = await mf.swarm(items, config=SwarmConfig(max_concurrency=3), is_swarm_closed=True)
    await sw.aio_run({}, timeout=20)  # no budget: the swarm completes
    code, out, err = await cli("status", sw.key, "--failed", "2")
    assert code == 0, err
    assert "item 0 broke" in out and "item 2 broke" in out and "item 4 broke" not in out
    assert "and 3 more failed" in out


async def test_watch_shows_chain_steps(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    wf = await mf.chain(["d.inc", "d.inc"], name="two")
    await wf.aio_run({}, timeout=10)
    code, out, _ = await cli("watch", wf.key)
    assert code == 0 and "step 2/2" in out and "finished: done" in out


async def test_stats_command(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    for _ in range(3):
        await (await mf.sign("d.inc")).aio_run({}, timeout=10)
    code, out, err = await cli("stats", "--json", "--window", "5m")
    assert code == 0, err
    data = json.loads(out)
    assert data["tasks"]["d.inc"]["done"] >= 3 and data["workflows"]["done"] >= 3
    code, out, _ = await cli("stats")
    assert "d.inc" in out and "workflows:" in out


async def test_read_only_commands_never_build_the_backend(setup: tuple[Mageflow, Cli]) -> None:
    mf, cli = setup
    sig = await mf.sign("d.inc")
    await sig.aio_run({}, timeout=10)
    cli.env["MAGEFLOW_BACKEND"] = "no-such-backend"
    for args in (["ls"], ["status", sig.key], ["tree", sig.key], ["stats"], ["watch", sig.key]):
        code, out, err = await cli(*args)
        assert code == 0, (args, out, err)
    code, out, _ = await cli("suspend", sig.key)  # a command that acts still needs it
    assert code == 2 and "no-such-backend" in out


def state(kind: str, status: str, **kw: Any) -> SignatureState:
    return SignatureState(key="k.r", kind=kind, name="n", status=SignatureStatus(status), **kw)


async def test_progress_meter_throughput_and_eta() -> None:
    now = [0.0]
    meter = ProgressMeter(clock=lambda: now[0])
    counts = {"total": 100, "queued": 90, "running": 10, "done": 0, "failed": 0}
    assert meter.update(state("swarm", "active", counts=counts)).detail.startswith("active 0/100")
    now[0] = 10.0
    counts = {**counts, "queued": 70, "done": 20}
    frame = meter.update(state("swarm", "active", counts=counts))
    assert (frame.total, frame.done) == (100, 20)
    assert "2.0/s" in frame.detail and "ETA 40 s" in frame.detail
    chain = state("chain", "active", children=["k.r.0", "k.r.1", "k.r.2"], steps_done=1)
    assert meter.update(chain).detail == "active step 1/3"
    assert format_seconds(3725) == "1 h 2 min"


async def test_status_lists_failed_items_of_a_swarm_over_1000_items(
    setup: tuple[Mageflow, Cli],
) -> None:
    mf, cli = setup
    rows = [{"fail": i in (3, 7, 900), "i": i} for i in range(1001)]
    sw = await mf.swarm_of(
        "d.maybe", rows, config=SwarmConfig(max_concurrency=50), is_swarm_closed=True
    )
    await sw.aio_run({}, timeout=60)
    code, out, err = await cli("status", sw.key, "--failed", "1")
    assert code == 0, err
    assert "d.maybe: RuntimeError: item 3 broke" in out
    assert "d.maybe: RuntimeError: item 7 broke" not in out  # (the result summary has it)
    assert "and 2 more failed" in out
