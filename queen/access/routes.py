"""Managing keys over HTTP (admin only; `rbee keys` calls these):

    POST   /v1/keys                  {name, scope, models, expires, limits} -> 201 {key, secret}
    GET    /v1/keys                  -> {keys: [...]}, no secrets, no hashes; tokens used today with each
    GET    /v1/keys/usage            ?name=&since=YYYY-MM-DD -> {usage: [{key, day, model, requests, tokens}]}
    DELETE /v1/keys/{name}           -> revoked now; its running jobs end with KEY_REVOKED
    POST   /v1/keys/{name}/rotate    -> {key, secret}: a new secret, the old one refused from now on

The secret is in the answer of create and rotate only; the queen cannot show it again.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from queen.access.keys import KeyStore, key_settings
from queen.access.limits import KeyLimits, today
from queen.appkeys import KEYS, LIMITS
from shared import appkeys as shared_keys
from shared.errors import InvalidRequest
from shared.events import Error
from shared.http import read_json


def setup_access(app: web.Application, keys_path: Path) -> None:
    """The key store (opened with the app, at `keys_path`) and the routes that manage it. The check on
    every request is the app's middleware (middleware.access_middleware)."""

    async def keys_ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[KEYS] = KeyStore(keys_path)
        await store.open()
        limits = app[LIMITS] = KeyLimits(store)
        app[shared_keys.JOB_REGISTRY].on_finish(limits.settle)  # set up before this (setup_job_api)
        yield
        await store.close()

    app.cleanup_ctx.append(keys_ctx)
    app.router.add_post("/v1/keys", create)
    app.router.add_get("/v1/keys", list_keys)
    app.router.add_get("/v1/keys/usage", usage)
    app.router.add_delete("/v1/keys/{name}", revoke)
    app.router.add_post("/v1/keys/{name}/rotate", rotate)


async def create(request: web.Request) -> web.Response:
    key, secret = await request.app[KEYS].create(key_settings(await read_json(request)))
    return web.json_response({"key": key.public(), "secret": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    store, day = request.app[KEYS], today()
    return web.json_response({"keys": [{**k.public(), "tokens_today": store.tokens_on(k.name, day)}
                                       for k in store.live()]})


async def usage(request: web.Request) -> web.Response:
    since = request.query.get("since")
    if since is not None:
        try:
            since = datetime.strptime(since, "%Y-%m-%d").strftime("%Y-%m-%d")
        except ValueError:
            raise InvalidRequest(f"since: {since!r} is not a date; write it as YYYY-MM-DD.", field="since") from None
    rows = await request.app[KEYS].usage(request.query.get("name"), since)
    return web.json_response({"usage": rows})


async def revoke(request: web.Request) -> web.Response:
    key = await request.app[KEYS].revoke(request.match_info["name"])
    ended = end_jobs_of(request.app, key.name, f"The API key '{key.name}' was revoked while this ran.")
    return web.json_response({"revoked": key.name, "jobs_ended": ended})


async def rotate(request: web.Request) -> web.Response:
    key, secret = await request.app[KEYS].rotate(request.match_info["name"])
    return web.json_response({"key": key.public(), "secret": secret})


def end_jobs_of(app: web.Application, owner: str, message: str) -> int:
    """Cancel the key's unfinished jobs, each told why first (its stream shows the error, then ends)."""
    registry = app[shared_keys.JOB_REGISTRY]
    running = [j for j in registry.jobs() if j.owner == owner and not j.state.finished]
    for job in running:
        job.emit(Error(code="KEY_REVOKED", message=message, status=401))
        job.error = {"code": "KEY_REVOKED", "message": message, "status": 401}
        registry.cancel(job.id)
    return len(running)


