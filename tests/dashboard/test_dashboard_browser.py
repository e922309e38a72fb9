"""The dashboard end to end in headless Chromium (Debian's, driven by Playwright) against
a real Redis and a real running workflow: progress moves, an item's error shows, the
cancel button cancels. Screenshots go to docs/img/ (shown by docs/dashboard.md)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("starlette")
async_api = pytest.importorskip("playwright.async_api")

from mageflow import Mageflow, SwarmConfig  # noqa: E402
from mageflow.backend.local import LocalBackend  # noqa: E402
from mageflow.store import RedisStore  # noqa: E402
from tests.dashboard.conftest import serving  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
if not Path(CHROMIUM).exists() and os.environ.get("CI"):
    # CI installs Debian's chromium (.ci/run): missing there is a broken setup, not a skip
    raise RuntimeError(f"CI is set but {CHROMIUM} is missing; .ci/run installs it")
pytestmark = [
    pytest.mark.asyncio(loop_scope="function"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="needs Debian's chromium (apt-get install chromium chromium-driver)",
    ),
]


@pytest_asyncio.fixture
async def served(redis_url: str) -> AsyncIterator[tuple[Mageflow, str]]:
    store = RedisStore(redis_url, prefix=f"dash-{uuid.uuid4().hex[:6]}")
    mf = Mageflow(backend=LocalBackend(workers=1, concurrency=2), store=store)
    permits = asyncio.Semaphore(0)  # the test lets items finish: progress it can see move

    @mf.task("resize")
    async def resize(msg: dict[str, Any]) -> str:
        await permits.acquire()
        if msg["n"] == 3:
            raise ValueError(f"image {msg['n']} is corrupt")
        return f"thumb-{msg['n']}.png"

    mf.permits = permits  # type: ignore[attr-defined]
    try:
        async with serving(mf, token="s3cret") as url:
            yield mf, url
    finally:
        for _ in range(100):
            permits.release()
        await mf.aclose()


async def test_progress_error_and_cancel_in_a_real_browser(served: tuple[Mageflow, str]) -> None:
    mf, url = served
    mf.start_reconciler()  # this process is a worker too: it shows in the workers list
    items = [await mf.sign("resize", n=n) for n in range(40)]
    sw = await mf.swarm(
        items, task_name="thumbnails", config=SwarmConfig(max_concurrency=2), is_swarm_closed=True
    )
    await mf.chain(["resize"], name="one-off", n=0)  # a second workflow for the list
    await sw.aio_run_no_wait({})
    IMG.mkdir(parents=True, exist_ok=True)
    async with async_api.async_playwright() as pw:
        with tempfile.TemporaryDirectory() as profile:
            browser = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=ARGS,
                headless=True,
                viewport={"width": 1200, "height": 800},
            )
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(f"{url}/?token=s3cret#/")
            row = page.locator(f'tr[data-key="{sw.key}"]')
            await row.wait_for(timeout=15_000)
            assert "thumbnails" in await row.inner_text()
            await page.screenshot(path=str(IMG / "dashboard-workflows.png"))

            await page.goto(f"{url}/?token=s3cret#/wf/{sw.key}")
            top = page.locator(f'.node[data-key="{sw.key}"] > .line .progress-text')
            await top.wait_for(timeout=15_000)
            first = await ended(top)
            for _ in range(6):
                mf.permits.release()  # type: ignore[attr-defined]
            await page.wait_for_function(  # progress moves, pushed by the event stream
                "([sel, n]) => { const e = document.querySelector(sel);"
                " return e && parseInt(e.textContent) > n; }",
                arg=[f'.node[data-key="{sw.key}"] > .line .progress-text', first],
                timeout=15_000,
            )
            error = page.locator(".node .error", has_text="image 3 is corrupt")
            await error.wait_for(timeout=15_000)
            assert "ValueError" in await error.inner_text()
            await page.wait_for_function(
                "() => document.querySelectorAll('#events tr').length >= 6", timeout=15_000
            )
            await page.screenshot(path=str(IMG / "dashboard-workflow.png"), full_page=True)

            await page.click('button[data-action="cancel"]')
            await page.locator("#action-result", has_text="cancel: canceled").wait_for(
                timeout=15_000
            )
            root_status = page.locator(f'.node[data-key="{sw.key}"] > .line .status')
            await page.wait_for_function(
                "sel => document.querySelector(sel)?.dataset.status === 'canceled'",
                arg=f'.node[data-key="{sw.key}"] > .line .status',
                timeout=15_000,
            )
            assert await root_status.inner_text() == "canceled"
            assert (await sw.get_status()).value == "canceled"

            await page.goto(f"{url}/?token=s3cret#/workers")
            workers = page.locator("#workers tr", has_text="local")
            await workers.first.wait_for(timeout=15_000)
            await page.screenshot(path=str(IMG / "dashboard-workers.png"))
            await browser.close()


async def ended(locator: Any) -> int:
    text = await locator.inner_text()
    match = re.match(r"(\d+)/", text)
    return int(match.group(1)) if match else 0
