"""Continuous batching in one real worker process on the built-in model: several requests decoded
together, each with its own sampling, stop conditions and cancel; prompt-prefix reuse across turns."""

from __future__ import annotations

import asyncio

import pytest

from shared.events import End, Token
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.processes import start_worker

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

PROMPTS = ["The capital of France is", "1, 2, 3, 4, 5,", "Once upon a time, there was a",
           "The best way to learn a language is"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    daemon = start_worker(tmp_path_factory.mktemp("batching-home"), "--parallel", "4", "--ctx-size", "512")
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
async def client(worker):
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        yield client


async def generate(client: JobClient, **fields) -> tuple[str, End]:
    job = await client.submit(InferenceRequest(**fields))
    events = [e async for e in client.stream(job.job_id)]
    return "".join(e.t for e in events if isinstance(e, Token)), events[-1]


async def test_four_requests_run_together_and_each_says_what_it_says_alone(client, worker):
    alone = [await generate(client, prompt=p, max_tokens=16, temperature=0) for p in PROMPTS]
    busy_seen = []

    async def watch():
        while True:
            busy_seen.append((await asyncio.to_thread(worker.health))["slots_busy"])
            await asyncio.sleep(0.01)  # a sampling period, not a wait for something

    watcher = asyncio.create_task(watch())
    together = await asyncio.gather(*(generate(client, prompt=p, max_tokens=16, temperature=0) for p in PROMPTS))
    watcher.cancel()
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert all(end.state == "completed" and end.stats["tokens_out"] == 16 for _, end in together)
    assert max(busy_seen) >= 2  # they really shared the worker (one process, several slots busy)


async def test_cancelling_one_of_four_leaves_the_others_whole(client):
    alone = await generate(client, prompt=PROMPTS[0], max_tokens=24, temperature=0)
    jobs = [await client.submit(InferenceRequest(prompt=p, max_tokens=24 if k else 400, temperature=0))
            for k, p in enumerate(PROMPTS)]
    victim = jobs[0].job_id
    seen = 0
    async for event in client.stream(victim):
        if isinstance(event, Token):
            seen += 1
            if seen == 2:
                await client.cancel(victim)
        last = event
    assert last.state == "cancelled" and last.stats["tokens_out"] < 100
    others = []
    for job in jobs[1:]:
        events = [e async for e in client.stream(job.job_id)]
        others.append(events[-1])
    assert all(end.state == "completed" and end.stats["tokens_out"] == 24 for end in others)
    again = await generate(client, prompt=PROMPTS[0], max_tokens=24, temperature=0)
    assert again[0] == alone[0]  # the freed slot serves the next request as before


async def test_sampling_stop_and_limits_hold_per_sequence(client):
    seeded = dict(prompt=PROMPTS[2], max_tokens=20, temperature=0.9, seed=1234)
    results = await asyncio.gather(
        generate(client, **seeded),
        generate(client, **seeded),
        generate(client, prompt="1, 2, 3, 4, 5,", max_tokens=40, temperature=0, stop=["9"]),
        generate(client, prompt=PROMPTS[3], max_tokens=5, temperature=0),
    )
    (first, _), (second, _), (counting, stopped), (short, short_end) = results
    assert first == second  # a seeded sampler is per sequence: the neighbours change nothing
    assert "9" not in counting and stopped.stats["stop_reason"] == "stop" and counting.startswith(" 6, 7, 8,")
    assert short_end.stats["tokens_out"] == 5 and short_end.stats["stop_reason"] == "length"


async def test_the_context_of_a_slot_bounds_its_answer(client):
    prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10," * 12  # about 300 tokens of a 512-token slot
    text, end = await generate(client, prompt=prompt, max_tokens=500, temperature=0)
    assert end.stats["stop_reason"] == "length"
    assert end.stats["prompt_tokens"] + end.stats["tokens_out"] <= 512 + 1


async def test_the_next_turn_of_a_chat_reuses_the_cached_prefix(client):
    turn1 = [{"role": "system", "content": "You are a helpful assistant who answers in one sentence."},
             {"role": "user", "content": "What is the capital of France?"}]
    job = await client.submit({"messages": turn1, "max_tokens": 12, "temperature": 0})
    events = [e async for e in client.stream(job.job_id)]
    answer, end1 = "".join(e.t for e in events if isinstance(e, Token)), events[-1]
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]
    job = await client.submit({"messages": turn2, "max_tokens": 12, "temperature": 0})
    end2 = [e async for e in client.stream(job.job_id)][-1]
    assert end2.state == "completed"
    # everything of turn 1's prompt is cached; its answer too where it tokenizes the same way
    assert end2.stats["prompt_tokens_reused"] >= end1.stats["prompt_tokens"] - 1
    assert end2.stats["prompt_tokens_reused"] < end2.stats["prompt_tokens"]


async def test_a_prefix_a_running_request_holds_is_shared_with_a_new_one(tmp_path):
    system = {"role": "system", "content": "You are a patient teacher. " * 40}  # ~250 tokens both share
    long_one = [system, {"role": "user", "content": "Count from 1 to 100."}]
    second = [system, {"role": "user", "content": "What is the capital of France?"}]
    reference = await asyncio.to_thread(start_worker, tmp_path / "reference")  # computes `second` cold
    shared = await asyncio.to_thread(start_worker, tmp_path / "shared")
    try:
        async with JobClient(reference.url, reference.token, path="/v1/inference") as cold, \
                JobClient(shared.url, shared.token, path="/v1/inference") as warm:
            cold_text, cold_end = await chat(cold, second)
            running = await warm.submit({"messages": long_one, "max_tokens": 200, "temperature": 0})
            async for event in warm.stream(running.job_id):
                if isinstance(event, Token):
                    break  # it is generating: its slot holds the system prompt
            text, end = await chat(warm, second)
            await warm.cancel(running.job_id)
    finally:
        await asyncio.to_thread(reference.stop)
        await asyncio.to_thread(shared.stop)
    assert end.stats["prompt_tokens_reused"] >= 200 and cold_end.stats["prompt_tokens_reused"] == 0
    assert text == cold_text  # the copied cache computes exactly what a cold prompt does


async def chat(client: JobClient, messages: list[dict]) -> tuple[str, End]:
    job = await client.submit({"messages": messages, "max_tokens": 16, "temperature": 0})
    events = [e async for e in client.stream(job.job_id)]
    return "".join(e.t for e in events if isinstance(e, Token)), events[-1]
