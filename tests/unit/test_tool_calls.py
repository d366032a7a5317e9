"""queen/api/tool_calls.py: checking tools, the schema a required call must follow, finding a call in text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from queen.api.tool_calls import (
    check_json_schema,
    check_tool_choice,
    check_tools,
    may_be_tool_call,
    parse_tool_calls,
    tool_call_schema,
)
from shared.errors import InvalidRequest
from shared.inference import schema_for_grammar

TOOLS = check_tools([
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "now"}},
])


def test_a_forced_call_is_one_object_naming_the_function():
    schema = tool_call_schema(TOOLS, "get_weather")
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"]["required"] == ["city"]
    assert schema["properties"]["arguments"]["additionalProperties"] is False
    assert [s["properties"]["name"]["const"] for s in tool_call_schema(TOOLS, "required")["anyOf"]] == \
        ["get_weather", "now"]
    assert tool_call_schema(TOOLS, "auto") is None and tool_call_schema(TOOLS, "none") is None
    check_json_schema(tool_call_schema(TOOLS, "required"), "tools")  # the grammar converter takes it


def test_tool_choice_is_checked_against_the_tools():
    assert check_tool_choice(None, TOOLS) == "auto" and check_tool_choice(None, []) == "none"
    assert check_tool_choice({"type": "function", "function": {"name": "now"}}, TOOLS) == "now"
    with pytest.raises(InvalidRequest, match="'nope', which is not in 'tools'"):
        check_tool_choice({"type": "function", "function": {"name": "nope"}}, TOOLS)
    with pytest.raises(InvalidRequest, match="must be"):
        check_tool_choice("sometimes", TOOLS)
    with pytest.raises(InvalidRequest, match="needs 'tools'"):
        check_tool_choice("required", [])


@pytest.mark.parametrize("tools", [[], "x", [{"type": "function", "function": {"name": "a b"}}],
                                   [{"type": "retrieval"}],
                                   [{"type": "function", "function": {"name": "a", "parameters": []}}]])
def test_bad_tools_are_refused(tools):
    with pytest.raises(InvalidRequest) as caught:
        check_tools(tools)
    assert caught.value.field == "tools"


@pytest.mark.parametrize("text", ['{"name": "get_weather", "arguments": {"city": "Paris"}}',
                                  '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
                                  '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}'
                                  '</tool_call>'])
def test_a_call_is_found_in_the_answer(text):
    [call] = parse_tool_calls(text, TOOLS)
    assert call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_several_calls_are_a_list_of_them():
    calls = parse_tool_calls('[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                             '{"name": "now", "arguments": {}}]', TOOLS)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "now"]
    assert len({c["id"] for c in calls}) == 2 and may_be_tool_call(" [")


@pytest.mark.parametrize("text", ["Paris is sunny.", '{"name": "unknown", "arguments": {}}', '{"name": "now"',
                                  '{"name": "now", "arguments": 3}', "[]", '[{"name": "now"}, "x"]', "[1, 2]"])
def test_text_is_not_a_call(text):
    assert parse_tool_calls(text, TOOLS) is None


def test_a_stream_holds_back_only_what_may_become_a_call():
    assert may_be_tool_call("") and may_be_tool_call("  {") and may_be_tool_call("``") and may_be_tool_call("<tool")
    assert not may_be_tool_call("Sure") and not may_be_tool_call("<b>")


@pytest.mark.usefixtures("slow")  # runs a process
def test_a_schema_the_grammar_cannot_follow_is_refused_without_loading_llama_cpp():
    with pytest.raises(InvalidRequest, match="not a JSON schema") as caught:
        check_json_schema({"type": "foo"}, "response_format")
    assert caught.value.field == "response_format"
    code = ("import sys; from queen.api.tool_calls import check_json_schema; check_json_schema({}, 'x'); "
            "print('llama_cpp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the queen reads the converter alone, never loads llama.cpp


def test_integer_ranges_become_enums_the_grammar_can_enforce():
    schema = {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 3},
        "n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
        "big": {"type": "integer", "minimum": 0, "maximum": 10**6},
        "choice": {"enum": [{"type": "integer", "minimum": 0, "maximum": 1}]}}}
    out = schema_for_grammar(schema)["properties"]
    assert out["age"] == {"enum": [0, 1, 2, 3]} and out["n"] == {"enum": [1, 2]}
    assert out["big"] == schema["properties"]["big"] and out["choice"] == schema["properties"]["choice"]


def test_json_that_only_looks_like_a_call_is_text():
    assert parse_tool_calls('{"name": {"first": "Ada"}, "age": 36}', TOOLS) is None  # a name that is no string
    assert parse_tool_calls('[{"name": ["now"]}]', TOOLS) is None
    assert not may_be_tool_call("[1] The first point") and not may_be_tool_call("[link](x)")
    assert may_be_tool_call("[") and may_be_tool_call("[ {")
