"""The base every daemon's `create_app` starts from: middlewares, a body limit, `GET /health`, and
`POST /v1/shutdown` (which `shared.daemon.serve` waits on)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from aiohttp import web

from shared import appkeys
from shared.http import MAX_BODY_BYTES, base_middlewares, error_middleware
from shared.version import version_fields


def create_base_app(
    token: str,
    *,
    health: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    auth: Any = None,
    **kwargs: Any,
) -> web.Application:
    """`auth`: a middleware that replaces the token check (the queen's, which knows API keys and scopes)."""
    middlewares = base_middlewares(token) if auth is None else [error_middleware, auth]
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes, **kwargs)
    app[appkeys.TOKEN] = token
    app[appkeys.LISTENING] = appkeys.Listening()
    app[appkeys.SHUTDOWN_REQUESTED] = asyncio.Event()
    app.router.add_get("/health", health or default_health)
    app.router.add_post("/v1/shutdown", shutdown)
    return app


async def default_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", **version_fields()})


async def shutdown(request: web.Request) -> web.Response:
    """Stop the daemon (and what it started) once this answer is sent."""
    request.app[appkeys.SHUTDOWN_REQUESTED].set()
    return web.json_response({"status": "shutting down"}, status=202)
