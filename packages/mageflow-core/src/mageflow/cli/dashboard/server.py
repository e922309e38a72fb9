"""The dashboard's routes: pages, JSON API, the SSE stream, lifecycle actions."""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from mageflow.app import Mageflow
from mageflow.cli.dashboard import views
from mageflow.errors import MageflowError, SignatureNotFoundError

ACTIONS = ("suspend", "resume", "interrupt", "cancel", "retry")
STATIC = resources.files("mageflow.cli.dashboard") / "static"


def is_loopback(host: str) -> bool:
    """Does ``host`` listen on this machine only?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _filters(request: Request) -> views.Filters:
    q = request.query_params
    age = q.get("age") or ""
    return views.Filters(
        status=q.get("status", ""),
        name=q.get("name", ""),
        identifier=q.get("id", ""),
        age=float(age) if age.replace(".", "", 1).isdigit() else None,
        page=int(q.get("page", "1") or 1) if q.get("page", "1").isdigit() else 1,
        per_page=min(int(q.get("per_page", "20")), 200)
        if q.get("per_page", "20").isdigit()
        else 20,
    )


def create_app(mf: Mageflow, *, token: str | None = None) -> Starlette:
    """The dashboard over ``mf``'s store. With ``token``, lifecycle actions need it
    (``Authorization: Bearer <token>``); without, they are open (localhost only: the
    command refuses to listen elsewhere without one)."""

    async def index(request: Request) -> Response:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    async def workflows(request: Request) -> Response:
        return JSONResponse(await views.workflow_rows(mf, _filters(request)))

    async def workflow(request: Request) -> Response:
        try:
            return JSONResponse(await views.tree(mf, request.path_params["key"]))
        except (SignatureNotFoundError, MageflowError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def workers(request: Request) -> Response:
        return JSONResponse({"workers": await views.worker_rows(mf)})

    async def events(request: Request) -> Response:
        key = request.path_params["key"]
        try:
            sig = await mf.load(key)
        except MageflowError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        after = request.headers.get("last-event-id", "0")

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            try:
                async for event in sig.events(after=after):
                    yield f"id: {event.id}\ndata: {json.dumps(event.as_dict())}\n\n"
            except MageflowError as exc:  # the store went away: the browser reconnects
                yield f"event: failure\ndata: {json.dumps({'error': str(exc)})}\n\n"
                return
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=404)
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(
                    {"error": "this action needs the dashboard's token (Authorization: Bearer)"},
                    status_code=401,
                )
        try:
            sig = await mf.load(request.path_params["key"])
            await getattr(sig, action)()
            status = (await sig.get_status()).value
        except MageflowError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"status": status})

    async def config(request: Request) -> Response:
        body: dict[str, Any] = {"token_required": token is not None, "actions": list(ACTIONS)}
        return JSONResponse(body)

    routes = [
        Route("/", index),
        Route("/api/config", config),
        Route("/api/workflows", workflows),
        Route("/api/workers", workers),
        Route("/api/workflows/{key}", workflow),
        Route("/api/workflows/{key}/events", events),
        Route("/api/workflows/{key}/{action}", act, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
