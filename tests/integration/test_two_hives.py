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
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)


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


async def test_placement_goes_where_the_model_is_evicts_idle_workers_only_and_says_why(hives, tmp_path):
    from shared.events import Error, Narration
    from shared.operations import Infer

    counting = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
    async with JobClient(hives.queen.url, hives.queen.token) as client:
        await run(client, ModelDownload(hive_id=SECOND, model=hives.second_only_model))
        # No hive named: the model's file is on the second hive only, so its worker goes there.
        events = await run(client, Infer(model=hives.second_only_model, prompt="Hello", max_tokens=2))
        assert events[-1].state == "completed" and events[-1].stats["hive_id"] == SECOND
        placed = [e.human for e in events if isinstance(e, Narration) and e.action == "placement"]
        assert placed and placed[0].startswith(f"Placing {hives.second_only_model} on {SECOND}: has the model")
        await run(client, WorkerSpawn(hive_id="localhost"))  # now every core of both hives runs a worker
        third = tmp_path / "third.gguf"
        shutil.copy(hives.second_only_model.removeprefix("file:"), third)

        # Both workers busy: nothing may be evicted, and the error names each hive and why.
        long = [await client.submit(Infer(model=m, prompt=counting, max_tokens=1000, temperature=0, hive_id=h))
                for m, h in ((hives.second_only_model, SECOND), ("smollm2-135m", "localhost"))]

        async def both_busy():
            workers = (await client.request("GET", "/v1/workers"))["workers"]
            return len(workers) == 2 and all(w["slots_busy"] for w in workers)

        await until(both_busy, timeout=30, interval=0.2, what="both workers to generate")
        events = await run(client, Infer(model=f"file:{third}", prompt="Hello", max_tokens=2))
        error = next((e for e in events if isinstance(e, Error)), None)
        assert error is not None and error.code == "NO_ROOM", [getattr(e, "human", e) for e in events]
        assert "localhost: every core runs a worker already" in error.message
        assert f"{SECOND}: every core runs a worker already" in error.message
        for job in long:
            await client.cancel(job.job_id)

        # Idle again: the least recently used one makes room.
        async def both_idle():
            workers = (await client.request("GET", "/v1/workers"))["workers"]
            return not any(w["slots_busy"] for w in workers)

        await until(both_idle, timeout=30, interval=0.2, what="both workers to be idle")
        events = await run(client, Infer(model=f"file:{third}", prompt="Hello", max_tokens=2))
        assert events[-1].state == "completed", [getattr(e, "human", e) for e in events]
        evicted = [e.human for e in events if isinstance(e, Narration) and e.action == "evict"]
        assert len(evicted) == 1 and "the least recently used" in evicted[0]


@pytest.fixture
async def hives_with_fixed_slots(tmp_path):
    setup = await asyncio.to_thread(start_two_hives, tmp_path, "--worker-slots", "4")  # slots that do not grow
    yield setup
    await asyncio.to_thread(setup.stop)


async def test_a_burst_for_one_model_waits_for_its_own_slots_and_leaves_other_models_workers_alone(
        hives_with_fixed_slots):
    from shared.events import Narration
    from shared.operations import Infer

    hives = hives_with_fixed_slots
    b_model = hives.second_only_model
    async with JobClient(hives.queen.url, hives.queen.token) as client:
        await run(client, ModelDownload(hive_id=SECOND, model=b_model))
        await run(client, WorkerSpawn(hive_id="localhost"))  # the built-in model takes every local core
        # No hive named: placed where the model's file is (localhost has no core left anyway).
        spawned = await run(client, WorkerSpawn(hive_id="any", model=b_model))
        assert spawned[-1].state == "completed" and spawned[-1].stats["hive_id"] == SECOND, spawned
        b_worker = spawned[-1].stats["worker_id"]

        burst = [asyncio.create_task(run(client, Infer(prompt=f"Count to {i}:", max_tokens=24, temperature=0)))
                 for i in range(8)]  # twice the slots of the built-in model's one worker (4, fixed)
        await asyncio.sleep(0.5)
        b_answer = await run(client, Infer(model=b_model, prompt="Hello", max_tokens=4))
        results = await asyncio.gather(*burst)

    everything = [e for events in [*results, b_answer] for e in events]
    assert not [e.human for e in everything if isinstance(e, Narration) and e.action == "evict"]
    assert all(r[-1].state == "completed" and r[-1].stats["hive_id"] == "localhost" for r in results)
    assert any("worker_wait" == e.action for e in everything if isinstance(e, Narration))
    assert b_answer[-1].state == "completed" and b_answer[-1].stats["worker_id"] == b_worker


async def test_concurrent_requests_spread_over_both_hives_and_a_dead_worker_fails_over(hives):
    import os
    import signal

    from shared.events import Error
    from shared.operations import Infer

    async with JobClient(hives.queen.url, hives.queen.token) as client:
        for hive_id in ("localhost", SECOND):  # one warm worker (4 slots) of the built-in model on each
            await run(client, WorkerSpawn(hive_id=hive_id))
        results = await asyncio.gather(*(run(client, Infer(prompt=f"Count to {i}:", max_tokens=16, temperature=0))
                                         for i in range(8)))
        assert all(r[-1].state == "completed" for r in results)
        used = [r[-1].stats["hive_id"] for r in results]
        assert sorted(set(used)) == ["localhost", SECOND] and max(used.count(h) for h in set(used)) <= 4, used

        # A worker killed just before a request: the request is served by the other one, no error shown.
        workers = (await client.request("GET", "/v1/workers"))["workers"]
        local = next(w for w in workers if w["hive_id"] == "localhost")
        os.kill(local["pid"], signal.SIGKILL)
        events = await run(client, Infer(prompt="Hello", max_tokens=4))
    assert events[-1].state == "completed" and not [e for e in events if isinstance(e, Error)], events


async def test_a_generation_whose_worker_dies_continues_on_another_with_the_same_text(hives):
    import os
    import signal

    from shared.events import Error, Narration, Token
    from shared.operations import Infer

    request = Infer(prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", max_tokens=60, temperature=0)
    async with JobClient(hives.queen.url, hives.queen.token) as client:
        for hive_id in ("localhost", SECOND):  # a warm worker of the built-in model on each hive
            await run(client, WorkerSpawn(hive_id=hive_id))
        reference = await run(client, request)
        expected = "".join(e.t for e in reference if isinstance(e, Token))
        assert reference[-1].state == "completed" and len(expected) > 40

        job = await client.submit(request)
        events, tokens, generating = [], 0, None
        async for event in client.stream(job.job_id):
            events.append(event)
            if isinstance(event, Narration) and event.action == "infer_start" and generating is None:
                generating = event.target
            if isinstance(event, Token):
                tokens += 1
                if tokens == 20:  # mid-answer: its worker dies
                    workers = (await client.request("GET", "/v1/workers"))["workers"]
                    os.kill(next(w["pid"] for w in workers if w["worker_id"] == generating), signal.SIGKILL)
    assert events[-1].state == "completed", [getattr(e, "message", e) for e in events if isinstance(e, Error)]
    assert not [e for e in events if isinstance(e, Error)]
    assert "".join(e.t for e in events if isinstance(e, Token)) == expected  # one answer, as if nothing happened
    moved = [e.human for e in events if isinstance(e, Narration) and e.action == "infer_moved"]
    assert len(moved) == 1 and "continuing the same answer on another worker" in moved[0], moved
    assert events[-1].stats["worker_id"] != generating
