"""Ollama's API on the queen (queen/api/ollama.py): chat and generate as operations, NDJSON answers whole and
streamed, tool calls, embeddings, errors with their statuses, through the real routes on a scripted generator."""

from __future__ import annotations

import asyncio
import json

import pytest

from shared.events import JobState
from shared.operations import Embed
from tests.support.api_app import AUTH, MODEL, jobs

WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def chat(text: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


async def lines_of(resp) -> list[dict]:
    return [json.loads(line) for line in (await resp.text()).splitlines()]


async def test_the_streamed_chat(client, generator):
    resp = await client.post("/api/chat", headers=AUTH, json=chat("say:abcdefg", options={"num_predict": 5,
                                                                                         "temperature": 0.1}))
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    *pieces, last = await lines_of(resp)
    assert (generator.operations[0].max_tokens, generator.operations[0].temperature) == (5, 0.1)
    assert [p["message"] for p in pieces] == [{"role": "assistant", "content": t} for t in ("abc", "def", "g")]
    assert all(p["model"] == MODEL and p["done"] is False and p["created_at"].endswith("Z") for p in pieces)
    assert last["done"] is True and last["done_reason"] == "stop" and last["message"]["content"] == ""
    assert (last["eval_count"], last["prompt_eval_count"], last["load_duration"]) == (3, 1, 0)
    assert last["total_duration"] > 0 and last["eval_duration"] == 30_000_000  # 3 tokens at 100/s


async def test_the_whole_generate_with_logprobs(client, generator):
    resp = await client.post("/api/generate", headers=AUTH, json={"model": MODEL, "prompt": "say:abcd",
                                                                  "system": "terse", "stream": False,
                                                                  "logprobs": True, "top_logprobs": 1})
    body = await resp.json()
    assert generator.operations[0].messages == (("system", "terse"), ("user", "say:abcd"))
    assert body["response"] == "abcd" and body["done"] is True and body["eval_count"] == 2
    assert body["logprobs"] == [{"token": t, "logprob": -0.5, "top_logprobs": [{"token": t, "logprob": -0.5}]}
                                for t in ("abc", "d")]


async def test_an_empty_request_loads_the_model(client, generator):
    body = await (await client.post("/api/generate", headers=AUTH, json={"model": MODEL})).json()
    assert body["done"] is True and body["done_reason"] == "load" and body["response"] == ""
    assert generator.operations == []


async def test_tool_calls_whole_and_streamed(client):
    said = 'say:{"name": "get_weather", "arguments": {"city": "Paris"}}'
    whole = await (await client.post("/api/chat", headers=AUTH, json=chat(said, tools=WEATHER, stream=False))).json()
    assert whole["message"] == {"role": "assistant", "content": "",
                                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    *pieces, last = await lines_of(await client.post("/api/chat", headers=AUTH, json=chat(said, tools=WEATHER)))
    assert [p["message"] for p in pieces] == [whole["message"]] and last["done"] is True
    *pieces, _ = await lines_of(await client.post("/api/chat", headers=AUTH, json=chat("say:Sunny.", tools=WEATHER)))
    assert "".join(p["message"]["content"] for p in pieces) == "Sunny." and "tool_calls" not in pieces[0]["message"]


@pytest.mark.parametrize("path, body, status, says", [
    ("/api/chat", chat("hi", options={"temperature": 500}), 400, "options.temperature"),
    ("/api/chat", chat("hi", images=["x"]), 400, "images"),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "format": "yaml"}, 400, "format"),
    ("/api/chat", {**chat("hi"), "model": "missing"}, 404, "model 'missing' not found"),
    ("/api/chat", {**chat("hi"), "model": "missing", "stream": False}, 404, "not found"),
    ("/api/chat", {**chat("hi"), "model": "too-long"}, 400, "context"),
    ("/api/chat", {**chat("hi"), "model": "busy"}, 503, "busy"),
    ("/api/chat", {**chat("hi"), "model": "bug", "stream": False}, 500, "ValueError"),
    ("/api/embed", {"model": MODEL, "input": []}, 400, "'input'"),
    ("/api/embed", {"model": "missing", "input": "x"}, 404, "not found"),
    ("/api/pull", {"model": "llama3.2"}, 400, "hf:"),
    ("/api/create", {"model": "x"}, 501, "Modelfile"),
    ("/api/nothing-here", {}, 404, "No such endpoint"),
])
async def test_errors_have_ollamas_shape_and_the_status_of_their_cause(client, path, body, status, says):
    resp = await client.post(path, headers=AUTH, json=body)
    error = await resp.json()
    assert resp.status == status and set(error) == {"error"} and says in error["error"], error


async def test_bad_json_and_no_token_have_ollamas_shape(client):
    resp = await client.post("/api/chat", headers=AUTH, data=b"{not json")
    assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    resp = await client.get("/api/version")
    assert resp.status == 401 and "token" in (await resp.json())["error"]


async def test_a_failure_mid_stream_is_an_error_line(client):
    *_, last = await lines_of(await client.post("/api/chat", headers=AUTH, json={**chat("say:abcdefghi"),
                                                                                "model": "crash"}))
    assert last == {"error": "Worker w1 died mid-generation."}


async def test_embeddings_new_and_old(client, generator):
    body = await (await client.post("/api/embed", headers=AUTH, json={"model": MODEL, "input": ["a", "b c"]})).json()
    assert generator.operations == [Embed(model=MODEL, input=("a", "b c"))]
    assert body["model"] == MODEL and body["embeddings"] == [[0.6, 0.8, 0.0]] * 2 and body["prompt_eval_count"] == 3
    body = await (await client.post("/api/embeddings", headers=AUTH, json={"model": MODEL, "prompt": "a"})).json()
    assert body == {"embedding": [0.6, 0.8, 0.0]}


async def test_a_client_that_leaves_cancels_its_generation(client, generator):
    resp = await client.post("/api/chat", headers=AUTH, json=chat("tokens=1000 delay=0.02"))
    await resp.content.readline()
    resp.close()
    job = jobs(client.app)[0]
    await asyncio.wait_for(job.wait(), 5)
    assert job.state is JobState.CANCELLED and generator.cleaned_up == [job.id]
