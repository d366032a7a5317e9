"""Structured output, tool calls, logprobs and penalties on the queen's OpenAI API, through the official
`openai` client against a real queen, hive, worker and the built-in model."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from shared.events import Error, Token
from shared.job_client import JobClient
from shared.operations import Infer

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

MODEL = "smollm2-135m"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "student": {"type": "boolean"},
    },
    "required": ["name", "age", "student"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                       "required": ["city"]},
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
    },
}


@pytest.fixture
def client(queen):
    return openai.OpenAI(base_url=queen.url + "/v1", api_key=queen.token, max_retries=0, timeout=120)


def chat(client, content: str, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


def test_json_schema_output_follows_the_schema_every_time(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for _ in range(10):  # the default temperature: the grammar, not luck, keeps it valid
        answer = chat(client, "Describe a person as JSON.", response_format=fmt, max_tokens=64)
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)


def test_json_object_output_parses(client):
    answer = chat(client, "List three fruits as JSON.", response_format={"type": "json_object"}, max_tokens=64,
                  temperature=0)
    text = answer.choices[0].message.content
    if answer.choices[0].finish_reason == "stop":  # complete: the grammar guarantees an object
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")
    completion = client.completions.create(model=MODEL, prompt="A JSON object describing a cat:", max_tokens=48,
                                           temperature=0, extra_body={"response_format": {"type": "json_object"}})
    assert completion.choices[0].text.lstrip().startswith("{")


def test_forced_tool_call_has_well_formed_arguments(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, ADD],
                                            tool_choice=choice, max_tokens=48, temperature=0)
    assert answer.choices[0].finish_reason == "tool_calls"
    message = answer.choices[0].message
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])

    # Streamed: the call comes in delta.tool_calls chunks that add up to the same call.
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, ADD],
                                                 tool_choice=choice, max_tokens=48, temperature=0, stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)

    # The call and its result go back in the conversation, and the model answers in text.
    follow = messages + [message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    answer = client.chat.completions.create(model=MODEL, messages=follow, tools=[WEATHER], tool_choice="none",
                                            max_tokens=12, temperature=0)
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None


def test_required_tool_call_picks_a_declared_function(client):
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Add 2 and 3."}], tools=[WEATHER, ADD],
        tool_choice="required", max_tokens=48, temperature=0)
    call = answer.choices[0].message.tool_calls[0]
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
    assert call.function.name in declared
    jsonschema.validate(json.loads(call.function.arguments), declared[call.function.name])


def test_logprobs_have_openai_shape(client):
    answer = chat(client, "What is the capital of France?", logprobs=True, top_logprobs=3, max_tokens=6,
                  temperature=0)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3 and token.bytes == list(token.token.encode())
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs),
                                                                 reverse=True)
        assert token.top_logprobs[0].token == token.token  # greedy: the chosen token is the likeliest

    chunks = list(chat(client, "What is the capital of France?", logprobs=True, top_logprobs=2, max_tokens=6,
                       temperature=0, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(len(t.top_logprobs) == 2 for t in streamed)

    completion = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                           temperature=0, logprobs=2)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == completion.choices[0].text and all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def test_penalties_change_a_repetitive_answer(client):
    prompt = "Repeat after me forever: apple apple apple apple apple apple"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    penalised = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0,
                                          presence_penalty=1.5, frequency_penalty=1.5)
    assert plain.choices[0].text != penalised.choices[0].text
    words = penalised.choices[0].text.split()
    assert words.count("apple") < plain.choices[0].text.split().count("apple") or len(set(words)) > 1


@pytest.mark.parametrize("kwargs, param, says", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
     "response_format", "not a JSON schema"),
    ({"response_format": {"type": "yaml"}}, "response_format", "json_schema"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "'nope'"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "must be"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "name"),
    ({"presence_penalty": 3}, "presence_penalty", "at most 2"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs", "0 to 20"),
    ({"n": 2}, "n", "n=1"),
])
def test_bad_requests_get_openais_error_shape(client, kwargs, param, says):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, "Hi", max_tokens=4, stream=stream, **kwargs)
        error = caught.value.body
        assert caught.value.status_code == 400 and error["param"] == param and says in error["message"]
        assert error["type"] == "invalid_request_error"


def test_auto_tool_choice_answers_text_or_a_well_formed_call(client):
    params = dict(model=MODEL, messages=[{"role": "user", "content": "Say hello to Ada."}], tools=[WEATHER],
                  tool_choice="auto", max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**params)
    message = whole.choices[0].message
    if message.tool_calls:  # the model chose to call: a declared function, with parseable arguments
        assert whole.choices[0].finish_reason == "tool_calls" and message.tool_calls[0].function.name == "get_weather"
        json.loads(message.tool_calls[0].function.arguments)
    else:
        assert message.content and whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(**params, stream=True))
    calls = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert bool(calls) != bool(text)  # one or the other, never both
    assert chunks[-1].choices[0].finish_reason in (("tool_calls",) if calls else ("stop", "length"))


async def test_a_raw_grammar_through_the_job_api(queen):
    """`grammar` (GBNF) is on the infer operation for every client; a bad one fails the job with a 400's
    code naming it, from the worker that parsed it."""
    async with JobClient(queen.url, queen.token) as jobs:
        async def run(grammar: str) -> tuple[str, list[Error]]:
            job = await jobs.submit(Infer(prompt="Is the sky blue? Answer:", grammar=grammar, max_tokens=8))
            events = [e async for e in jobs.stream(job.job_id)]
            return "".join(e.t for e in events if isinstance(e, Token)), [e for e in events if isinstance(e, Error)]

        text, errors = await run('root ::= " yes" | " no"')
        assert text in (" yes", " no") and not errors
        text, errors = await run("root ::= (")
        assert errors and errors[0].code == "INVALID_REQUEST" and "'grammar'" in errors[0].message
