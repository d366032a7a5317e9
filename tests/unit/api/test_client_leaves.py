"""A streamed request whose client leaves while it still waits for a worker (nothing written yet) gives its
place up at once, on every API (queen/api/common.py `watch_client`), not when its first token would fail.

The app runs as the daemons run it (shared/daemon.py: aiohttp does not cancel a handler whose client
left); aiohttp's test server would cancel it, and hide what this is about."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from shared.events import JobState
from tests.support.api_app import AUTH, MODEL, api_app, jobs

WAITING = "tokens=3 queued=30"  # 30 s before its first token, as behind a busy worker

REQUESTS = {
    "openai chat": ("/v1/chat/completions", {"model": MODEL, "stream": True,
                                             "messages": [{"role": "user", "content": WAITING}]}),
    "responses": ("/v1/responses", {"model": MODEL, "stream": True, "input": WAITING}),
    "anthropic": ("/v1/messages", {"model": MODEL, "stream": True, "max_tokens": 8,
                                   "messages": [{"role": "user", "content": WAITING}]}),
    "ollama": ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": WAITING}]}),
}


@pytest.fixture
async def served(generator):
    """The API app served as a daemon serves it: (its app, its URL)."""
    app = api_app(generator)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)  # handler_cancellation off, as there
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield app, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.mark.parametrize("api", REQUESTS)
async def test_a_client_that_leaves_while_queued_gives_its_place_up(served, generator, api):
    app, url = served
    path, body = REQUESTS[api]
    with pytest.raises(asyncio.TimeoutError):  # it leaves before a byte of the answer came
        await asyncio.wait_for(_read_all(url + path, body), 0.5)
    left = time.monotonic()
    await generator.started.wait()
    job = jobs(app)[0]
    await asyncio.wait_for(job.wait(), 5)
    assert job.state is JobState.CANCELLED and time.monotonic() - left < 2  # not after the 30 s wait
    assert generator.cleaned_up == [job.id]


async def _read_all(url: str, body: dict) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, headers=AUTH, json=body) as resp:
        await resp.read()
