"""How an Ollama request becomes an `infer` operation (queen/api/ollama.py), without daemons."""

from __future__ import annotations

import pytest

from queen.api.ollama import OllamaError, model_name, to_infer
from shared.inference import MAX_TOKENS_LIMIT, SAMPLING_DEFAULTS


def test_options_map_to_rbees_fields():
    op = to_infer({"model": "smollm2-135m:latest", "prompt": "hi", "raw": True,
                   "options": {"temperature": 0.2, "top_p": 0.5, "top_k": 7, "seed": 3, "num_predict": 9,
                               "stop": "\n", "presence_penalty": 0.5, "frequency_penalty": -0.5, "num_ctx": 4096}},
                  chat=False)
    assert (op.model, op.prompt, op.messages) == ("smollm2-135m", "hi", None)
    assert (op.temperature, op.top_p, op.top_k, op.seed, op.max_tokens) == (0.2, 0.5, 7, 3, 9)
    assert op.stop == ("\n",) and (op.presence_penalty, op.frequency_penalty) == (0.5, -0.5)


def test_ollamas_special_values():
    op = to_infer({"model": "m", "prompt": "hi", "options": {"num_predict": -1, "seed": -1}}, chat=False)
    assert op.fill_context is True and op.max_tokens == MAX_TOKENS_LIMIT and op.seed is None  # until the context ends
    assert to_infer({"model": "m", "prompt": "hi", "options": {"num_predict": -2}}, chat=False).fill_context is True
    op = to_infer({"model": "m", "prompt": "hi"}, chat=False)
    assert op.max_tokens == SAMPLING_DEFAULTS["max_tokens"] and op.fill_context is None  # left out: rbee's default


def test_generate_goes_through_the_chat_template_unless_raw():
    op = to_infer({"model": "m", "prompt": "hi", "system": "be brief"}, chat=False)
    assert op.prompt is None and op.messages == (("system", "be brief"), ("user", "hi"))


def test_format_becomes_a_json_schema():
    assert to_infer({"model": "m", "prompt": "hi", "format": "json"}, chat=False).json_schema == {}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert to_infer({"model": "m", "prompt": "hi", "format": schema}, chat=False).json_schema == schema
    with pytest.raises(OllamaError, match="format"):
        to_infer({"model": "m", "prompt": "hi", "format": "yaml"}, chat=False)


def test_tool_calls_and_results_are_text_the_model_reads():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    op = to_infer({"model": "m", "tools": tools, "messages": [
        {"role": "user", "content": "call f"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "tool_name": "f", "content": "42"}]}, chat=True)
    roles = [role for role, _ in op.messages]
    assert roles == ["system", "user", "assistant", "user"] and "f:" in op.messages[0][1]
    assert op.messages[2][1] == 'I called f with {"x": 1}.' and op.messages[3][1] == "Result of f: 42"


def test_what_rbee_cannot_do_is_refused_by_name():
    for extra, word in (({"images": ["x"]}, "images"), ({"suffix": "x"}, "suffix"), ({"think": True}, "think"),
                        ({"context": [1, 2]}, "context"), ({"options": {"temperature": "hot"}}, "options.temperature")):
        with pytest.raises(OllamaError, match=word):
            to_infer({"model": "m", "prompt": "hi", **extra}, chat=False)
    with pytest.raises(OllamaError, match="'model' is required"):
        model_name({"prompt": "hi"})
