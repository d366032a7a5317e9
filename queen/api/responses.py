"""OpenAI's Responses API on the queen, for the agents and SDKs built on it (Codex CLI, the Agents SDK):

    POST   /v1/responses                       answer `input`, streamed (the documented events) or not
    GET    /v1/responses/{id}                  a stored response
    DELETE /v1/responses/{id}                  forget it
    GET    /v1/responses/{id}/input_items      the input items it was given

Each request runs as an ordinary `infer` job through the same scheduler as the other APIs; function tools
work as on chat completions (queen/api/tool_calls.py). A response is stored unless `store` is false
(queen/responses.py), and `previous_response_id` goes on from one: its conversation, answer included, is
read before the new input (its `instructions` are not carried over, as OpenAI does). Hosted tools, images
and files are refused with a clear message; `reasoning`, `include`, `truncation` and `metadata` are taken
(`metadata` is kept with the response) and change nothing. This module converts a request into that job
(`to_infer`) and renders it (`ResponsesRenderer`); queen/api/common.py does the rest.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from queen.access.middleware import submit_job
from queen.api.common import ApiError, Failure, api_route, check_model, read_body, stream, wait_for_answer
from queen.api.openai import error_response
from queen.api.tool_calls import (
    add_system,
    calls_as_text,
    check_json_schema,
    check_tool_choice,
    check_tools,
    parse_tool_calls,
    tool_call_schema,
    tools_prompt,
)
from queen.appkeys import RESPONSES
from queen.responses import ResponseNotFound, StoredResponse
from shared.appkeys import REQUEST_OWNER, visible_owner
from shared.errors import InvalidRequest
from shared.events import End, Error, Token
from shared.inference import MAX_TOKENS_LIMIT
from shared.job_registry import Job
from shared.operations import Infer
from shared.wire import parse_message

PATH = "/v1/responses"
MAX_TEMPERATURE = 2.0
_TEXT_PARTS = ("input_text", "output_text", "text")


def matches(path: str) -> bool:
    return path == PATH or path.startswith(PATH + "/")


def setup_responses_api(app: web.Application) -> None:
    app.router.add_post(PATH, api_route(error_response, create))
    app.router.add_get(PATH + "/{id}", api_route(error_response, retrieve))
    app.router.add_delete(PATH + "/{id}", api_route(error_response, delete))
    app.router.add_get(PATH + "/{id}/input_items", api_route(error_response, input_items))


# --- the request ---------------------------------------------------------------------------------------


@dataclass
class Request:
    """What the answer's shape and its storing need beyond the `infer` operation."""

    body: dict[str, Any]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "none"
    input: list[dict[str, Any]] = field(default_factory=list)  # the input items, with ids (input_items lists them)
    chat: list[tuple[str, str]] = field(default_factory=list)  # the conversation before the answer, no instructions
    names: dict[str, str] = field(default_factory=dict)  # call_id -> function name
    previous: str | None = None

    @property
    def calls(self) -> bool:
        return self.tool_choice != "none"

    @property
    def one_call(self) -> bool:
        """parallel_tool_calls: false (at most one call kept)."""
        return self.body.get("parallel_tool_calls") is False

    def kept(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return calls[:1] if self.one_call else calls


def _bad(message: str, param: str) -> ApiError:
    return ApiError(message, field=param)


def _text_of(content: Any, where: str) -> str:
    """A message's content: a string, or its text parts joined; anything else refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be a string or a list of input_text parts.", where)
    parts = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise _bad(f"'{where}[{k}]' is {kind}, which rbee cannot read: its models read text. Send input_text.",
                       f"{where}[{k}]")
        else:
            raise _bad(f"'{where}[{k}]' must be an input_text part (got {json.dumps(kind)}).", f"{where}[{k}]")
    return "".join(parts)


def _items(given: Any, names: dict[str, str]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """`input` as items (each with an id) and as rbee's chat: function calls in words (calls_as_text, one
    message for several in a row), their outputs user messages naming them."""
    if isinstance(given, str):
        if not given:
            raise _bad("'input' must not be empty.", "input")
        return [_message_item("user", given)], [("user", given)]
    if not isinstance(given, list) or not given:
        raise _bad("'input' must be a string or a non-empty list of items (messages, function_call, "
                   "function_call_output).", "input")
    items: list[dict[str, Any]] = []
    chat: list[tuple[str, str]] = []
    calls: list[dict[str, Any]] = []

    def flush_calls() -> None:
        if calls:
            chat.append(("assistant", calls_as_text(calls)))
            calls.clear()

    for k, item in enumerate(given):
        where = f"input[{k}]"
        if not isinstance(item, dict):
            raise _bad(f"'{where}' must be an object.", where)
        kind = item.get("type", "message")
        if kind == "function_call":
            name, arguments, call_id = item.get("name"), item.get("arguments", "{}"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(arguments, str) or not isinstance(call_id, str):
                raise _bad(f"'{where}': a function_call needs 'call_id', 'name' and 'arguments' (a JSON string).",
                           where)
            try:
                parsed = json.loads(arguments or "{}")
            except (ValueError, RecursionError):
                raise _bad(f"'{where}.arguments' is not JSON.", f"{where}.arguments") from None
            names[call_id] = name
            calls.append({"name": name, "arguments": parsed})
            items.append({"type": "function_call", "id": item.get("id") or "fc_" + secrets.token_hex(12),
                          "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"})
            continue
        flush_calls()
        if kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or call_id not in names:
                raise _bad(f"'{where}.call_id' {json.dumps(call_id)} names no function_call before it (in this "
                           "input or the previous response's).", f"{where}.call_id")
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            chat.append(("user", f"Result of {names[call_id]}: {text}"))
            items.append({"type": "function_call_output", "id": item.get("id") or "fco_" + secrets.token_hex(12),
                          "call_id": call_id, "output": text, "status": "completed"})
        elif kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"'{where}.role' must be user, assistant, system or developer.", f"{where}.role")
            text = _text_of(item.get("content"), f"{where}.content")
            chat.append(("system" if role == "developer" else role, text))
            items.append(_message_item(role, text))
        elif kind == "reasoning":
            continue  # another model's reasoning: nothing rbee's models read
        else:
            raise _bad(f"'{where}.type' {json.dumps(kind)} is not an input item rbee reads (message, function_call, "
                       "function_call_output).", f"{where}.type")
    flush_calls()
    return items, _one_turn_each(chat)


def _one_turn_each(chat: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Messages of the same role in a row joined into one (the outputs of parallel calls, a message and the
    calls after it): some chat templates refuse two user or two assistant turns in a row."""
    out: list[tuple[str, str]] = []
    for role, content in chat:
        if out and out[-1][0] == role and role in ("user", "assistant"):
            out[-1] = (role, f"{out[-1][1]}\n{content}")
        else:
            out.append((role, content))
    return out


def _message_item(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "id": "msg_" + secrets.token_hex(12), "role": role, "status": "completed",
            "content": [{"type": kind, "text": text}]}


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    given, choice = body.get("tools"), body.get("tool_choice")
    converted = []
    if given is not None:
        if not isinstance(given, list):
            raise _bad("'tools' must be a list of function tools.", "tools")
        for k, tool in enumerate(given):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise _bad(f"'tools[{k}]' is a {json.dumps(kind)} tool: rbee runs no hosted tools (web search, file "
                           "search, computer use, code interpreter, MCP); declare your own as type function.",
                           f"tools[{k}]")
            function = {k2: tool[k2] for k2 in ("name", "description", "parameters") if tool.get(k2) is not None}
            converted.append({"type": "function", "function": function})
    tools = check_tools(converted) if converted else []
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise _bad('\'tool_choice\' must be "none", "auto", "required" or {"type": "function", "name": ...}.',
                       "tool_choice")
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return tools, check_tool_choice(choice, tools)


def _format(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema `text.format` asks for (None: plain text)."""
    text = body.get("text")
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = fmt.get("schema", {"type": "object"})
        check_json_schema(schema, "text.format.schema")
        return schema
    raise _bad('\'text.format\' must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
               '"name", "schema"}.', "text.format")


async def to_infer(request: web.Request, body: dict[str, Any]) -> tuple[Infer, bool, Request]:
    """The `infer` operation a request asks for, whether to stream it, and what its answer needs."""
    try:
        return await _to_infer(request, body)
    except ApiError:
        raise
    except InvalidRequest as exc:
        message = f"'{exc.field}' {exc.problem}." if exc.field and exc.problem else exc.message
        raise ApiError(message, field=exc.field) from None


async def _to_infer(request: web.Request, body: dict[str, Any]) -> tuple[Infer, bool, Request]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required (a model id from GET /v1/models).", "model")
    for refused, why in (("background", "answers come while you wait (or stream)"),
                         ("conversation", "send previous_response_id to go on from a response"),
                         ("prompt", "send the prompt's text as input")):
        if body.get(refused) not in (None, False):
            raise _bad(f"'{refused}' is not supported by rbee's Responses API: {why}.", refused)
    wanted = Request(body)
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise _bad("'previous_response_id' must be a string.", "previous_response_id")
        try:
            stored = await request.app[RESPONSES].get(previous, owner=visible_owner(request))
        except ResponseNotFound as exc:
            raise ApiError(f"Previous response with id '{previous}' not found. {exc.message}",
                           field="previous_response_id", code="PREVIOUS_RESPONSE_NOT_FOUND") from None
        wanted.previous, wanted.chat, wanted.names = previous, list(stored.chat), dict(stored.names)
    wanted.input, said = _items(body.get("input"), wanted.names)
    wanted.chat += said
    wanted.tools, wanted.tool_choice = _tools(body)
    messages = [{"role": role, "content": content} for role, content in wanted.chat]
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string.", "instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    fields: dict[str, Any] = {"model": model, "messages": messages}
    if wanted.calls:  # the template may not know tools: they are described in a system message
        add_system(messages, tools_prompt(wanted.tools, wanted.tool_choice,
                                          several=not wanted.one_call))
        fields["json_schema"] = tool_call_schema(wanted.tools, wanted.tool_choice)
    schema = _format(body)
    if schema is not None:
        if fields.get("json_schema") is not None:
            raise _bad("A required tool call is JSON already: send 'text.format' or a required 'tool_choice', not "
                       "both.", "text.format")
        fields["json_schema"] = schema
    for name, given in (("max_tokens", "max_output_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(given) is not None:
            fields[name] = body[given]
    if "max_tokens" not in fields:  # OpenAI sets no limit (agents send none): until the answer or the context ends
        fields.update(max_tokens=MAX_TOKENS_LIMIT, fill_context=True)
    for flag in ("store", "parallel_tool_calls"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            raise _bad(f"'{flag}' must be true or false.", flag)
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise _bad("'metadata' must be an object of strings.", "metadata")
    if isinstance(fields.get("temperature"), (int, float)) and fields["temperature"] > MAX_TEMPERATURE:
        raise _bad("'temperature' must be between 0 and 2.", "temperature")
    streamed = body.get("stream", False)
    if not isinstance(streamed, bool):
        raise _bad("'stream' must be true or false.", "stream")
    if fields.get("json_schema") is None:
        fields.pop("json_schema", None)
    try:
        operation = parse_message(Infer, fields)
    except InvalidRequest as exc:
        field_name = {"max_tokens": "max_output_tokens"}.get(exc.field or "", exc.field)
        raise ApiError(f"'{field_name}' {exc.problem}." if exc.field and exc.problem else exc.message,
                       field=field_name) from None
    return operation, streamed, wanted


# --- the routes ----------------------------------------------------------------------------------------


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    operation, streamed, wanted = await to_infer(request, body)
    await check_model(request.app, operation.model)
    job = submit_job(request, operation)
    renderer = ResponsesRenderer(job, operation, wanted, request)
    if streamed:
        return await stream(request, job, renderer, wanted.tools if wanted.calls else None)
    failure, _ = await wait_for_answer(request, job)
    if failure is not None:
        return renderer.failure(failure)
    result = job.result or {}
    return web.json_response(renderer.finish(result, renderer.calls_in(result)))


async def retrieve(request: web.Request) -> web.StreamResponse:
    stored = await request.app[RESPONSES].get(request.match_info["id"], owner=visible_owner(request))
    return web.json_response(stored.response)


async def delete(request: web.Request) -> web.StreamResponse:
    await request.app[RESPONSES].delete(request.match_info["id"], owner=visible_owner(request))
    return web.json_response({"id": request.match_info["id"], "object": "response", "deleted": True})


async def input_items(request: web.Request) -> web.StreamResponse:
    stored = await request.app[RESPONSES].get(request.match_info["id"], owner=visible_owner(request))
    items = list(stored.input)
    if request.query.get("order", "desc") == "desc":  # OpenAI's default: the newest first
        items.reverse()
    return web.json_response({"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                              "last_id": items[-1]["id"] if items else None, "has_more": False})


# --- the answer ----------------------------------------------------------------------------------------


def usage_of(result: dict[str, Any]) -> dict[str, Any]:
    prompt, out = result.get("prompt_tokens") or 0, result.get("tokens_out") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": result.get("prompt_tokens_reused") or 0},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + out}


class ResponsesRenderer:
    """One request's answer as a `response` object, or as the Responses stream: response.created,
    response.in_progress, then for the text output_item.added, content_part.added, output_text.delta…,
    output_text.done, content_part.done, output_item.done, and for each function call output_item.added,
    function_call_arguments.delta, function_call_arguments.done, output_item.done; response.completed.
    Every event carries its sequence_number. A finished response is stored (unless `store` is false)."""

    content_type = "text/event-stream"
    headers_at_once = True

    def __init__(self, job: Job, operation: Infer, wanted: Request, request: web.Request) -> None:
        self.id = "resp_" + job.id.removeprefix("job-").replace("-", "")
        self.operation, self.wanted, self.request = operation, wanted, request
        self.created = time.time()
        self.sequence = 0
        self.message_id = "msg_" + secrets.token_hex(12)
        self.text: list[str] | None = None  # the text streamed so far, once its item began

    # -- the object ------------------------------------------------------------------------------------

    def response(self, status: str, output: list[dict[str, Any]], result: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
        body, incomplete = self.wanted.body, None
        if result is not None and result.get("stop_reason") == "length" and status == "completed":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        return {
            "id": self.id, "object": "response", "created_at": int(self.created), "status": status,
            "completed_at": int(time.time()) if result is not None else None, "error": None,
            "incomplete_details": incomplete, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": self.operation.model, "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": self.wanted.previous, "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True) is not False, "temperature": self.operation.temperature,
            "text": {"format": fmt or {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_p": self.operation.top_p, "truncation": "disabled",
            "usage": usage_of(result) if result is not None else None, "user": None,
            "metadata": body.get("metadata") or {},
        }

    def calls_in(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        """The calls an answer is (as parse_tool_calls finds them); [] when it is text."""
        calls = (parse_tool_calls(result.get("text", ""), self.wanted.tools) if self.wanted.calls else None) or []
        return self.wanted.kept(calls)

    def _message(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    @staticmethod
    def _call_item(call: dict[str, Any], arguments: str | None = None) -> dict[str, Any]:
        return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"), "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"] if arguments is None else arguments,
                "status": "completed" if arguments is None else "in_progress"}

    def finish(self, result: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
        """The finished response object (its text, or its `calls`), stored unless the request said
        `store: false`: with its answer as the model would read it again, as a call or as text."""
        text = result.get("text", "")
        cut = result.get("stop_reason") == "length"
        output = [self._call_item(call) for call in calls] if calls else \
            [self._message(text, "incomplete" if cut else "completed")]
        response = self.response("completed", output, result)
        if response["store"]:
            said = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                    for c in calls]
            answer = calls_as_text(said) if said else text
            names = {**self.wanted.names, **{c["id"]: c["function"]["name"] for c in calls}}
            self.request.app[RESPONSES].add(StoredResponse(
                self.id, response, self.wanted.input, [*self.wanted.chat, ("assistant", answer)], names),
                self.request.get(REQUEST_OWNER))
        return response

    # -- streamed --------------------------------------------------------------------------------------

    def _event(self, kind: str, data: dict[str, Any]) -> str:
        self.sequence += 1
        payload = json.dumps({"type": kind, "sequence_number": self.sequence - 1, **data}, ensure_ascii=False)
        return f"event: {kind}\ndata: {payload}\n\n"

    def _begin_text(self) -> str:
        if self.text is not None:
            return ""
        self.text = []
        return (self._event("response.output_item.added", {"output_index": 0, "item": self._message(None, "in_progress")})
                + self._event("response.content_part.added", {
                    "item_id": self.message_id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}))

    def start(self) -> str:
        begun = self.response("in_progress", [])
        return (self._event("response.created", {"response": begun})
                + self._event("response.in_progress", {"response": begun}))

    def token(self, token: Token) -> str:
        out = self._begin_text()
        assert self.text is not None
        self.text.append(token.t)
        return out + self._event("response.output_text.delta", {
            "item_id": self.message_id, "output_index": 0, "content_index": 0, "delta": token.t, "logprobs": []})

    def error(self, error: Error) -> str:
        return ""  # said once the job ends

    def end(self, end: End, calls: list[dict[str, Any]] | None) -> str:
        result = dict(end.stats)
        out = []
        calls = self.wanted.kept(calls or [])
        if not calls:
            out.append(self._begin_text())  # (an empty answer is still a message)
            result["text"] = "".join(self.text or [])
        response = self.finish(result, calls)
        for index, item in enumerate(response["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                part = item["content"][0]
                out += [self._event("response.output_text.done", {"item_id": item["id"], "output_index": index,
                                                                  "content_index": 0, "text": text, "logprobs": []}),
                        self._event("response.content_part.done", {"item_id": item["id"], "output_index": index,
                                                                   "content_index": 0, "part": part})]
            else:
                out += [self._event("response.output_item.added", {"output_index": index,
                                                                    "item": {**item, "arguments": "",
                                                                             "status": "in_progress"}}),
                        self._event("response.function_call_arguments.delta", {
                            "item_id": item["id"], "output_index": index, "delta": item["arguments"]}),
                        self._event("response.function_call_arguments.done", {
                            "item_id": item["id"], "output_index": index, "name": item["name"],
                            "arguments": item["arguments"]})]
            out.append(self._event("response.output_item.done", {"output_index": index, "item": item}))
        ended = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        out.append(self._event(ended, {"response": response}))
        return "".join(out)

    def failed(self, failure: Failure) -> str:
        response = {**self.response("failed", []), "error": {"code": failure.code.lower(), "message": failure.message}}
        return self._event("response.failed", {"response": response})

    def close(self) -> str:
        return ""

    def failure(self, failure: Failure) -> web.Response:
        return error_response(failure.status, failure.code, failure.message)
