"""Anthropic's Messages API on the queen (queen/api/anthropic.py): requests as operations, messages whole and
streamed, errors with their statuses, through the real route on a scripted generator."""

from __future__ import annotations

import asyncio
import json

import pytest

from queen.api.anthropic import usage_of
from shared.events import JobState
from tests.support.api_app import MODEL, TOKEN, jobs

KEY = {"x-api-key": TOKEN}


def ask(text: str, **extra) -> dict:
    return {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": text}], **extra}


async def sse_events(resp) -> list[tuple[str, dict]]:
    out = []
    for frame in (await resp.text()).split("\n\n"):
        if frame:
            event, data = frame.split("\n")
            out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def test_a_message_becomes_an_infer_operation(client, generator):
    resp = await client.post("/v1/messages", headers=KEY, json={
        "model": MODEL, "max_tokens": 9, "system": [{"type": "text", "text": "be brief"}], "top_k": 5,
        "stop_sequences": ["END"], "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                                 {"role": "assistant", "content": "hello"},
                                                 {"role": "user", "content": "say:x"}]})
    assert resp.status == 200, await resp.text()
    [op] = generator.operations
    assert op.messages == (("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "say:x"))
    assert (op.max_tokens, op.top_k, op.stop, op.temperature) == (9, 5, ("END",), 1.0)  # Anthropic's default


async def test_the_whole_message(client):
    resp = await client.post("/v1/messages", headers=KEY, json=ask("say:Hello. END more", stop_sequences=["END"]))
    body = await resp.json()
    job = jobs(client.app)[0]
    assert body == {"id": "msg_" + job.id.removeprefix("job-").replace("-", ""), "type": "message",
                    "role": "assistant", "model": MODEL, "content": [{"type": "text", "text": "Hello. "}],
                    "stop_reason": "stop_sequence", "stop_sequence": "END",
                    "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                              "output_tokens": 3}}


async def test_the_streamed_message(client):
    resp = await client.post("/v1/messages", headers=KEY, json=ask("say:abcdefgh", max_tokens=2, stream=True))
    events = await sse_events(resp)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["content"] == [] and events[0][1]["message"]["stop_reason"] is None
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "abcdef"
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"input_tokens": 1, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 0, "output_tokens": 2}


async def test_tokens_read_from_a_workers_cache_are_counted_apart_as_anthropic_does():
    result = {"prompt_tokens": 10, "prompt_tokens_reused": 7, "tokens_out": 2}
    assert usage_of(result) == {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7,
                                "output_tokens": 2}  # input + cache read = the whole prompt


@pytest.mark.parametrize("body, status, kind, says", [
    (ask("hi", max_tokens=None), 400, "invalid_request_error", "max_tokens"),
    (ask("hi", temperature=1.5), 400, "invalid_request_error", "temperature"),
    (ask("hi", tools=[{"name": "f"}]), 400, "invalid_request_error", "tools"),
    ({**ask("hi"), "model": "claude-nothing"}, 404, "not_found_error", "claude-nothing"),
    ({**ask("hi"), "model": "missing"}, 404, "not_found_error", "No model"),
    ({**ask("hi"), "model": "too-long"}, 400, "invalid_request_error", "context"),
    ({**ask("hi"), "model": "busy"}, 503, "api_error", "busy"),
    ({**ask("hi"), "model": "bug"}, 500, "api_error", "ValueError"),
])
async def test_errors_have_anthropics_shape_and_the_status_of_their_cause(client, body, status, kind, says):
    resp = await client.post("/v1/messages", headers=KEY, json=body)
    error = await resp.json()
    assert resp.status == status and error["type"] == "error", error
    assert error["error"]["type"] == kind and says in error["error"]["message"]


async def test_the_key_is_required_and_middleware_errors_have_anthropics_shape(client):
    resp = await client.post("/v1/messages", headers={"x-api-key": "wrong"}, json=ask("hi"))
    assert resp.status == 401 and (await resp.json())["error"]["type"] == "authentication_error"
    resp = await client.post("/v1/messages", headers={"Authorization": f"Bearer {TOKEN}"}, json=ask("say:ok"))
    assert resp.status == 200
    resp = await client.post("/v1/messages/count_tokens", headers={"Authorization": f"Bearer {TOKEN}"}, json={})
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found_error"
    resp = await client.post("/v1/messages", headers=KEY, data=b"{not json")
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_a_failure_mid_stream_is_an_error_event(client):
    events = await sse_events(await client.post("/v1/messages", headers=KEY,
                                                json={**ask("say:abcdefghi", stream=True), "model": "crash"}))
    assert [n for n, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error",
                                                        "message": "Worker w1 died mid-generation."}}


async def test_a_client_that_leaves_cancels_its_generation(client, generator):
    resp = await client.post("/v1/messages", headers=KEY, json=ask("tokens=1000 delay=0.02", stream=True,
                                                                   max_tokens=1000))
    await resp.content.readline()
    resp.close()
    job = jobs(client.app)[0]
    await asyncio.wait_for(job.wait(), 5)
    assert job.state is JobState.CANCELLED and generator.cleaned_up == [job.id]
