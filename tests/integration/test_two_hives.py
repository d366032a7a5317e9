"""The queen with two hives (the second a remote one, over a loopback sshd: tests/support/two_hives.py):
models and workers of every hive are visible, not only the local one's; heartbeats are validated."""

from __future__ import annotations

import asyncio
import json
import shutil

import aiohttp
import pytest
from openai import AsyncOpenAI

from shared.events import Data
from shared.job_client import JobClient
from shared.operations import ModelDownload, WorkerSpawn
from tests.support.two_hives import SECOND, start_two_hives


@pytest.fixture
async def hives(tmp_path):
    setup = await asyncio.to_thread(start_two_hives, tmp_path)
    yield setup
    await asyncio.to_thread(setup.stop)


async def run(client: JobClient, operation) -> list:
    job = await client.submit(operation)
    return [e async for e in client.stream(job.job_id)]


async def test_models_of_every_running_hive_are_listed_and_served(hives):
    async with JobClient(hives.queen.url, hives.queen.token) as client:
        events = await run(client, ModelDownload(hive_id=SECOND, model=hives.second_only_model))
        assert any(isinstance(e, Data) and e.action == "model_download" for e in events)
    openai = AsyncOpenAI(base_url=hives.queen.url + "/v1", api_key=hives.queen.token)
    try:
        ids = [m.id async for m in openai.models.list()]
        assert hives.second_only_model in ids and "smollm2-135m" in ids
        answer = await openai.completions.create(model=hives.second_only_model, prompt="The capital of France is",
                                                 max_tokens=4, temperature=0)
        assert answer.usage.completion_tokens > 0  # accepted, not 404 (where it runs is placement: #16)
    finally:
        await openai.close()


async def test_the_queen_lists_workers_of_both_hives(hives):
    async with JobClient(hives.queen.url, hives.queen.token) as client:
        await run(client, WorkerSpawn(hive_id="localhost"))
        await run(client, WorkerSpawn(hive_id=SECOND))
        workers = (await client.request("GET", "/v1/workers"))["workers"]
    assert sorted(w["hive_id"] for w in workers) == ["localhost", SECOND]
    # The second hive's own token is good for heartbeats of its own workers, and nothing else.
    hive_token = (hives.second_home / "config" / "token").read_text().strip()
    local = next(w for w in workers if w["hive_id"] == "localhost")
    beat = {"worker_id": local["worker_id"], "url": "http://127.0.0.1:1", "model": "m", "state": "ready"}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {hive_token}"}) as session:
        for body, status in [({**beat, "hive_id": "localhost"}, 401), ({**beat, "hive_id": SECOND}, 403)]:
            async with session.post(hives.queen.url + "/v1/workers/heartbeat", json=body) as resp:
                assert resp.status == status, await resp.text()
        async with session.post(hives.queen.url + "/v1/jobs", json={"operation": "hive_list"}) as resp:
            assert resp.status == 401


@pytest.mark.parametrize("body, field", [
    ({"worker_id": "w9", "url": "http://127.0.0.1:1", "model": "m", "state": "ready"}, "hive_id"),
    ({"worker_id": "w9", "hive_id": "h", "url": "http://127.0.0.1:1", "model": "m", "state": "ready",
      "queue_depth": "abc"}, "queue_depth"),
    ([1, 2], None),
    ("not json", None),
])
async def test_a_malformed_heartbeat_is_refused_and_registers_nothing(hives, body, field):
    headers = {"Authorization": f"Bearer {hives.queen.token}"}
    async with aiohttp.ClientSession() as session:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        async with session.post(hives.queen.url + "/v1/workers/heartbeat", data=data, headers=headers) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        async with session.get(hives.queen.url + "/v1/workers", headers=headers) as resp:
            assert (await resp.json())["workers"] == []
    assert error["code"] == "INVALID_REQUEST" and (field is None or f"'{field}'" in error["message"])
    assert not any("Traceback" in line for line in hives.queen.stderr_lines)


async def test_placement_goes_where_the_model_is_and_refuses_clearly_without_room(hives, tmp_path):
    from shared.events import End, Error, Narration
    from shared.operations import Infer

    async with JobClient(hives.queen.url, hives.queen.token) as client:
        await run(client, ModelDownload(hive_id=SECOND, model=hives.second_only_model))
        # No hive named: the model's file is on the second hive only, so its worker goes there.
        events = await run(client, Infer(model=hives.second_only_model, prompt="Hello", max_tokens=2))
        assert events[-1] == End(state="completed", stats=events[-1].stats) and events[-1].stats["hive_id"] == SECOND
        placed = [e.human for e in events if isinstance(e, Narration) and e.action == "placement"]
        assert placed and placed[0].startswith(f"Placing {hives.second_only_model} on {SECOND}: has the model")
        # Every core of both hives now runs a worker: a third model fits nowhere, and the error says why.
        await run(client, WorkerSpawn(hive_id="localhost"))
        third = tmp_path / "third.gguf"
        shutil.copy(hives.second_only_model.removeprefix("file:"), third)
        events = await run(client, Infer(model=f"file:{third}", prompt="Hello", max_tokens=2))
    error = next((e for e in events if isinstance(e, Error)), None)
    assert error is not None and error.code == "NO_ROOM", [getattr(e, "human", e) for e in events]
    assert "localhost: every core runs a worker already" in error.message
    assert f"{SECOND}: every core runs a worker already" in error.message
