"""Function calling for models whose chat template may know nothing of tools: the tools are described
in a system message, a call is a JSON object {"name": ..., "arguments": {...}}, and when a call is
required the worker's grammar (a JSON schema) makes the model write exactly that. Pure functions, so
every API on the queen (OpenAI, Ollama) can share them; `ToolCallHoldBack` is the one place a stream
holds back text that may turn out to be a call.
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
from typing import Any

from shared.errors import InvalidRequest
from shared.events import Token
from shared.inference import MAX_SCHEMA_CHARS, schema_for_grammar

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("none", "auto", "required")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI's `tools` list, validated: [{"type": "function", "function": {name, description?, parameters?}}].
    Raises InvalidRequest with `field` "tools" naming what is wrong."""
    def bad(problem: str) -> InvalidRequest:
        return InvalidRequest(f"'tools' {problem}.", field="tools", problem=problem)

    if not isinstance(tools, list) or not tools:
        raise bad("must be a non-empty list of {type: function, function: {name, parameters}}")
    names = set()
    out = []
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise bad(f"item {k} must be an object {{\"type\": \"function\", \"function\": {{...}}}}")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise bad(f"item {k}: the function name must be 1-64 letters, digits, '_' or '-'")
        if name in names:
            raise bad(f"name the function '{name}' twice")
        names.add(name)
        parameters = fn.get("parameters", EMPTY_PARAMETERS)
        if not isinstance(parameters, dict):
            raise bad(f"item {k}: 'parameters' of '{name}' must be a JSON schema object")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise bad(f"item {k}: 'description' of '{name}' must be a string")
        out.append({"name": name, "description": description or "", "parameters": parameters})
    return out


def check_tool_choice(tool_choice: Any, tools: list[dict[str, Any]]) -> str:
    """"none" | "auto" | "required" | the name of the one function that must be called."""
    if tool_choice is None:
        return "auto" if tools else "none"
    if isinstance(tool_choice, str) and tool_choice in CHOICES:
        if tool_choice != "none" and not tools:
            raise InvalidRequest(f"'tool_choice' \"{tool_choice}\" needs 'tools'.", field="tool_choice",
                                 problem="needs 'tools'")
        return tool_choice
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" \
            and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        known = [t["name"] for t in tools]
        if name not in known:
            problem = (f"names the function {name!r}, which is not in 'tools' ({', '.join(known) or 'none given'})")
            raise InvalidRequest(f"'tool_choice' {problem}.", field="tool_choice", problem=problem)
        return name
    problem = ('must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}, not '
               f"{json.dumps(tool_choice)[:80]}")
    raise InvalidRequest(f"'tool_choice' {problem}.", field="tool_choice", problem=problem)


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    parameters = dict(tool["parameters"])
    if parameters.get("type", "object") == "object":
        parameters.setdefault("type", "object")
        # The grammar would let a small model ramble on in properties nobody asked for.
        parameters.setdefault("additionalProperties", False)
    return {"type": "object", "properties": {"name": {"const": tool["name"]}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_call_schema(tools: list[dict[str, Any]], tool_choice: str) -> dict[str, Any] | None:
    """The JSON schema the answer must follow: one call of the forced function, or of any of them when a
    call is required; None when the model may answer in text ("auto", "none")."""
    if tool_choice in ("none", "auto"):
        return None
    chosen = [t for t in tools if tool_choice == "required" or t["name"] == tool_choice]
    if len(chosen) == 1:
        return _call_schema(chosen[0])
    return {"anyOf": [_call_schema(t) for t in chosen]}


def calls_as_text(calls: list[dict[str, Any]]) -> str:
    """A past turn's calls ({"name", "arguments"}) as the model reads them again, on every API: said in words
    ("I called get_weather with {...}."), not as the JSON it wrote. A small model imitates the turns before
    it: shown its own JSON call, it writes the same call again after the result, a loop with no answer
    (the built-in model did, every time, at temperature 0); shown the call in words, it answers."""
    said = ", then ".join(f"{c['name']} with {json.dumps(c['arguments'], ensure_ascii=False)}" for c in calls)
    return f"I called {said}."


def add_system(messages: list[Any], text: str) -> None:
    """Append `text` to the conversation's system message, or start one with it."""
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str):
        messages[0] = {"role": "system", "content": f"{first['content']}\n\n{text}"}
    else:
        messages.insert(0, {"role": "system", "content": text})


def tools_prompt(tools: list[dict[str, Any]], tool_choice: str, *, several: bool = True) -> str:
    """The system message that tells the model its tools, and how to call one (`several`: or more at once)."""
    lines = ["You can call these functions:"]
    for tool in tools:
        lines.append(f"- {tool['name']}: {tool['description'] or '(no description)'} "
                     f"Arguments (JSON schema): {json.dumps(tool['parameters'])}")
    how = ('To call a function, answer with only a JSON object: {"name": <function name>, "arguments": '
           '{<argument>: <value>}}' + ("; to call several at once, a JSON list of such objects." if several else "."))
    if tool_choice == "required":
        how = "Call one of them now. " + how
    elif tool_choice not in ("auto", "none"):
        how = f"Call {tool_choice} now. " + how
    else:
        how += " Otherwise answer the user in plain text."
    return "\n".join(lines) + "\n" + how


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The calls in an answer that is one JSON object {"name", "arguments"} naming a declared function, or
    a list of them (in a ``` fence or <tool_call> tags too), in OpenAI's shape; None if the answer is text."""
    body = text.strip()
    for start, end in (("```json", "```"), ("```", "```"), ("<tool_call>", "</tool_call>")):
        if body.startswith(start) and body.endswith(end) and len(body) >= len(start) + len(end):
            body = body[len(start):len(body) - len(end)].strip()
            break
    if not body.startswith(("{", "[")):
        return None
    try:
        found = json.loads(body)
    except (ValueError, RecursionError):
        return None
    given = found if isinstance(found, list) else [found]
    calls = [_call(call, {t["name"] for t in tools}) for call in given]
    if not calls or None in calls:
        return None
    return calls  # type: ignore[return-value]


def _call(call: Any, names: set[str]) -> dict[str, Any] | None:
    """One {"name", "arguments"} object as an OpenAI tool call; None when it is not a call of a declared one."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or call["name"] not in names:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return {"id": "call_" + secrets.token_hex(12), "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}}


def may_be_tool_call(text: str) -> bool:
    """Whether an answer that begins so could still turn out to be a call (a stream holds it back); a
    "[" only while a "{" may follow it (a list of calls), not "[1]" or "[link](...)"."""
    body = text.lstrip()
    if body.startswith("["):
        rest = body[1:].lstrip()
        return not rest or rest.startswith("{")
    return any(body.startswith(p) or p.startswith(body) for p in ("{", "```", "<tool_call>"))


class ToolCallHoldBack:
    """A streamed answer that may yet be a tool call is held back until it clearly is not (then it goes
    out as one token, its log-probabilities kept) or the answer ends (then it is parsed: a call, or text).
    Without tools every token passes straight through."""

    def __init__(self, tools: list[dict[str, Any]] | None) -> None:
        self.tools = tools or []
        self.holding = bool(self.tools)
        self._held: list[Token] = []

    def feed(self, token: Token) -> Token | None:
        """What to send now for `token` (None: held back)."""
        if not self.holding:
            return token
        self._held.append(token)
        return None if may_be_tool_call("".join(t.t for t in self._held)) else self.release()

    def release(self) -> Token | None:
        """The held text as one token (None when nothing is held); nothing is held back after it."""
        self.holding = False
        held, self._held = self._held, []
        if not held:
            return None
        logprobs = [p for t in held for p in t.logprobs or ()]
        return Token(t="".join(t.t for t in held), i=held[0].i,
                     logprobs=logprobs if any(t.logprobs is not None for t in held) else None)

    def finish(self) -> tuple[Token | None, list[dict[str, Any]] | None]:
        """At the answer's end: the held text to send, or the calls it is (in OpenAI's shape)."""
        if self.holding and self._held:
            calls = parse_tool_calls("".join(t.t for t in self._held), self.tools)
            if calls:
                self.holding, self._held = False, []
                return None, calls
        return self.release(), None


def check_json_schema(schema: Any, field: str) -> None:
    """Refuse, before any worker sees it, a schema the grammar converter cannot follow. The converter is
    llama-cpp-python's pure-Python module, loaded alone: the package itself would load llama.cpp."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"'{field}' must be a JSON schema object.", field=field, problem="must be an object")
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        problem = f"must be at most {MAX_SCHEMA_CHARS} characters as JSON"
        raise InvalidRequest(f"'{field}' {problem}.", field=field, problem=problem)
    convert = _converter().json_schema_to_gbnf
    try:
        convert(json.dumps(schema_for_grammar(schema)))
    except Exception as exc:  # it asserts on what it does not know
        problem = f"is not a JSON schema rbee can follow ({exc or type(exc).__name__})"
        raise InvalidRequest(f"'{field}' {problem}.", field=field, problem=problem) from None


_grammar_module: Any = None


def _converter() -> Any:
    global _grammar_module
    if _grammar_module is None:
        package = importlib.util.find_spec("llama_cpp")
        if package is None or not package.submodule_search_locations:
            raise RuntimeError("llama-cpp-python is not installed")
        path = f"{list(package.submodule_search_locations)[0]}/llama_grammar.py"
        spec = importlib.util.spec_from_file_location("rbee_llama_grammar", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        _grammar_module = module
    return _grammar_module
