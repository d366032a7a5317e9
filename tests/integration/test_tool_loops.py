"""Whole tool loops (call -> result -> answer) on every API of the queen, each through its official client
(`openai` for chat completions and the Responses API, `anthropic`, `ollama`) against a real queen, hive,
worker and the built-in model at temperature 0. The first step requires a call (Ollama has no tool_choice:
there, `format` holds the answer to the call's JSON schema); once the result is in, `auto` lets the model
answer in text. The assertions are on the shape of each step, not on what a 135M model knows about the
weather."""

from __future__ import annotations

import json

import anthropic
import ollama
import openai
import pytest

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

MODEL = "smollm2-135m"
ASK = "What is the weather in Paris?"
RESULT = "Sunny, 21 degrees."
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"]}
DESCRIPTION = "The current weather in a city."


def city_of(arguments) -> str:
    given = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert set(given) == {"city"} and isinstance(given["city"], str)  # held to the schema
    return given["city"]


@pytest.fixture
def openai_client(queen):
    return openai.OpenAI(base_url=queen.url + "/v1", api_key=queen.token, max_retries=0, timeout=120)


@pytest.fixture
def anthropic_client(queen):
    return anthropic.Anthropic(base_url=queen.url, api_key=queen.token, max_retries=0, timeout=120)


def test_openai_chat_completions(openai_client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": DESCRIPTION,
                                               "parameters": CITY}}]
    messages = [{"role": "user", "content": ASK}]
    called = openai_client.chat.completions.create(model=MODEL, messages=messages, tools=tools,
                                                   tool_choice="required", max_tokens=48, temperature=0)
    assert called.choices[0].finish_reason == "tool_calls"
    [call] = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and city_of(call.function.arguments)
    messages += [called.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    answer = openai_client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="auto",
                                                   max_tokens=24, temperature=0)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_openai_responses(openai_client):
    tools = [{"type": "function", "name": "get_weather", "description": DESCRIPTION, "parameters": CITY}]
    called = openai_client.responses.create(model=MODEL, input=ASK, tools=tools, tool_choice="required",
                                            max_output_tokens=48, temperature=0)
    [call] = called.output
    assert call.type == "function_call" and call.name == "get_weather" and city_of(call.arguments)
    # streamed, the same step comes as events the SDK puts together into the same output
    with openai_client.responses.stream(model=MODEL, input=ASK, tools=tools, tool_choice="required",
                                        max_output_tokens=48, temperature=0) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert streamed.output[0].arguments == call.arguments
    answer = openai_client.responses.create(
        model=MODEL, previous_response_id=called.id, tools=tools, tool_choice="auto", max_output_tokens=24,
        temperature=0, input=[{"type": "function_call_output", "call_id": call.call_id, "output": RESULT}])
    assert answer.output[0].type == "message" and answer.output_text
    assert answer.usage.input_tokens > called.usage.input_tokens  # it read the call and its result too
    listed = openai_client.responses.input_items.list(answer.id)
    assert [item.type for item in listed.data] == ["function_call_output"]
    assert openai_client.responses.retrieve(answer.id).output_text == answer.output_text
    openai_client.responses.delete(answer.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(answer.id)


def test_anthropic_messages(anthropic_client):
    tools = [{"name": "get_weather", "description": DESCRIPTION, "input_schema": CITY}]
    messages = [{"role": "user", "content": ASK}]
    counted = anthropic_client.messages.count_tokens(model=MODEL, messages=messages, tools=tools,
                                                     tool_choice={"type": "any"})
    called = anthropic_client.messages.create(model=MODEL, messages=messages, tools=tools,
                                              tool_choice={"type": "any"}, max_tokens=48, extra_body={"temperature": 0})
    assert called.stop_reason == "tool_use"
    [use] = called.content
    assert use.type == "tool_use" and use.name == "get_weather" and city_of(use.input)
    assert counted.input_tokens == called.usage.input_tokens + called.usage.cache_read_input_tokens
    with anthropic_client.messages.stream(model=MODEL, messages=messages, tools=tools, tool_choice={"type": "any"},
                                          max_tokens=48, extra_body={"temperature": 0}) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[0].input == use.input
    messages += [{"role": "assistant", "content": [use.model_dump()]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": RESULT}]}]
    answer = anthropic_client.messages.create(model=MODEL, messages=messages, tools=tools, max_tokens=24,
                                              extra_body={"temperature": 0})
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in answer.content] == ["text"] and answer.content[0].text


def test_ollama_chat(queen):
    client = ollama.Client(host=queen.url, headers=queen.auth)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": DESCRIPTION,
                                               "parameters": CITY}}]
    messages = [{"role": "user", "content": ASK}]
    call_schema = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": CITY},
                   "required": ["name", "arguments"]}  # Ollama's way to require a call: its JSON as the format
    called = client.chat(model=MODEL, messages=messages, tools=tools, format=call_schema,
                         options={"temperature": 0, "num_predict": 48})
    [call] = called.message.tool_calls
    assert call.function.name == "get_weather" and city_of(call.function.arguments)
    messages += [called.message.model_dump(exclude_none=True), {"role": "tool", "content": RESULT,
                                                                "tool_name": "get_weather"}]
    answer = client.chat(model=MODEL, messages=messages, tools=tools, options={"temperature": 0, "num_predict": 24})
    assert not answer.message.tool_calls and answer.message.content and answer.done
