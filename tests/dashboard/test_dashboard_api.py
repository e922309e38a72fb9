"""The dashboard's HTTP API over a real Redis: filters and paging, the tree with results
and errors, the SSE stream, workers, and lifecycle actions behind the token."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from mageflow import Mageflow, SwarmConfig
from mageflow.backend.local import LocalBackend
from mageflow.errors import TaskFailedError
from mageflow.store import RedisStore
from tests.dashboard.conftest import serving

pytestmark = pytest.mark.asyncio(loop_scope="function")


def call(url: str, method: str = "GET", token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    return status, json.loads(body) if body.startswith(("{", "[")) else body


async def get(url: str, method: str = "GET", token: str | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(call, url, method, token)


def app(redis_url: str) -> Mageflow:
    store = RedisStore(redis_url, prefix=f"dapi-{uuid.uuid4().hex[:6]}")
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=2), store=store)

    @mf.task("ok")
    async def ok(msg: dict[str, Any]) -> str:
        return f"ok-{msg.get('n')}"

    @mf.task("bad")
    async def bad(msg: dict[str, Any]) -> None:
        raise ValueError("bad input")

    @mf.task("hold")
    async def hold(msg: dict[str, Any]) -> None:
        await asyncio.sleep(3600)

    return mf


async def test_filters_paging_tree_and_stream(redis_url: str) -> None:
    mf = app(redis_url)
    sw = await mf.swarm(
        [await mf.sign("ok", n=1), await mf.sign("bad"), await mf.sign("ok", n=2)],
        task_name="batch",
        config=SwarmConfig(max_concurrency=1),
        is_swarm_closed=True,
    )
    await sw.aio_run({})
    for i in range(3):
        chain = await mf.chain([await mf.sign("ok", n=i)], name=f"single-{i}")
        await chain.aio_run({})
    tagged = await mf.sign("bad", task_identifiers={"order": "o-7"})
    failing = await mf.chain([tagged], name="broken")
    with pytest.raises(TaskFailedError):
        await failing.aio_run({})
    async with serving(mf) as url:
        _, page = await get(f"{url}/api/workflows?per_page=2")
        assert page["total"] == 5 and len(page["rows"]) == 2
        _, last = await get(f"{url}/api/workflows?per_page=2&page=3")
        assert len(last["rows"]) == 1
        _, named = await get(f"{url}/api/workflows?name=single")
        assert sorted(r["name"] for r in named["rows"]) == ["single-0", "single-1", "single-2"]
        _, failed = await get(f"{url}/api/workflows?status=failed")
        assert [r["key"] for r in failed["rows"]] == [failing.key]
        assert failed["rows"][0]["error"]["message"] == "bad input"
        _, found = await get(f"{url}/api/workflows?id=order=o-7")  # at any depth, as ls --id
        (step,) = (await failing.get_state()).children
        assert [r["key"] for r in found["rows"]] == [step]
        _, young = await get(f"{url}/api/workflows?age=3600")
        assert young["total"] == 5

        _, tree = await get(f"{url}/api/workflows/{sw.key}")
        assert tree["status"] == "done" and tree["progress"]["ended"] == 3
        assert tree["progress"]["total"] == 3 and tree["progress"]["rate"] > 0
        kids = tree["children"]
        assert [k["result"] for k in kids if k["status"] == "done"] == ["ok-1", "ok-2"]
        assert [k["error"]["type"] for k in kids if k["status"] == "failed"] == ["ValueError"]

        _, stream = await get(f"{url}/api/workflows/{sw.key}/events")
        datas = [json.loads(x[6:]) for x in stream.splitlines() if x.startswith('data: {"')]
        assert datas[0]["event"] == "started" and datas[-1]["key"] == sw.key
        assert "event: end" in stream

        status, missing = await get(f"{url}/api/workflows/nope.r")
        assert status == 404 and "no signature" in missing["error"]
    await mf.aclose()


async def test_actions_need_the_token_when_one_is_set(redis_url: str) -> None:
    mf = app(redis_url)
    wf = await mf.chain(["hold"])
    await wf.aio_run_no_wait({})
    async with serving(mf, token="s3cret") as url:
        status, body = await get(f"{url}/api/workflows/{wf.key}/cancel", "POST")
        assert status == 401 and "token" in body["error"]
        status, _ = await get(f"{url}/api/workflows/{wf.key}/cancel", "POST", token="wrong")
        assert status == 401
        assert (await wf.get_status()).value != "canceled"
        status, body = await get(f"{url}/api/workflows/{wf.key}/suspend", "POST", "s3cret")
        assert status == 200 and body["status"] == "suspended"
        status, body = await get(f"{url}/api/workflows/{wf.key}/cancel", "POST", "s3cret")
        assert status == 200 and body["status"] == "canceled"
        status, body = await get(f"{url}/api/workflows/{wf.key}/retry", "POST", "s3cret")
        assert status == 409 and "failed" in body["error"]
    await mf.aclose()


async def test_without_a_token_actions_are_open_and_workers_listed(redis_url: str) -> None:
    mf = app(redis_url)
    mf.start_reconciler()
    wf = await mf.chain(["hold"])
    await wf.aio_run_no_wait({})
    async with serving(mf) as url:
        status, body = await get(f"{url}/api/workflows/{wf.key}/cancel", "POST")
        assert status == 200 and body["status"] == "canceled"
        for _ in range(100):
            _, listed = await get(f"{url}/api/workers")
            if listed["workers"]:
                break
            await asyncio.sleep(0.05)
        (me,) = listed["workers"]
        assert me["backend"] == "local" and me["tasks"] == ["bad", "hold", "ok"]
        _, page = await get(f"{url}/")
        assert "<title>MageFlow dashboard</title>" in page
    await mf.aclose()


async def test_listening_beyond_localhost_is_told_apart() -> None:
    from mageflow.cli.dashboard.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
