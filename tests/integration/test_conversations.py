"""The queen's side of conversations and of a job list that matters: stored exchanges, ids by unique
prefix, read-only jobs kept out of listings and history, model aliases, chat on a model without a chat
template. Real queen, hive and worker on the built-in model."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3

import pytest
from openai import AsyncOpenAI

from shared.builtin_model import builtin_model_path
from shared.errors import RbeeError
from shared.events import Data, Token
from shared.job_client import JobClient
from shared.operations import Infer, ModelDownload, ModelList, Status
from shared.paths import RbeePaths
from tests.support.processes import start_queen
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

TINY = dict(max_tokens=8, temperature=0)


@pytest.fixture
async def queen(tmp_path):
    daemon = await asyncio.to_thread(start_queen, tmp_path / "home")
    yield daemon
    await asyncio.to_thread(daemon.stop, 30)


@pytest.fixture
async def client(queen):
    async with JobClient(queen.url, queen.token) as client:
        yield client


async def run(client: JobClient, operation) -> list:
    job = await client.submit(operation)
    return [e async for e in client.stream(job.job_id)]


def text_of(events) -> str:
    return "".join(e.t for e in events if isinstance(e, Token))


async def test_a_conversation_keeps_each_exchange_in_order_and_is_found_by_prefix(client):
    conv = await client.new_conversation(model="smollm2-135m")
    assert conv["id"].startswith("conv-") and conv["message_count"] == 0 and conv["title"] == ""
    history = [("user", "What is the capital of France?")]
    first = await run(client, Infer(messages=tuple(history), conversation_id=conv["id"], **TINY))
    assert first[-1].state == "completed" and first[-1].stats["conversation_id"] == conv["id"]
    history += [("assistant", text_of(first)), ("user", "And of Spain?")]
    second = await run(client, Infer(messages=tuple(history), conversation_id=conv["id"][5:12], **TINY))
    assert second[-1].state == "completed"

    async def stored():
        return (await client.conversation(conv["id"]))["message_count"] == 4

    await until(stored, what="the second exchange to be stored")
    got = await client.conversation(conv["id"][:9])  # "conv-" and a unique beginning
    assert [(m["role"], m["content"]) for m in got["messages"]] == [*history, ("assistant", text_of(second))]
    assert got["title"] == "What is the capital of France?"
    listed = await client.conversations()
    assert [(c["id"], c["message_count"]) for c in listed] == [(conv["id"], 4)]

    assert (await client.update_conversation(conv["id"], model="hf:a/b:c.gguf"))["model"] == "hf:a/b:c.gguf"
    with pytest.raises(RbeeError) as unknown:
        await client.conversation("conv-nothere")
    assert unknown.value.code == "CONVERSATION_NOT_FOUND" and "rbee conversations list" in unknown.value.message
    other = await client.new_conversation()
    with pytest.raises(RbeeError) as ambiguous:
        await client.conversation("conv-")
    assert ambiguous.value.code == "AMBIGUOUS_ID" and "2 conversation ids" in ambiguous.value.message
    assert other["id"] not in [c["id"] for c in await client.conversations()]  # nothing in it yet
    assert (await client.delete_conversation(conv["id"]))["deleted"] == conv["id"]
    assert await client.conversations() == []
    with pytest.raises(RbeeError):
        await client.conversation(conv["id"])
    with pytest.raises(RbeeError) as bad:
        await client.request("POST", "/v1/conversations", {"model": 3})
    assert bad.value.code == "INVALID_REQUEST" and "'model' must be a string" in bad.value.message


async def test_a_cancelled_answer_is_stored_as_far_as_it_got(client):
    conv = await client.new_conversation()
    job = await client.submit(Infer(messages=(("user", "Count from 1 to 500."),), conversation_id=conv["id"],
                                    max_tokens=1000, temperature=0))
    tokens = 0
    async for event in client.stream(job.job_id):
        if isinstance(event, Token):
            tokens += 1
            if tokens == 5:
                await client.cancel(job.job_id)

    async def stored():
        return (await client.conversation(conv["id"]))["message_count"] == 2

    await until(stored, what="the cancelled exchange to be stored")
    said = (await client.conversation(conv["id"]))["messages"]
    assert said[0]["content"] == "Count from 1 to 500." and said[1]["role"] == "assistant" and said[1]["content"]


async def test_an_unknown_conversation_fails_before_any_work(client):
    events = await run(client, Infer(prompt="Hello", conversation_id="conv-000000000000", **TINY))
    assert events[-1].state == "failed" and not text_of(events)


async def test_read_only_jobs_stay_out_of_listings_history_and_the_running_count(client, queen, tmp_path):
    answered = await run(client, Infer(prompt="Hello", **TINY))
    await run(client, ModelList())
    status = await run(client, Status())
    payload = next(e for e in status if isinstance(e, Data)).payload
    assert payload["jobs"]["running"] == 0  # the status job does not count itself
    listed = await client.list()
    assert [j["operation"] for j in listed] == ["infer"]
    assert {"infer", "model_list", "status"} <= {j["operation"] for j in await client.list(all=True)}

    job_id = listed[0]["job_id"]
    assert answered[-1].state == "completed"
    for prefix in (job_id[4:12], job_id[:12]):  # without and with "job-"
        assert (await client.get(prefix))["job_id"] == job_id
    await run(client, Infer(prompt="Hi", **TINY))
    with pytest.raises(RbeeError) as ambiguous:
        await client.get("job-")
    assert ambiguous.value.code == "AMBIGUOUS_ID"
    with pytest.raises(RbeeError) as missing:
        await client.get("zzzz")
    assert missing.value.status == 404

    db = RbeePaths.from_env({"RBEE_HOME": str(tmp_path / "home")}).data_dir / "queen.db"
    with sqlite3.connect(db) as conn:
        kept = {row[0] for row in conn.execute("SELECT operation FROM jobs")}
    assert kept == {"infer"}


async def test_a_model_is_named_by_its_alias(client, queen, tmp_path):
    model = tmp_path / "My-Model.Q4_1.gguf"
    shutil.copy(builtin_model_path(), model)
    await run(client, ModelDownload(model=f"file:{model}"))
    listed = next(e for e in await run(client, ModelList()) if isinstance(e, Data)).payload["models"]
    assert {m["id"]: m["alias"] for m in listed} == {"smollm2-135m": "smollm2-135m",
                                                     f"file:{model}": "my-model.q4_1"}
    events = await run(client, Infer(model="my-model.q4_1", prompt="Hello", **TINY))
    assert events[-1].state == "completed" and events[-1].stats["model"] == f"file:{model}"
    failed = await run(client, Infer(model="no-such-model", prompt="Hello", **TINY))
    assert failed[-1].state == "failed"
    openai = AsyncOpenAI(base_url=queen.url + "/v1", api_key=queen.token)
    try:  # the OpenAI API takes the alias too
        answer = await openai.completions.create(model="my-model.q4_1", prompt="Hello", max_tokens=4)
        assert answer.usage.completion_tokens > 0
    finally:
        await openai.close()


async def test_chat_messages_work_on_a_model_without_a_chat_template(client, tmp_path):
    """Clients send chat by default; a base model (no template in its GGUF) answers them as plain text."""
    data = builtin_model_path().read_bytes()
    key = b"tokenizer.chat_template"
    assert data.count(key) == 1
    plain = tmp_path / "no-template.gguf"
    plain.write_bytes(data.replace(key, b"tokenizer.chat_templatX"))  # same length: llama.cpp ignores it
    model = f"file:{plain}"
    one = await run(client, Infer(model=model, messages=(("user", "The capital of France is"),), **TINY))
    assert one[-1].state == "completed" and text_of(one).strip()
    two = await run(client, Infer(model=model, messages=(("user", "Hi"), ("assistant", "Hello!"),
                                                         ("user", "The capital of France is")), **TINY))
    assert two[-1].state == "completed" and two[-1].stats["tokens_out"] > 0
