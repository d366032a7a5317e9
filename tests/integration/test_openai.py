"""The queen's OpenAI-compatible API, used through the official `openai` package."""

from __future__ import annotations

import time

import openai
import pytest

from shared.job_client import JobClient
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

FRANCE = "The capital of France is"


@pytest.fixture
def client(queen):
    return openai.OpenAI(base_url=queen.url + "/v1", api_key=queen.token, max_retries=0, timeout=120)


def test_models_lists_the_builtin(client):
    assert "smollm2-135m" in [m.id for m in client.models.list()]


def test_completion_plain_and_streamed_agree(client):
    whole = client.completions.create(model="smollm2-135m", prompt=FRANCE, max_tokens=8, temperature=0)
    assert whole.object == "text_completion" and "Paris" in whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 8 and whole.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model="smollm2-135m", prompt=FRANCE, max_tokens=8, temperature=0,
                                            stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_plain_and_streamed(client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=12, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    text = whole.choices[0].message.content
    assert text and whole.usage.prompt_tokens > len(messages[0]["content"].split())  # the template's tokens too
    stream = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_same_seed_same_text(client):
    params = dict(model="smollm2-135m", prompt="Once upon a time,", max_tokens=12, temperature=1.0, seed=7)
    first = client.completions.create(**params).choices[0].text
    assert client.completions.create(**params).choices[0].text == first


def test_errors_are_the_librarys_own_types(client, queen):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=4)
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="smollm2-135m", prompt="hi", max_tokens=4, temperature=5)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="smollm2-135m", prompt="hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="smollm2-135m", prompt="hi", n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "robot", "content": "hi"}])
    stranger = openai.OpenAI(base_url=queen.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


async def test_abandoned_stream_frees_the_worker_within_a_second(queen):
    client = openai.AsyncOpenAI(base_url=queen.url + "/v1", api_key=queen.token, max_retries=0, timeout=120)
    await client.completions.create(model="smollm2-135m", prompt="warm", max_tokens=2)
    stream = await client.completions.create(model="smollm2-135m", prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
                                             max_tokens=1000, temperature=0, stream=True)
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    await stream.close()  # the client goes away mid-generation
    abandoned_at = time.monotonic()
    async with JobClient(queen.url, queen.token) as jobs:
        workers = []

        async def released():
            workers[:] = (await jobs.request("GET", "/v1/workers"))["workers"]
            return all(w["leases"] == [] for w in workers)

        await until(released, timeout=1.0 - (time.monotonic() - abandoned_at), interval=0.05,
                    what=lambda: f"the worker to be released within a second (workers: {workers})")
        recent = [j for j in await jobs.list() if j["operation"] == "infer"]
        assert recent[0]["state"] == "cancelled"  # each request is a queen job
    await client.close()
