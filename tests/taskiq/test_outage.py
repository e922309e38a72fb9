"""Redis outages in the middle of a swarm and a chain, on real taskiq workers.

The scenarios run as ``outage.py`` describes: two workers, a closed swarm of ``ITEMS``
items (``max_concurrency=CAP``) and a chain of ``STEPS``, the store and the broker on
Redis servers of their own (or one server for both), one of them restarted (SIGTERM or
SIGKILL) once ``RESTART_AFTER`` swarm items completed, with the persistence the scenario
names: ``none`` loses everything (a broker restarted so loses its queue and its consumer
group), ``rdb`` saves on SIGTERM, ``aof`` (``appendonly yes``, fsync always) survives
SIGKILL. A store that loses acknowledged writes (SIGKILL without AOF) cannot be helped and
is not tested. Some outages outlast ``IDLE_TIMEOUT``, one while the items its held
messages stand for still run.

Every workflow must finish, each callback fire exactly once with every result, every
item run (the reconciler re-sends what the broker lost), no user code run twice (no
worker died), the cap hold, and both workers keep running.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.taskiq.outage import Outage, pool_options, ride_out, servers

if TYPE_CHECKING:
    from conftest import AppWorkers, MakeAppWorkers

pytestmark = pytest.mark.slow

REPORT = "MAGEFLOW_OUTAGE_REPORT"
"""If set, a file each run appends its figures to (one JSON object a line)."""

SCENARIOS = [
    Outage("store-sigterm-rdb", ("store",), signal.SIGTERM, "rdb"),
    Outage("store-sigkill-aof", ("store",), signal.SIGKILL, "aof"),
    Outage("broker-sigterm-lost", ("broker",), signal.SIGTERM, "none"),
    Outage("broker-sigkill-lost", ("broker",), signal.SIGKILL, "none"),
    Outage("both-sigterm-rdb", ("store", "broker"), signal.SIGTERM, "rdb"),
    Outage("shared-sigkill-aof", ("store", "broker"), signal.SIGKILL, "aof", shared=True),
    # down longer than IDLE_TIMEOUT: held messages look idle when the broker is back
    Outage("store-sigterm-rdb-5s", ("store",), signal.SIGTERM, "rdb", down=5.0),
    Outage("broker-sigterm-rdb-5s", ("broker",), signal.SIGTERM, "rdb", down=5.0),
    # ... while the items those messages stand for still run: a worker must not claim
    # them before their holders renewed
    Outage(
        "broker-sigterm-rdb-3s-long-items",
        ("broker",),
        signal.SIGTERM,
        "rdb",
        down=3.0,
        items=30,
        item_seconds=5.0,
        restart_after=10,
    ),
    Outage(
        "shared-sigterm-taskiq-cli",
        ("store", "broker"),
        signal.SIGTERM,
        "rdb",
        shared=True,
        kind="taskiq",
    ),
]


@pytest.mark.parametrize("outage", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_workflows_ride_out_a_redis_restart(
    outage: Outage, make_app_workers: MakeAppWorkers, redis_url: str
) -> None:
    with servers(outage) as (store, broker):
        pool: AppWorkers = make_app_workers(**pool_options(store, broker))
        seen = await ride_out(outage, pool, (store, broker), redis_url)
    figures = seen.figures()
    print(f"\n{json.dumps(figures)}")
    if os.environ.get(REPORT):
        with Path(os.environ[REPORT]).open("a") as out:  # noqa: ASYNC230 (tiny)
            out.write(json.dumps(figures) + "\n")

    # -- every workflow finished, each callback once, with every result ----------------
    assert not seen.hung, f"the workflows did not finish:\n{pool.logs()}"
    assert len(seen.swarm_cbs) == 1, seen.swarm_cbs
    assert seen.swarm_cbs[0]["mageflow_results"] == list(range(outage.items))
    assert len(seen.chain_cbs) == 1, seen.chain_cbs
    assert seen.chain_cbs[0]["mageflow_results"] == outage.steps - 1
    assert seen.statuses == ("done", "done")
    # -- nothing lost, nothing run twice (no worker died), the cap held ----------------
    assert set(seen.runs) == set(range(outage.items)), "every item ran"
    assert set(seen.completions) == set(range(outage.items)), "every item completed"
    assert set(seen.chain_runs) == set(range(outage.steps)), "every step ran"
    assert not any(seen.twice.values()), f"user code ran twice: {seen.twice}"
    assert seen.max_running <= outage.cap, f"{seen.max_running} items held a slot at once"
    # -- the workers rode it out -------------------------------------------------------------
    assert not seen.exits, f"workers exited with {seen.exits}:\n{pool.logs()}"
