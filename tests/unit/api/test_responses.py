"""OpenAI's Responses API on the queen (queen/api/responses.py, queen/responses.py): requests as operations,
responses whole and streamed, stored and continued, function calls and their outputs, what is refused,
through the real routes (and a real SQLite store) on a scripted generator."""

from __future__ import annotations

import json

import pytest

from tests.support.api_app import AUTH, MODEL
from tests.support.api_app import named_sse_events as sse

PATH = "/v1/responses"
WEATHER = [{"type": "function", "name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


async def create(client, status: int = 200, **body) -> dict:
    resp = await client.post(PATH, headers=AUTH, json={"model": MODEL, **body})
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def test_text_in_a_response_out_stored_and_listed(client, generator):
    answer = await create(client, input="say:Bonjour.", instructions="Answer in French.", max_output_tokens=30,
                          temperature=0.2, metadata={"run": "7"})
    [op] = generator.operations
    assert op.messages == (("system", "Answer in French."), ("user", "say:Bonjour."))
    assert (op.max_tokens, op.temperature) == (30, 0.2)
    assert answer["object"] == "response" and answer["id"].startswith("resp_") and answer["status"] == "completed"
    [item] = answer["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["content"][0]["type"] == "output_text"
    assert item["content"][0]["text"] == "Bonjour." and answer["metadata"] == {"run": "7"}
    assert answer["usage"]["input_tokens"] == 1 and answer["usage"]["output_tokens"] == 3  # (a word a token)
    assert answer["usage"]["total_tokens"] == 4 and answer["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    got = await (await client.get(f"{PATH}/{answer['id']}", headers=AUTH)).json()
    assert got == answer
    items = await (await client.get(f"{PATH}/{answer['id']}/input_items", headers=AUTH)).json()
    assert items["object"] == "list" and [i["role"] for i in items["data"]] == ["user"]
    assert items["data"][0]["content"] == [{"type": "input_text", "text": "say:Bonjour."}]


async def test_previous_response_id_goes_on_from_it_without_its_instructions(client, generator):
    first = await create(client, input="say:Paris.", instructions="Be brief.")
    await create(client, input="say:Lyon.", previous_response_id=first["id"], instructions="Be kind.")
    second = generator.operations[1].messages
    assert second == (("system", "Be kind."), ("user", "say:Paris."), ("assistant", "Paris."), ("user", "say:Lyon."))


async def test_a_function_call_then_its_output_then_the_answer(client, generator):
    called = await create(client, input=[{"role": "user", "content": "say:" + CALL}], tools=WEATHER)
    [call] = called["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["call_id"].startswith("call_")
    assert "get_weather: The weather in a city." in generator.operations[0].messages[0][1]  # the tools prompt
    answered = await create(client, tools=WEATHER, previous_response_id=called["id"], input=[
        {"type": "function_call_output", "call_id": call["call_id"], "output": "say:Sunny in Paris."}])
    assert answered["output"][0]["content"][0]["text"] == "Sunny in Paris."
    chat = generator.operations[1].messages
    assert chat[-2:] == (("assistant", 'I called get_weather with {"city": "Paris"}.'),
                         ("user", "Result of get_weather: say:Sunny in Paris."))
    # the same loop without storing: the client sends the whole history as items
    whole = await create(client, tools=WEATHER, store=False, input=[
        {"role": "user", "content": "weather?"}, call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "say:Sunny."}])
    assert whole["output"][0]["content"][0]["text"] == "Sunny." and whole["store"] is False
    resp = await client.get(f"{PATH}/{whole['id']}", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "response_not_found"


async def test_a_required_call_is_held_to_the_functions_schema(client, generator):
    answer = await create(client, input="say:" + CALL, tools=WEATHER, tool_choice={"type": "function",
                                                                                    "name": "get_weather"})
    assert generator.operations[0].json_schema["properties"]["name"] == {"const": "get_weather"}
    assert answer["output"][0]["type"] == "function_call"


async def test_text_format_json_schema_constrains_the_answer(client, generator):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await create(client, input='say:{"a": 1}', text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert generator.operations[0].json_schema == schema


async def test_max_output_tokens_makes_it_incomplete(client):
    answer = await create(client, input="say:abcdefghijkl", max_output_tokens=2)
    assert answer["status"] == "incomplete" and answer["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_delete_forgets_it(client):
    answer = await create(client, input="say:x")
    resp = await client.delete(f"{PATH}/{answer['id']}", headers=AUTH)
    assert await resp.json() == {"id": answer["id"], "object": "response", "deleted": True}
    assert (await client.get(f"{PATH}/{answer['id']}", headers=AUTH)).status == 404
    refused = await create(client, 400, input="say:y", previous_response_id=answer["id"])
    assert refused["error"]["param"] == "previous_response_id" and "not found" in refused["error"]["message"]


async def test_the_streamed_text_is_the_documented_event_sequence(client):
    events = await sse(await client.post(PATH, headers=AUTH, json={"model": MODEL, "input": "say:Hello you",
                                                                    "stream": True}))
    names = [n for n, _ in events]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                     "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert all(d["type"] == n for n, d in events)
    assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == "Hello you"
    done = events[-1][1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "Hello you"
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["id"] == done["id"]


async def test_a_streamed_call_is_a_function_call_item_with_argument_deltas(client):
    events = await sse(await client.post(PATH, headers=AUTH, json={"model": MODEL, "input": "say:" + CALL,
                                                                    "tools": WEATHER, "stream": True}))
    names = [n for n, _ in events]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    added, done = events[2][1]["item"], events[5][1]["item"]
    assert (added["type"], added["name"], added["arguments"]) == ("function_call", "get_weather", "")
    assert json.loads(events[4][1]["arguments"]) == {"city": "Paris"} and done["status"] == "completed"


async def test_a_failure_mid_stream_is_response_failed(client):
    events = await sse(await client.post(PATH, headers=AUTH, json={"model": "crash", "input": "say:abcdefghi",
                                                                    "stream": True}))
    assert events[-1][0] == "response.failed"
    assert events[-1][1]["response"]["error"]["message"] == "Worker w1 died mid-generation."


@pytest.mark.parametrize("body, param, says", [
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]", "rbee runs no hosted tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]", "input_image, which rbee cannot read"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "input[0].call_id",
     "names no function_call"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "not an input item rbee reads"),
    ({"input": "hi", "background": True}, "background", "not supported"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format", "must be"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", "at least 1"),
    ({"input": ""}, "input", "must not be empty"),
    ({"input": "hi", "previous_response_id": "resp_nothing"}, "previous_response_id", "not found"),
    ({"input": "hi", "tools": WEATHER, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice",
     "names the function 'nope'"),
])
async def test_what_rbee_cannot_do_is_refused_naming_the_param(client, body, param, says):
    refused = await create(client, 400, **body)
    assert refused["error"]["param"] == param and says in refused["error"]["message"], refused
    assert refused["error"]["type"] == "invalid_request_error"


async def test_a_key_sees_only_its_own_responses(client):
    resp = await client.post("/v1/keys", headers=AUTH, json={"name": "agent"})
    secret = (await resp.json())["secret"]
    mine = await create(client, input="say:mine")
    theirs = await (await client.post(PATH, headers={"Authorization": f"Bearer {secret}"},
                                      json={"model": MODEL, "input": "say:theirs"})).json()
    key = {"Authorization": f"Bearer {secret}"}
    assert (await client.get(f"{PATH}/{theirs['id']}", headers=key)).status == 200
    assert (await client.get(f"{PATH}/{mine['id']}", headers=key)).status == 404
    resp = await client.post(PATH, headers=key, json={"model": MODEL, "input": "x", "previous_response_id": mine["id"]})
    assert resp.status == 400
    assert (await client.get(f"{PATH}/{theirs['id']}", headers=AUTH)).status == 200  # the queen's token sees all


async def test_no_max_output_tokens_means_until_the_answer_or_the_context_ends(client, generator):
    await create(client, input="say:x")
    op = generator.operations[0]
    assert op.fill_context is True and op.max_tokens >= 1 << 20


async def test_the_outputs_of_parallel_calls_are_one_user_turn(client, generator):
    two = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    called = await create(client, input="say:" + two, tools=WEATHER)
    a, b = called["output"]
    await create(client, tools=WEATHER, previous_response_id=called["id"], input=[
        {"type": "function_call_output", "call_id": a["call_id"], "output": "sunny"},
        {"type": "function_call_output", "call_id": b["call_id"], "output": "say:snow"}])
    assert generator.operations[1].messages[-2:] == (
        ("assistant", 'I called get_weather with {"city": "Paris"}, then get_weather with {"city": "Oslo"}.'),
        ("user", "Result of get_weather: sunny\nResult of get_weather: say:snow"))


async def test_an_answer_cut_by_max_output_tokens_streams_response_incomplete(client):
    events = await sse(await client.post(PATH, headers=AUTH, json={"model": MODEL, "input": "say:abcdefghijkl",
                                                                    "max_output_tokens": 2, "stream": True}))
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("body, param", [
    ({"input": [{"type": "function_call_output", "call_id": ["x"], "output": "1"}]}, "input[0].call_id"),
    ({"input": "hi", "store": "false"}, "store"),
    ({"input": "hi", "parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"input": "hi", "metadata": {"a": 1}}, "metadata"),
])
async def test_wrong_types_are_refused_not_crashed_on(client, body, param):
    refused = await create(client, 400, **body)
    assert refused["error"]["param"] == param
