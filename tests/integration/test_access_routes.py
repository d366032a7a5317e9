"""Every route of the real queen app x every kind of caller: the queen's token, a key of each scope, no key,
a wrong, a revoked and an expired key. A caller the scope table lets through never gets 401 or 403 (the
request itself is empty, so nothing runs for real: it gets 400s and 404s); one it does not gets 403 naming
the scope needed, or 401."""

from __future__ import annotations

import time

import pytest

from queen.access import middleware
from queen.access.keys import key_settings
from queen.access.scopes import OWN_CHECK, PUBLIC, Scope, route_scope
from queen.app import create_app
from queen.appkeys import KEYS
from queen.config import QueenConfig
from shared.heartbeat import HEARTBEAT_PATH

TOKEN = "queen-token-for-the-access-test-0123456789"
FILLED = {"{job_id}": "job-none", "{id}": "conv-none", "{name}": "nobody"}


def concrete(path: str) -> str:
    for hole, value in FILLED.items():
        path = path.replace(hole, value)
    return path


@pytest.fixture
async def queen(aiohttp_client, monkeypatch):
    monkeypatch.setattr(middleware, "FAILURES_ALLOWED", 100_000)  # this test sends hundreds of wrong keys
    client = await aiohttp_client(create_app(QueenConfig(), TOKEN))
    store = client.app[KEYS]
    secrets = {}
    for scope in Scope:
        _, secrets[str(scope)] = await store.create(key_settings({"name": f"k-{scope}", "scope": str(scope)}))
    _, secrets["revoked"] = await store.create(key_settings({"name": "gone"}))
    await store.revoke("gone")
    _, secrets["expired"] = await store.create({**key_settings({"name": "old", "scope": "admin"}),
                                                "expires_at": time.time() - 1})
    return client, secrets


def routes(app) -> list[tuple[str, str]]:
    found = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    return sorted((("POST" if m == "*" else m), path) for m, path in found)


async def test_every_route_for_every_caller(queen):
    client, secrets = queen
    callers = {"token": {"Authorization": f"Bearer {TOKEN}"},
               **{name: {"Authorization": f"Bearer {secret}"} for name, secret in secrets.items()},
               "none": {}, "wrong": {"Authorization": "Bearer rbee-sk-wrong"}}
    checked = 0
    for method, path in routes(client.app):
        needed = route_scope(method, path)
        if needed == OWN_CHECK or path == "/v1/shutdown":  # heartbeats: hive tokens; shutdown: ends the app
            continue
        for who, headers in callers.items():
            resp = await client.request(method, concrete(path), headers=headers, data=b"{}" if method != "GET" else None)
            text = await resp.text()
            if needed == PUBLIC:
                allowed = True
            elif who in ("none", "wrong", "revoked", "expired"):
                assert resp.status == 401, (method, path, who, resp.status, text)
                checked += 1
                continue
            else:
                allowed = who == "token" or Scope.parse(who) >= needed
            if allowed:
                assert resp.status not in (401, 403), (method, path, who, resp.status, text)
            else:
                assert resp.status == 403 and f"needs '{needed}'" in text, (method, path, who, resp.status, text)
            checked += 1
    assert checked > 200  # every route, every caller


async def test_shutdown_and_heartbeats(queen):
    client, secrets = queen
    for scope in ("infer", "read"):
        resp = await client.post("/v1/shutdown", headers={"Authorization": f"Bearer {secrets[scope]}"})
        assert resp.status == 403 and "needs 'admin'" in await resp.text()
    resp = await client.post("/v1/shutdown", headers={"Authorization": "Bearer rbee-sk-wrong"})
    assert resp.status == 401
    beat = {"worker_id": "w1", "hive_id": "localhost", "model": "m", "url": "http://127.0.0.1:1", "state": "ready"}
    resp = await client.post(HEARTBEAT_PATH, headers={"Authorization": f"Bearer {secrets['admin']}"}, json=beat)
    assert resp.status in (400, 401)  # an API key is no hive's token
    resp = await client.post("/v1/shutdown", headers={"Authorization": f"Bearer {secrets['admin']}"})
    assert resp.status == 202
