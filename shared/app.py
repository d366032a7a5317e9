"""The base every daemon's `create_app` starts from: middlewares, a body limit and `GET /health`."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from shared import appkeys
from shared.http import MAX_BODY_BYTES, base_middlewares


def create_base_app(
    token: str,
    *,
    health: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    **kwargs: Any,
) -> web.Application:
    app = web.Application(middlewares=base_middlewares(token), client_max_size=max_body_bytes, **kwargs)
    app[appkeys.TOKEN] = token

    async def default_health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/health", health or default_health)
    return app
