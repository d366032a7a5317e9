"""Conversations go back to the hive that keeps them on disk: two hives (the second over a loopback sshd);
turn 1 is answered on the second, whose worker is then stopped (its slots saved to the hive's prompt
cache); turn 2 has a worker on each hive, neither holding it, and goes to the second's, which reads
the history back (narrated, reused tokens in the result); with no worker at all, the next turn's worker
is started on the second."""

from __future__ import annotations

import asyncio

import pytest

from shared.events import Narration
from shared.job_client import JobClient
from shared.operations import Infer, WorkerDelete, WorkerSpawn
from tests.support.two_hives import SECOND, start_two_hives

pytestmark = pytest.mark.usefixtures("slow")

RULES = ("You are a patient teacher. You answer every question with a short list, one item a line, and you "
         "never add anything after the list. You use plain words a child knows, and you do not repeat the "
         "question. When a list has a natural order you keep it; otherwise you list in the order things come "
         "to mind. ")
HISTORY = (("system", RULES * 5), ("user", "Name three colours."))  # ~350 tokens: long enough to be saved


async def done(client: JobClient, operation) -> list:
    events = [e async for e in client.stream((await client.submit(operation)).job_id)]
    assert events[-1].state == "completed", events[-1]
    return events


async def ask(client: JobClient, history) -> dict:
    events = await done(client, Infer(messages=history, max_tokens=8, temperature=0))
    stats = dict(events[-1].stats)
    stats["found"] = " ".join(e.human for e in events if isinstance(e, Narration) and e.action == "worker_found")
    stats["spawned"] = " ".join(e.human for e in events if isinstance(e, Narration) and e.action == "worker_spawn")
    return stats


async def stop_workers(client: JobClient) -> None:
    """Every worker stopped: each saves what its slots hold, as an idle timeout's stop does."""
    for worker in (await client.request("GET", "/v1/workers"))["workers"]:
        await done(client, WorkerDelete(hive_id=worker["hive_id"], id=worker["worker_id"]))


@pytest.fixture
async def hives(tmp_path):
    setup = await asyncio.to_thread(start_two_hives, tmp_path)
    yield setup
    await asyncio.to_thread(setup.stop)


async def test_the_next_turn_goes_to_the_hive_that_kept_the_conversation_on_disk(hives):
    async with JobClient(hives.queen.url, hives.queen.token) as client:
        await done(client, WorkerSpawn(hive_id=SECOND))
        first = await ask(client, HISTORY)
        assert first["hive_id"] == SECOND
        await stop_workers(client)

        # a worker on each hive, the local one older (by load and LRU alone it would be chosen)
        await done(client, WorkerSpawn(hive_id="localhost"))
        await done(client, WorkerSpawn(hive_id=SECOND))
        history = HISTORY + (("assistant", first["text"]), ("user", "And three animals?"))
        second = await ask(client, history)
        assert second["hive_id"] == SECOND and f"back from {SECOND}'s disk" in second["found"]
        assert second["prompt_tokens_reused"] >= first["prompt_tokens"] - 16

        # no worker anywhere: the next turn's worker starts where the conversation is kept
        await stop_workers(client)
        history += (("assistant", second["text"]), ("user", "And three cities?"))
        third = await ask(client, history)
        assert third["hive_id"] == SECOND and third["prompt_tokens_reused"] >= second["prompt_tokens"] - 16
