"""Cache-aware routing for real: two workers of the built-in model on two hives (the second over a loopback
sshd), a conversation whose every next turn goes to the worker that holds it (narrated, its reused
tokens in the result, OpenAI's `cached_tokens`, the queen's hit counter); and, with
`--no-cache-routing`, the same turn going by load to the other worker, which computes it all again."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from shared.events import Narration
from shared.job_client import JobClient
from shared.operations import Infer, WorkerSpawn
from tests.support.two_hives import SECOND, start_two_hives

pytestmark = pytest.mark.usefixtures("slow")

SYSTEM = ("You are a patient teacher. You answer every question with a short list, one item a line, and you "
          "never add anything after the list. You use plain words a child knows, and you do not repeat the "
          "question. When a list has a natural order you keep it; otherwise you list in the order things come "
          "to mind.")
TURN1 = (("system", SYSTEM), ("user", "Name three colours."))


async def conversation(hives, turns: int) -> list[dict]:
    """TURN1 and `turns` more, each with the answers so far; the End stats of each."""
    results = []
    async with JobClient(hives.queen.url, hives.queen.token) as client:
        for hive in ("localhost", SECOND):
            assert [e async for e in client.stream((await client.submit(WorkerSpawn(hive_id=hive))).job_id)][-1] \
                .state == "completed"
        history = TURN1
        for question in ["", "And three animals?", "And three cities?", "And three fruits?"][:turns + 1]:
            if question:
                history += (("user", question),)
            job = await client.submit(Infer(messages=history, max_tokens=8, temperature=0))
            events = [e async for e in client.stream(job.job_id)]
            stats = dict(events[-1].stats)
            stats["found"] = [e.human for e in events if isinstance(e, Narration) and e.action == "worker_found"]
            results.append(stats)
            history += (("assistant", stats["text"]),)
    results[-1]["history"] = history
    return results


@pytest.fixture
async def hives(tmp_path, request):
    setup = await asyncio.to_thread(start_two_hives, tmp_path, *getattr(request, "param", ()))
    yield setup
    await asyncio.to_thread(setup.stop)


async def test_every_next_turn_goes_to_the_worker_that_holds_the_conversation(hives):
    first, *later = await conversation(hives, 3)
    for turn in later:
        assert turn["worker_id"] == first["worker_id"]
        # the conversation so far came from its cache: all but the new question and the template around it
        assert turn["prompt_tokens_reused"] >= turn["prompt_tokens"] - 30, turn
        assert any("of this prompt" in line for line in turn["found"]), turn["found"]

    openai = AsyncOpenAI(base_url=hives.queen.url + "/v1", api_key=hives.queen.token)
    try:
        messages = [{"role": r, "content": c} for r, c in later[-1]["history"]] + [
            {"role": "user", "content": "And three birds?"}]
        answer = await openai.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=4,
                                                      temperature=0)
    finally:
        await openai.close()
    assert answer.usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens - 30

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {hives.queen.token}"}) as session:
        async with session.get(hives.queen.url + "/metrics") as resp:
            text = await resp.text()
    samples = {(s.name, s.labels.get("result")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("rbee_prompt_cache_requests_total", "hit")] >= 4  # three turns and the OpenAI one
    assert samples[("rbee_prompt_tokens_cached_total", None)] > 0.5 * samples[("rbee_prompt_tokens_total", None)]


@pytest.mark.parametrize("hives", [("--no-cache-routing",)], indirect=True)
async def test_without_cache_routing_the_next_turn_goes_by_load_and_is_computed_again(hives):
    first, second = await conversation(hives, 1)
    assert second["worker_id"] != first["worker_id"]  # the least recently used of two idle workers
    assert second["prompt_tokens_reused"] < 10
