"""A worker's slots follow demand (shared/kv_cache.py): it starts with 4, grows when requests wait for a
slot, and every answer, those running while it grew included, says what it says alone (their KV cells
are moved into the larger context, not computed again or lost)."""

from __future__ import annotations

import asyncio

import pytest

from shared.events import End, Token
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.processes import start_worker

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

PROMPTS = ["The capital of France is", "1, 2, 3, 4, 5,", "Once upon a time, there was a",
           "The best way to learn a language is", "My favourite colour is", "Water boils at",
           "The first rule of programming:", "In the morning I like to"]


async def generate(client: JobClient, prompt: str, max_tokens: int) -> tuple[str, End]:
    job = await client.submit(InferenceRequest(prompt=prompt, max_tokens=max_tokens, temperature=0))
    events = [e async for e in client.stream(job.job_id)]
    return "".join(e.t for e in events if isinstance(e, Token)), events[-1]


async def test_slots_grow_when_requests_wait_and_every_answer_stays_whole(tmp_path):
    worker = await asyncio.to_thread(start_worker, tmp_path / "home", "--ctx-size", "512", "--max-parallel", "8")
    try:
        health = await asyncio.to_thread(worker.health)
        assert (health["slots"], health["slots_open"]) == (8, 4)  # the queen sees what it may grow to
        async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
            long = [await generate(client, PROMPTS[k], 40) for k in range(2)]
            alone = [await generate(client, p, 12) for p in PROMPTS[2:]]
            assert (await asyncio.to_thread(worker.health))["slots_open"] == 4  # one at a time: no growth
            # two long answers start, then six more arrive: they wait for slots, so the worker grows
            running = [asyncio.create_task(generate(client, PROMPTS[k], 40)) for k in range(2)]
            await asyncio.sleep(0.3)
            together = await asyncio.gather(*(generate(client, p, 12) for p in PROMPTS[2:]))
            during = await asyncio.gather(*running)
        assert [text for text, _ in together] == [text for text, _ in alone]
        assert [text for text, _ in during] == [text for text, _ in long]  # moved mid-answer, intact
        assert all(end.state == "completed" for _, end in together + during)
        health = await asyncio.to_thread(worker.health)
        assert (health["slots"], health["slots_open"]) == (8, 8)
    finally:
        assert await asyncio.to_thread(worker.stop) == 0


async def test_a_worker_with_fixed_slots_never_grows(tmp_path):
    worker = await asyncio.to_thread(start_worker, tmp_path / "home", "--ctx-size", "256", "--parallel", "2")
    try:
        async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
            answers = await asyncio.gather(*(generate(client, p, 8) for p in PROMPTS[:5]))
        assert all(end.state == "completed" for _, end in answers)
        health = await asyncio.to_thread(worker.health)
        assert (health["slots"], health["slots_open"]) == (2, 2)
    finally:
        assert await asyncio.to_thread(worker.stop) == 0
