"""Anthropic's Messages API on the queen, so Claude-API clients (and agents built on them) can use your hives:

    POST /v1/messages                chat in the model's own template, streamed (Anthropic's SSE events) or not
    POST /v1/messages/count_tokens   the request's input tokens, in the model's tokenizer and template

Each request runs as an ordinary `infer` job through the same scheduler as the OpenAI layer. The token
comes in `x-api-key` (what Anthropic's clients send) or as `Authorization: Bearer`; errors come in
Anthropic's shape. Tools work as on the OpenAI layer (queen/api/tool_calls.py): `tools` and `tool_choice`
in, `tool_use` blocks out (their input held to the tool's schema when a call is required), `tool_result`
blocks read on the next turn. Images, documents and extended thinking are refused with a clear message.
This module converts a request into that job (`to_infer`) and renders the job in Anthropic's shapes
(`AnthropicRenderer`); queen/api/common.py does the rest.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

from aiohttp import web

from queen.access.middleware import submit_job
from queen.api.common import CLIENT_LEFT, ApiError, Failure, api_route, check_model, read_body, stream, wait_for_answer
from queen.api.tool_calls import (
    add_system,
    calls_as_text,
    check_tool_choice,
    check_tools,
    parse_tool_calls,
    tool_call_schema,
    tools_prompt,
)
from shared.errors import InvalidRequest
from shared.events import End, Error, Token
from shared.job_registry import Job
from shared.models import BUILTIN_MODEL
from shared.operations import Infer
from shared.wire import parse_message

PATH = "/v1/messages"
DEFAULT_TEMPERATURE = 1.0  # Anthropic's default (rbee's own is llama.cpp's 0.8)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}


def error_response(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    """An error in Anthropic's shape: its `type` from the status."""
    return web.json_response({"type": "error", "error": {"type": _error_type(status), "message": message}},
                             status=status)


def _error_type(status: int) -> str:
    """(a job cancelled while its client waits, 499, is the server's doing: api_error)"""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < CLIENT_LEFT else "api_error")


def matches(path: str) -> bool:
    return path == PATH or path.startswith(PATH + "/")  # count_tokens, batches: not served, but in this shape


def setup_anthropic_api(app: web.Application) -> None:
    app.router.add_post(PATH, api_route(error_response, messages))
    app.router.add_post(PATH + "/count_tokens", api_route(error_response, count_tokens))


@dataclass
class Tools:
    """The request's tools in OpenAI's shape (what tool_calls.py takes) and its choice among them."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    choice: str = "none"  # "none" | "auto" | "required" | a tool's name
    one_at_a_time: bool = False  # tool_choice's disable_parallel_tool_use

    @property
    def calls(self) -> bool:
        return self.choice != "none"


async def _check_model(request: web.Request, model: str) -> None:
    try:
        await check_model(request.app, model)
    except ApiError:
        raise ApiError(f"model: '{model}' does not exist on any running hive (GET /v1/models lists "
                       f"them; '{BUILTIN_MODEL}' is built in).", status=404, code="MODEL_NOT_FOUND") from None


async def messages(request: web.Request) -> web.StreamResponse:
    operation, streamed, tools = to_infer(await read_body(request))
    await _check_model(request, operation.model)
    job = submit_job(request, operation)
    renderer = AnthropicRenderer(job, operation, tools)
    if streamed:
        return await stream(request, job, renderer, tools.tools if tools.calls else None)
    failure, _ = await wait_for_answer(request, job)
    if failure is not None:
        return renderer.failure(failure)
    return renderer.whole(job.result or {})


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """The input tokens the same request to /v1/messages would have: its chat (tools described as a
    generation reads them) tokenized by a worker of its model, nothing generated."""
    operation, _, _ = to_infer(await read_body(request), count=True)
    await _check_model(request, operation.model)
    job = submit_job(request, operation)
    failure, _ = await wait_for_answer(request, job)
    if failure is not None:
        return error_response(failure.status, failure.code, failure.message)
    return web.json_response({"input_tokens": (job.result or {}).get("prompt_tokens") or 0})


_REFUSED_BLOCKS = {"image": "images", "document": "documents", "thinking": "thinking blocks",
                   "redacted_thinking": "thinking blocks", "search_result": "search results"}


def _refuse_block(kind: Any, where: str) -> ApiError:
    what = _REFUSED_BLOCKS.get(kind) if isinstance(kind, str) else None
    if what is not None:
        return ApiError(f"{where}: {kind} blocks are not supported: rbee's models read text, so {what} cannot be "
                        "sent; send text, tool_use and tool_result blocks.")
    return ApiError(f"{where}: unknown content block type {json.dumps(kind)}; rbee reads text, tool_use and "
                    "tool_result blocks.")


def _text(content: Any, where: str) -> str:
    """A string, or a list of text blocks joined (rbee's models take text only)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(f"{where}: must be a string or a list of content blocks.")
    parts = []
    for k, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text" or not isinstance(block.get("text"), str):
            raise _refuse_block(kind, f"{where}.{k}")
        parts.append(block["text"])
    return "".join(parts)


def _turn(message: dict[str, Any], where: str, names: dict[str, str]) -> list[dict[str, str]]:
    """One Messages turn as rbee's chat messages: its text, its tool_use blocks in words (calls_as_text),
    and its tool_result blocks as one user message naming each tool."""
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise ApiError(f"{where}.content: must be a string or a list of content blocks.")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[str] = []
    for k, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        at = f"{where}.content.{k}"
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "tool_use" and role == "assistant":
            name, given = block.get("name"), block.get("input", {})
            if not isinstance(name, str) or not isinstance(given, dict):
                raise ApiError(f"{at}: a tool_use block needs a 'name' and an 'input' object.")
            names[str(block.get("id"))] = name
            calls.append({"name": name, "arguments": given})
        elif kind == "tool_result" and role == "user":
            name = names.get(str(block.get("tool_use_id")))
            if name is None:
                raise ApiError(f"{at}.tool_use_id: {json.dumps(block.get('tool_use_id'))} names no tool_use block of "
                               "an earlier assistant turn.")
            given = block.get("content", "")
            result = given if isinstance(given, str) else _text(given, f"{at}.content")
            results.append(f"{'Error from' if block.get('is_error') else 'Result of'} {name}: {result}")
        elif kind in ("tool_use", "tool_result"):
            raise ApiError(f"{at}: {kind} blocks belong in {'assistant' if kind == 'tool_use' else 'user'} turns.")
        else:
            raise _refuse_block(kind, at)
    if calls:
        said = calls_as_text(calls)
        text.append(said if not text else "\n" + said)
    if results:  # one user turn: the results, then what the user said beside them
        return [{"role": "user", "content": "\n".join(results + (["".join(text)] if text else []))}]
    return [{"role": role, "content": "".join(text)}]


def _tools(body: dict[str, Any]) -> Tools:
    """Anthropic's `tools` and `tool_choice`, checked as the OpenAI layer checks its own."""
    given, choice = body.get("tools"), body.get("tool_choice")
    if given is None and choice is None:
        return Tools()
    if not isinstance(given, list):
        raise ApiError("tools: must be a list of {name, description, input_schema}.")
    converted = []
    for k, tool in enumerate(given):
        if not isinstance(tool, dict):
            raise ApiError(f"tools.{k}: must be an object {{name, description, input_schema}}.")
        kind = tool.get("type") or "custom"
        if kind != "custom":
            raise ApiError(f"tools.{k}: tool type '{kind}' is one of Anthropic's server tools, which rbee does not "
                           "run; describe your own tool with name, description and input_schema.")
        function = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        if function["parameters"] is None:
            raise ApiError(f"tools.{k}.input_schema: Field required (a JSON schema of the tool's input).")
        converted.append({"type": "function", "function": function})
    try:
        tools = check_tools(converted) if converted else []
    except InvalidRequest as exc:
        raise ApiError(f"tools: {exc.problem}.") from None
    one_at_a_time = False
    if choice is None:
        openai_choice: Any = "auto" if tools else "none"
    elif isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool", "none"):
        one_at_a_time = bool(choice.get("disable_parallel_tool_use"))
        openai_choice = {"auto": "auto", "any": "required", "none": "none"}.get(choice["type"]) or \
            {"type": "function", "function": {"name": choice.get("name")}}
    else:
        raise ApiError('tool_choice: must be {"type": "auto"}, {"type": "any"}, {"type": "tool", "name": ...} or '
                       '{"type": "none"}.')
    try:
        checked = check_tool_choice(openai_choice, tools)
    except InvalidRequest as exc:
        raise ApiError(f"tool_choice: {exc.problem}.".replace("'tools'", "tools")) from None
    return Tools(tools, checked, one_at_a_time)


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ApiError(f"{name}: must be {kind} from {low:g} to {high:g} (got {value!r}).")
    return value


def to_infer(body: Any, *, count: bool = False) -> tuple[Infer, bool, Tools]:
    """The `infer` operation a Messages request asks for (with `count`: the one that only counts its
    input tokens), whether to stream it, and its tools."""
    if not isinstance(body, dict):
        raise ApiError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(f"model: Field required (a model id from GET /v1/models, e.g. '{BUILTIN_MODEL}').")
    if body.get("max_tokens") is None and not count:
        raise ApiError("max_tokens: Field required.")
    max_tokens = 1 if count else _number(body, "max_tokens", 1, 1 << 20, integer=True)
    thinking = body.get("thinking")
    if thinking and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise ApiError("thinking: extended thinking is not supported by rbee's models; leave it out or send "
                       '{"type": "disabled"}.')
    tools = _tools(body)
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        raise ApiError("messages: must be a non-empty list of {role, content}.")
    chat = []
    system = body.get("system")
    if system is not None:
        text = _text(system, "system")
        if text:
            chat.append({"role": "system", "content": text})
    names: dict[str, str] = {}  # tool_use id -> the tool's name
    for k, m in enumerate(given):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ApiError(f"messages.{k}.role: must be 'user' or 'assistant' (the system prompt goes in "
                                 "'system').")
        chat.extend(_turn(m, f"messages.{k}", names))
    if tools.calls:  # the template may not know tools: they are described in a system message
        add_system(chat, tools_prompt(tools.tools, tools.choice, several=not tools.one_at_a_time))
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError("stop_sequences: must be a list of non-empty strings.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError("stream: must be true or false.")
    fields: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens,
                              "temperature": _number(body, "temperature", 0, 1) if "temperature" in body
                              else DEFAULT_TEMPERATURE,
                              "top_p": _number(body, "top_p", 0, 1),
                              "top_k": _number(body, "top_k", 0, 1 << 20, integer=True),
                              "stop": stops or None,
                              "json_schema": tool_call_schema(tools.tools, tools.choice) if tools.calls else None,
                              "count_only": count or None}
    try:
        operation = parse_message(Infer, {k: v for k, v in fields.items() if v is not None})
    except InvalidRequest as exc:
        raise ApiError(f"{exc.field}: {exc.problem}." if exc.field and exc.problem else exc.message) from None
    return operation, stream, tools


def stop_of(result: Mapping[str, Any], operation: Infer, called: bool = False) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for a generation's result (`called`: it is tool calls)."""
    if called:
        return "tool_use", None
    if result.get("stop_reason") == "length":
        return "max_tokens", None
    matched = result.get("stop_sequence")  # the stop string that ended it, when the worker says so
    if matched and operation.stop and matched in operation.stop:
        return "stop_sequence", matched
    return "end_turn", None


def message(message_id: str, model: str, content: list[dict[str, Any]], stop: tuple[str | None, str | None],
            usage: dict[str, int]) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop[0], "stop_sequence": stop[1], "usage": usage}


def tool_uses(calls: list[dict[str, Any]], tools: Tools) -> list[dict[str, Any]]:
    """Tool calls (as parse_tool_calls finds them) as Anthropic's tool_use blocks."""
    if tools.one_at_a_time:
        calls = calls[:1]
    return [{"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": call["function"]["name"],
             "input": json.loads(call["function"]["arguments"])} for call in calls]


def usage_of(result: dict[str, Any]) -> dict[str, int]:
    """Anthropic's usage: the prompt's tokens read from a worker's KV cache apart from those computed
    (their sum is the prompt), as its prompt caching reports them."""
    prompt, cached = result.get("prompt_tokens") or 0, result.get("prompt_tokens_reused") or 0
    return {"input_tokens": prompt - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "output_tokens": result.get("tokens_out") or 0}


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n"


class AnthropicRenderer:
    """One request's answer as a Messages `message`, or as Anthropic's stream: message_start,
    content_block_start, ping, content_block_delta…, content_block_stop, message_delta, message_stop
    (input_tokens, known only at the end, come in message_delta). With tools, the text block starts with
    the first text (an answer that is calls has none): then a block per call, its input in one
    input_json_delta."""

    content_type = "text/event-stream"
    headers_at_once = True

    def __init__(self, job: Job, operation: Infer, tools: Tools | None = None) -> None:
        self.id = "msg_" + job.id.removeprefix("job-").replace("-", "")
        self.operation = operation
        self.tools = tools or Tools()
        self.blocks = 0  # content blocks begun
        self.open = False  # the text block is begun and not stopped

    def _text_block(self) -> str:
        if self.open:
            return ""
        self.open, self.blocks = True, self.blocks + 1
        return sse("content_block_start", {"index": self.blocks - 1, "content_block": {"type": "text", "text": ""}})

    def start(self) -> str:
        begun = sse("message_start", {"message": message(self.id, self.operation.model, [], (None, None), usage_of({}))})
        if self.tools.calls:
            return begun + sse("ping", {})
        return begun + self._text_block() + sse("ping", {})

    def token(self, token: Token) -> str:
        return self._text_block() + sse("content_block_delta", {"index": self.blocks - 1,
                                                                "delta": {"type": "text_delta", "text": token.t}})

    def error(self, error: Error) -> str:
        return ""  # said once the job ends

    def end(self, end: End, calls: list[dict[str, Any]] | None) -> str:
        result = end.stats
        out = []
        if not calls:
            out.append(self._text_block())  # (an empty answer still has its text block)
        if self.open:
            out.append(sse("content_block_stop", {"index": self.blocks - 1}))
            self.open = False
        for use in tool_uses(calls or [], self.tools):
            index, self.blocks = self.blocks, self.blocks + 1
            out += [sse("content_block_start", {"index": index, "content_block": {**use, "input": {}}}),
                    sse("content_block_delta", {"index": index, "delta": {
                        "type": "input_json_delta", "partial_json": json.dumps(use["input"], ensure_ascii=False)}}),
                    sse("content_block_stop", {"index": index})]
        reason, sequence = stop_of(result, self.operation, bool(calls))
        return "".join(out) + (sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
                                                     "usage": usage_of(result)})
                               + sse("message_stop", {}))

    def failed(self, failure: Failure) -> str:
        body = {"type": "error", "error": {"type": _error_type(failure.status), "message": failure.message}}
        return f"event: error\ndata: {json.dumps(body)}\n\n"

    def close(self) -> str:
        return ""

    def failure(self, failure: Failure) -> web.Response:
        return error_response(failure.status, failure.code, failure.message)

    def whole(self, result: dict[str, Any]) -> web.Response:
        text = result.get("text", "")
        calls = parse_tool_calls(text, self.tools.tools) if self.tools.calls else None
        content = tool_uses(calls, self.tools) if calls else [{"type": "text", "text": text}]
        return web.json_response(message(self.id, self.operation.model, content,
                                         stop_of(result, self.operation, bool(calls)), usage_of(result)))
