"""Speculative decoding by n-gram lookup (worker/ngram.py) in a real worker: guesses are made and kept
when the answer repeats its prompt, and the text is exactly what the same worker gives without guessing,
at temperature 0 and, with a seed, above it (each token is still sampled from the model's distribution
given the tokens before it, with the same random draws)."""

from __future__ import annotations

import asyncio

import pytest

from shared.events import End, Token
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.passages import FREE, REPEAT
from tests.support.processes import start_worker

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    guessing = start_worker(tmp_path_factory.mktemp("guessing"), "--ctx-size", "1024")
    plain = start_worker(tmp_path_factory.mktemp("plain"), "--ctx-size", "1024", "--draft-max", "0")
    yield guessing, plain
    assert guessing.stop() == 0 and plain.stop() == 0


async def answer(worker, messages, **sampling) -> tuple[str, dict]:
    request = InferenceRequest(messages=[(m["role"], m["content"]) for m in messages], max_tokens=64, **sampling)
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        job = await client.submit(request)
        events = [e async for e in client.stream(job.job_id)]
    end = events[-1]
    assert isinstance(end, End) and end.state == "completed"
    return "".join(e.t for e in events if isinstance(e, Token)), dict(end.stats)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 7}],
                         ids=["temperature-0", "temperature-0.8-seeded"])
async def test_a_repeated_passage_is_guessed_and_the_text_is_the_same(workers, sampling):
    guessing, plain = workers
    (text, stats), (expected, plain_stats) = await asyncio.gather(answer(guessing, REPEAT, **sampling),
                                                                  answer(plain, REPEAT, **sampling))
    assert text == expected and stats["tokens_out"] == plain_stats["tokens_out"]
    assert "draft_tokens" not in plain_stats
    if sampling["temperature"] == 0:  # the answer copies the passage: most guesses are kept
        assert stats["draft_tokens_accepted"] >= stats["tokens_out"] // 2


async def test_free_text_is_the_same_too(workers):
    guessing, plain = workers
    (text, _), (expected, _) = await asyncio.gather(answer(guessing, FREE, temperature=0),
                                                    answer(plain, FREE, temperature=0))
    assert text == expected


async def test_guessing_waits_while_many_requests_generate(workers):
    guessing, _ = workers
    alone, _ = await answer(guessing, REPEAT, temperature=0)
    answers = await asyncio.gather(*(answer(guessing, REPEAT, temperature=0) for _ in range(4)))
    # four at once: the batch's positions go to their tokens, not to guesses (alone, most tokens are guessed)
    assert all(text == alone for text, _ in answers)
    assert sum(stats.get("draft_tokens", 0) for _, stats in answers) < sum(s["tokens_out"] for _, s in answers) / 4
