"""Anthropic's Messages API on the queen (queen/api/anthropic.py): requests as operations, messages whole and
streamed, errors with their statuses, through the real route on a scripted generator."""

from __future__ import annotations

import asyncio

import pytest

from queen.api.anthropic import usage_of
from shared.events import JobState
from tests.support.api_app import MODEL, TOKEN, jobs
from tests.support.api_app import named_sse_events as sse_events

KEY = {"x-api-key": TOKEN}


def ask(text: str, **extra) -> dict:
    return {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": text}], **extra}


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
    resp = await client.post("/v1/messages/batches", headers={"Authorization": f"Bearer {TOKEN}"}, json={})
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


WEATHER = [{"name": "get_weather", "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
           {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


async def test_tools_are_described_to_the_model_and_a_forced_call_is_held_to_its_schema(client, generator):
    resp = await client.post("/v1/messages", headers=KEY, json=ask(
        "say:" + CALL, tools=WEATHER, tool_choice={"type": "tool", "name": "get_weather"}))
    body = await resp.json()
    [op] = generator.operations
    assert op.messages[0][0] == "system" and "get_weather: The weather in a city." in op.messages[0][1]
    assert op.json_schema["properties"]["name"] == {"const": "get_weather"}
    assert op.json_schema["properties"]["arguments"]["required"] == ["city"]
    [use] = body["content"]
    assert body["stop_reason"] == "tool_use" and use["type"] == "tool_use" and use["id"].startswith("toolu_")
    assert (use["name"], use["input"]) == ("get_weather", {"city": "Paris"})


@pytest.mark.parametrize("choice, schema", [(None, False), ({"type": "auto"}, False), ({"type": "any"}, True),
                                            ({"type": "none"}, False)])
async def test_tool_choice_says_whether_a_call_must_come(client, generator, choice, schema):
    extra = {"tools": WEATHER} | ({"tool_choice": choice} if choice else {})
    body = await (await client.post("/v1/messages", headers=KEY, json=ask("say:Sunny.", **extra))).json()
    [op] = generator.operations
    assert (op.json_schema is not None) == schema
    assert ("get_weather" in op.messages[0][1]) == (choice != {"type": "none"})
    assert body["content"] == [{"type": "text", "text": "Sunny."}] and body["stop_reason"] == "end_turn"


async def test_several_calls_and_their_results_on_the_next_turn(client, generator):
    two = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "now", "arguments": {}}]'
    first = await (await client.post("/v1/messages", headers=KEY, json=ask("say:" + two, tools=WEATHER, max_tokens=60))).json()
    uses = first["content"]
    assert [u["name"] for u in uses] == ["get_weather", "now"] and first["stop_reason"] == "tool_use"
    turns = [{"role": "user", "content": "Weather and time?"}, {"role": "assistant", "content": uses},
             {"role": "user", "content": [
                 {"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "Sunny, 21 C"},
                 {"type": "tool_result", "tool_use_id": uses[1]["id"], "is_error": True,
                  "content": [{"type": "text", "text": "clock unavailable"}]},
                 {"type": "text", "text": "say:Sunny in Paris."}]}]
    second = await (await client.post("/v1/messages", headers=KEY, json={
        "model": MODEL, "max_tokens": 20, "tools": WEATHER, "messages": turns})).json()
    assert second["content"] == [{"type": "text", "text": "Sunny in Paris."}]
    chat = generator.operations[1].messages
    assert chat[2] == ("assistant", 'I called get_weather with {"city": "Paris"}, then now with {}.')
    # one user turn (templates that want turns to alternate take it): the results, then the text beside them
    assert chat[3:] == (("user", "Result of get_weather: Sunny, 21 C\nError from now: clock unavailable\n"
                                 "say:Sunny in Paris."),)


async def test_a_streamed_call_is_a_tool_use_block_with_its_input_as_json_deltas(client):
    events = await sse_events(await client.post("/v1/messages", headers=KEY, json=ask(
        "say:" + CALL, tools=WEATHER, tool_choice={"type": "any"}, stream=True)))
    names = [n for n, _ in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    block = events[2][1]["content_block"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
    assert events[3][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}
    assert events[5][1]["delta"]["stop_reason"] == "tool_use"


async def test_streamed_text_with_tools_offered_is_one_text_block(client):
    events = await sse_events(await client.post("/v1/messages", headers=KEY, json=ask(
        "say:It is sunny.", tools=WEATHER, stream=True)))
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"] and names[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "It is sunny."
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


async def test_count_tokens_counts_the_request_as_a_generation_would_read_it(client, generator):
    plain = await client.post("/v1/messages/count_tokens", headers=KEY, json={
        "model": MODEL, "messages": [{"role": "user", "content": "one two three"}]})
    assert plain.status == 200 and await plain.json() == {"input_tokens": 3}
    with_tools = await (await client.post("/v1/messages/count_tokens", headers=KEY, json={
        "model": MODEL, "tools": WEATHER, "messages": [{"role": "user", "content": "one two three"}]})).json()
    assert with_tools["input_tokens"] > 3 + 10  # the tools' description is read too
    assert all(op.count_only for op in generator.operations)
    metrics = await (await client.get("/metrics", headers=KEY)).text()
    assert 'rbee_jobs_total{operation="infer",state="completed"} 2.0' in metrics
    assert "rbee_prompt_tokens_total 0.0" in metrics or "rbee_prompt_tokens_total" not in metrics  # nothing generated


@pytest.mark.parametrize("extra, says", [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"tools": [{"name": "x"}]}, "tools.0.input_schema: Field required"),
    ({"tools": [{"name": "bad name!", "input_schema": {}}]}, "tools: item 0: the function name"),
    ({"tools": WEATHER, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice: names the function 'nope'"),
    ({"tool_choice": {"type": "any"}}, "tools: must be a list"),
    ({"tools": WEATHER, "tool_choice": "auto"}, "tool_choice: must be"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking: extended thinking is not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "messages.0.content.0: image blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}]},
     "names no tool_use block"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "now", "input": {}}]}]},
     "tool_use blocks belong in assistant turns"),
])
async def test_what_rbee_cannot_do_is_refused_in_anthropics_shape(client, extra, says):
    resp = await client.post("/v1/messages", headers=KEY, json=ask("hi", **extra))
    body = await resp.json()
    assert resp.status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert says in body["error"]["message"], body
