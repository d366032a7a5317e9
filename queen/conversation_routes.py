"""The conversations API (the store is queen/conversations.py):

    POST   /v1/conversations        {model?, hive_id?, title?} -> 201 {"conversation": {...}}
    GET    /v1/conversations        -> {"conversations": [...]}, the most recently used first (empty ones not)
    GET    /v1/conversations/{id}   -> {"conversation": {..., "messages": [{role, content, at}]}}
    PATCH  /v1/conversations/{id}   {model?, hive_id?, title?} -> {"conversation": {...}}
    DELETE /v1/conversations/{id}   -> {"deleted": id}

An {id} may be any unique beginning of one ("conv-" may be left out).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from queen.appkeys import CONVERSATIONS
from queen.conversations import FIELDS
from shared.appkeys import REQUEST_OWNER, visible_owner
from shared.errors import InvalidRequest
from shared.http import read_json


async def _fields(request: web.Request) -> dict[str, Any]:
    body = await read_json(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object with any of: model, hive_id, title.")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]}'; a conversation has: {', '.join(FIELDS)}.",
                             field=unknown[0], problem="is not a conversation field")
    for name, value in body.items():
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"'{name}' must be a string or null.", field=name, problem="must be a string")
    return body


def setup_conversation_api(app: web.Application) -> None:
    """The routes above; the store itself is opened by the queen's resources (queen_ctx)."""

    # A caller with an owner (an API key below admin) sees and changes only its own conversations.
    async def create(request: web.Request) -> web.Response:
        record = await request.app[CONVERSATIONS].create(**await _fields(request), owner=request.get(REQUEST_OWNER))
        return web.json_response({"conversation": record}, status=201)

    async def list_all(request: web.Request) -> web.Response:
        return web.json_response({"conversations": await request.app[CONVERSATIONS].list(owner=visible_owner(request))})

    async def get(request: web.Request) -> web.Response:
        record = await request.app[CONVERSATIONS].get(request.match_info["id"], owner=visible_owner(request))
        return web.json_response({"conversation": record})

    async def update(request: web.Request) -> web.Response:
        record = await request.app[CONVERSATIONS].update(request.match_info["id"], await _fields(request),
                                                         owner=visible_owner(request))
        return web.json_response({"conversation": record})

    async def delete(request: web.Request) -> web.Response:
        deleted = await request.app[CONVERSATIONS].delete(request.match_info["id"], owner=visible_owner(request))
        return web.json_response({"deleted": deleted})

    app.router.add_post("/v1/conversations", create)
    app.router.add_get("/v1/conversations", list_all)
    app.router.add_get("/v1/conversations/{id}", get)
    app.router.add_patch("/v1/conversations/{id}", update)
    app.router.add_delete("/v1/conversations/{id}", delete)
