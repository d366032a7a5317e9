"""OpenAI's API on the queen (queen/api/openai.py, openai_embeddings.py): requests as operations, answers
whole and streamed, tool calls, errors with their statuses, through the real routes on a scripted generator."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import pytest

from shared.events import JobState
from shared.operations import Embed, Infer
from tests.support.api_app import AUTH, MODEL, jobs

CHAT = "/v1/chat/completions"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


async def events_of(resp) -> list:
    """The `data:` payloads of an SSE answer, decoded ([DONE] as is)."""
    text = await resp.text()
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in text.split("\n\n") if line]


async def test_a_chat_request_becomes_an_infer_operation(client, generator):
    resp = await client.post(CHAT, headers=AUTH, json={
        "model": MODEL, "max_completion_tokens": 50, "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["\n"],
        "presence_penalty": 0.5, "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 2,
        "messages": [{"role": "developer", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "say:"}, {"type": "text", "text": "{}"}]}]})
    assert resp.status == 200, await resp.text()
    [op] = generator.operations
    assert isinstance(op, Infer) and op.model == MODEL
    assert op.messages == (("system", "be brief"), ("user", "say:{}"))
    assert (op.max_tokens, op.temperature, op.top_p, op.seed, op.stop) == (50, 0.3, 0.9, 7, ("\n",))
    assert (op.presence_penalty, op.json_schema, op.logprobs) == (0.5, {"type": "object"}, 2)


async def test_tool_calls_and_results_become_text_the_model_reads(client, generator):
    await client.post(CHAT, headers=AUTH, json={"model": MODEL, "tools": WEATHER, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]})
    [op] = generator.operations
    assert [role for role, _ in op.messages] == ["system", "user", "assistant", "user"]
    assert "get_weather" in op.messages[0][1] and op.json_schema is None  # auto: the model may answer in text
    assert op.messages[2][1] == 'I called get_weather with {"city": "Paris"}.'  # in words: see calls_as_text
    assert op.messages[3][1] == "Result of get_weather: sunny"


async def test_the_whole_chat_answer(client):
    resp = await client.post(CHAT, headers=AUTH, json={"model": MODEL, "messages": [
        {"role": "user", "content": "say:Hello, world."}]})
    body = await resp.json()
    job = jobs(client.app)[0]
    assert body["id"] == "chatcmpl-" + job.id.removeprefix("job-") and body["object"] == "chat.completion"
    assert body["model"] == MODEL and body["created"] == int(job.created_at)
    assert body["choices"] == [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                "message": {"role": "assistant", "content": "Hello, world."}}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    resp = await client.post(CHAT, headers=AUTH, json={"model": MODEL, "messages": [
        {"role": "user", "content": "say:Hi. cached=2 three four"}]})
    assert (await resp.json())["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}  # of 4


async def test_the_streamed_chat_answer(client):
    resp = await client.post(CHAT, headers=AUTH, json={"model": MODEL, "stream": True, "max_tokens": 3,
                                                       "stream_options": {"include_usage": True},
                                                       "messages": [{"role": "user", "content": "say:abcdefghijkl"}]})
    assert resp.headers["Content-Type"] == "text/event-stream"
    *chunks, usage, done = await events_of(resp)
    assert done == "[DONE]" and usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-") for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "abcdefghi"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}


async def test_completions_with_logprobs_streamed_and_whole(client):
    body = {"model": MODEL, "prompt": "say:abcdef", "logprobs": 1}
    whole = await (await client.post("/v1/completions", headers=AUTH, json=body)).json()
    choice = whole["choices"][0]
    assert whole["object"] == "text_completion" and choice["text"] == "abcdef"
    assert choice["logprobs"]["tokens"] == ["abc", "def"] and choice["logprobs"]["text_offset"] == [0, 3]
    streamed = await events_of(await client.post("/v1/completions", headers=AUTH, json={**body, "stream": True}))
    offsets = [c["choices"][0]["logprobs"]["text_offset"] for c in streamed[:-2]]
    assert offsets == [[0], [3]] and streamed[-2]["choices"][0]["finish_reason"] == "stop"


async def test_a_required_tool_call_whole_and_streamed(client, generator):
    said = 'say:{"name": "get_weather", "arguments": {"city": "Paris"}}'
    body = {"model": MODEL, "tools": WEATHER, "tool_choice": "required", "messages": [{"role": "user", "content": said}]}
    whole = await (await client.post(CHAT, headers=AUTH, json=body)).json()
    assert generator.operations[0].json_schema["properties"]["name"] == {"const": "get_weather"}
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'} and call["id"].startswith("call_")
    chunks = await events_of(await client.post(CHAT, headers=AUTH, json={**body, "stream": True}))
    deltas = [d for c in chunks[:-1] for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""} and deltas[0]["id"].startswith("call_")
    assert deltas[1]["function"]["arguments"] == '{"city": "Paris"}'
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks[:-1])  # held back, never shown as text
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1] == "[DONE]"


async def test_several_calls_in_one_answer_whole_and_streamed(client):
    said = 'say:[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]'
    body = {"model": MODEL, "tools": WEATHER, "messages": [{"role": "user", "content": said}]}
    whole = await (await client.post(CHAT, headers=AUTH, json=body)).json()
    calls = whole["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "Rome"]
    chunks = await events_of(await client.post(CHAT, headers=AUTH, json={**body, "stream": True}))
    deltas = [d for c in chunks[:-1] for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [d["index"] for d in deltas] == [0, 0, 1, 1] and deltas[2]["id"].startswith("call_")
    assert json.loads(deltas[3]["function"]["arguments"]) == {"city": "Rome"}


async def test_text_that_is_no_call_is_released(client):
    body = {"model": MODEL, "tools": WEATHER, "stream": True, "messages": [{"role": "user", "content": "say:{ not json"}]}
    chunks = await events_of(await client.post(CHAT, headers=AUTH, json=body))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "{ not json"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    body["messages"] = [{"role": "user", "content": "say:It is sunny."}]
    chunks = await events_of(await client.post(CHAT, headers=AUTH, json=body))
    texts = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert texts[0] == "It " and "".join(texts) == "It is sunny."  # plain text is not held back


@pytest.mark.parametrize("body, status, param, code", [
    ({"model": MODEL, "messages": [], "n": 1}, 400, "messages", "invalid_request_error"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", "invalid_request_error"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature",
     "invalid_request_error"),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "model_not_found"),
    ({"model": "too-long", "messages": [{"role": "user", "content": "hi"}]}, 400, None, "prompt_too_long"),
    ({"model": "missing", "messages": [{"role": "user", "content": "hi"}]}, 404, None, "model_not_found"),
    ({"model": "busy", "messages": [{"role": "user", "content": "hi"}]}, 503, None, "queue_full"),
    ({"model": "crash", "messages": [{"role": "user", "content": "hi"}]}, 502, None, "worker_crashed"),
    ({"model": "bug", "messages": [{"role": "user", "content": "hi"}]}, 500, None, "internal"),
])
async def test_errors_have_openais_shape_and_the_status_of_their_cause(client, body, status, param, code):
    resp = await client.post(CHAT, headers=AUTH, json=body)
    error = (await resp.json())["error"]
    assert resp.status == status, error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert (error["param"], error["code"]) == (param, code) and error["message"]


async def test_middleware_errors_have_openais_shape(client):
    resp = await client.post(CHAT, json={})
    assert resp.status == 401 and (await resp.json())["error"]["type"] == "authentication_error"
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    resp = await client.post(CHAT, headers=AUTH, data=b"{not json")
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]["message"]
    resp = await client.get(CHAT, headers=AUTH)
    assert resp.status == 405 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_a_failure_mid_stream_is_an_error_chunk(client):
    body = {"model": "crash", "stream": True, "messages": [{"role": "user", "content": "say:abcdefghi"}]}
    chunks = await events_of(await client.post(CHAT, headers=AUTH, json=body))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2]) == "abcdef"
    assert chunks[-2] == {"error": {"message": "Worker w1 died mid-generation.", "type": "server_error",
                                    "param": None, "code": "worker_crashed"}}
    assert chunks[-1] == "[DONE]"


async def test_a_client_that_leaves_cancels_its_generation(client, generator):
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "tokens=1000 delay=0.02"}]}
    resp = await client.post(CHAT, headers=AUTH, json=body)
    await resp.content.readline()
    resp.close()
    job = jobs(client.app)[0]
    await asyncio.wait_for(job.wait(), 5)
    assert job.state is JobState.CANCELLED and generator.cleaned_up == [job.id]


async def test_a_client_that_leaves_a_whole_answer_cancels_it(client, generator):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "tokens=1000 delay=0.02"}]}
    with pytest.raises(asyncio.TimeoutError):
        await client.post(CHAT, headers=AUTH, json=body, timeout=0.3)
    job = jobs(client.app)[0]
    await asyncio.wait_for(job.wait(), 5)
    assert job.state is JobState.CANCELLED


async def test_models_are_listed(client):
    body = await (await client.get("/v1/models", headers=AUTH)).json()
    assert body["object"] == "list" and MODEL in [m["id"] for m in body["data"]]
    assert body["data"][0] == {"id": body["data"][0]["id"], "object": "model", "created": 0, "owned_by": "rbee"}


async def test_embeddings_as_floats_and_base64(client, generator):
    body = await (await client.post("/v1/embeddings", headers=AUTH, json={"model": MODEL, "input": ["a b", "c"]})).json()
    assert generator.operations == [Embed(model=MODEL, input=("a b", "c"))]
    assert body == {"object": "list", "model": MODEL, "usage": {"prompt_tokens": 3, "total_tokens": 3},
                    "data": [{"object": "embedding", "index": i, "embedding": [0.6, 0.8, 0.0]} for i in range(2)]}
    body = await (await client.post("/v1/embeddings", headers=AUTH, json={
        "model": MODEL, "input": "a", "encoding_format": "base64", "dimensions": 3})).json()
    assert struct.unpack("<3f", base64.b64decode(body["data"][0]["embedding"])) == pytest.approx((0.6, 0.8, 0.0))


@pytest.mark.parametrize("body, status, param", [
    ({"model": MODEL, "input": ""}, 400, "input"),
    ({"model": MODEL, "input": [[1, 2]]}, 400, "input"),
    ({"model": MODEL, "input": "a", "dimensions": 100}, 400, "dimensions"),
    ({"model": MODEL, "input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "no-such-model", "input": "a"}, 404, "model"),
    ({"model": "busy", "input": "a"}, 503, None),
])
async def test_embedding_errors(client, body, status, param):
    resp = await client.post("/v1/embeddings", headers=AUTH, json=body)
    error = (await resp.json())["error"]
    assert resp.status == status and error["param"] == param, error


def test_a_job_cancelled_while_its_client_waits_is_the_servers_doing_in_both_shapes():
    import json

    from queen.api import anthropic, openai
    from queen.api.common import CLIENT_LEFT

    ours = json.loads(openai.error_response(CLIENT_LEFT, "CANCELLED", "cancelled").text)["error"]
    assert (ours["type"], ours["code"]) == ("server_error", "cancelled")
    theirs = json.loads(anthropic.error_response(CLIENT_LEFT, "CANCELLED", "cancelled").text)["error"]
    assert theirs["type"] == "api_error"
    bad = json.loads(openai.error_response(400, "INVALID_REQUEST", "no").text)["error"]
    assert (bad["type"], bad["code"]) == ("invalid_request_error", "invalid_request_error")
