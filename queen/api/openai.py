"""OpenAI-compatible endpoints on the queen, so any OpenAI client can use your hives:

    GET  /v1/models             every model a running hive has, plus the built-in
    POST /v1/completions        text completion, streamed (`text_completion` chunks) or not
    POST /v1/chat/completions   chat in the model's own template, streamed (`chat.completion.chunk`) or not

Both take `response_format` (JSON object or JSON schema: the worker's grammar makes the output follow
it), `presence_penalty`/`frequency_penalty` and `logprobs`; chat takes `tools` (see queen/api/tool_calls.py).
Each request runs as an ordinary `infer` job (so it shows in `rbee jobs` and the TUI) through the same
scheduler. This module converts a request into that job (`to_infer`) and renders the job in OpenAI's
shapes (`OpenAIRenderer`); queen/api/common.py does the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from queen.access.middleware import submit_job
from queen.api.common import (
    CLIENT_LEFT,
    ApiError,
    Failure,
    api_route,
    check_model,
    known_models,
    read_body,
    stream,
    wait_for_answer,
)
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
from shared.errors import InvalidRequest
from shared.events import DONE_FRAME, End, Error, Token
from shared.inference import SAMPLING_FIELDS
from shared.job_registry import Job
from shared.operations import Infer
from shared.wire import parse_message

PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions"})
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
MAX_TOP_LOGPROBS = 20


@dataclass
class Extras:
    """What the answer's shape needs beyond the text: log-probabilities, a tool call to find in it."""

    logprobs: int | None = None  # None: not asked; N: with the N most likely tokens at each position
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "none"  # "none" | "auto" | "required" | a function's name
    one_call: bool = False  # parallel_tool_calls: false

    @property
    def calls(self) -> bool:
        return self.tool_choice != "none"


_OPENAI_CODES = {"INVALID_REQUEST": "invalid_request_error"}  # rbee's code -> what OpenAI's clients know


def error_response(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    """An error in OpenAI's shape: its `type` from the status (a job cancelled while its client waits is the
    server's doing), `code` rbee's code in lower case, OpenAI's own words where it has them."""
    kind = ("authentication_error" if status == 401 else "requests" if status == 429  # as OpenAI's rate limits
            else "invalid_request_error" if status < CLIENT_LEFT else "server_error")
    code = "invalid_api_key" if status == 401 else _OPENAI_CODES.get(code, code.lower())
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status)


def setup_openai_api(app: web.Application) -> None:
    async def list_models(request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "rbee"} for m in await known_models(app)]
        return web.json_response({"object": "list", "data": data})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await handle(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await handle(request, chat=True)

    app.router.add_get("/v1/models", api_route(error_response, list_models))
    app.router.add_post("/v1/completions", api_route(error_response, completions))
    app.router.add_post("/v1/chat/completions", api_route(error_response, chat_completions))


async def handle(request: web.Request, *, chat: bool) -> web.StreamResponse:
    operation, streamed, include_usage, extras = to_infer(await read_body(request), chat)
    await check_model(request.app, operation.model)
    job = submit_job(request, operation)
    renderer = OpenAIRenderer(job, operation.model, chat, include_usage, extras)
    if streamed:
        return await stream(request, job, renderer, extras.tools if extras.calls else None)
    failure, logprobs = await wait_for_answer(request, job, logprobs=extras.logprobs is not None)
    if failure is not None:
        return renderer.failure(failure)
    return renderer.whole(job.result or {}, logprobs)


def to_infer(body: Any, chat: bool) -> tuple[Infer, bool, bool, Extras]:
    """The `infer` operation a request asks for, whether to stream it and include usage, and what the
    answer's shape needs; ApiError naming the `param` that is wrong."""
    try:
        return _to_infer(body, chat)
    except ApiError:
        raise
    except InvalidRequest as exc:
        message = f"'{exc.field}' {exc.problem}." if exc.field and exc.problem else exc.message
        raise ApiError(message, field=exc.field) from None


def _to_infer(body: Any, chat: bool) -> tuple[Infer, bool, bool, Extras]:
    if not isinstance(body, dict):
        raise ApiError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("'model' is required (a model id from GET /v1/models).", field="model")
    fields: dict[str, Any] = {"model": model}
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError("'messages' must be a non-empty list of {role, content}.", field="messages")
        fields["messages"] = _messages(messages)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError("'prompt' must be one non-empty string.", field="prompt")
        fields["prompt"] = prompt
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError("Only n=1 is supported: ask again for another answer.", field="n")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise ApiError(f"'{legacy}' is the deprecated form of 'tools'/'tool_choice'; send those instead.",
                              field=legacy)
    extras = Extras()
    if chat and (body.get("tools") is not None or body.get("tool_choice") is not None):
        extras.tools = check_tools(body["tools"]) if body.get("tools") is not None else []
        extras.tool_choice = check_tool_choice(body.get("tool_choice"), extras.tools)
        if body.get("parallel_tool_calls") not in (None, True, False):
            raise ApiError("'parallel_tool_calls' must be true or false.", field="parallel_tool_calls")
        extras.one_call = body.get("parallel_tool_calls") is False
        if extras.calls:  # the template may not know tools: they are described in a system message
            add_system(fields["messages"], tools_prompt(extras.tools, extras.tool_choice, several=not extras.one_call))
            fields["json_schema"] = tool_call_schema(extras.tools, extras.tool_choice)
    elif not chat and body.get("tools") is not None:
        raise ApiError("'tools' are for /v1/chat/completions.", field="tools")
    schema = _response_format(body.get("response_format"))
    if schema is not None:
        if fields.get("json_schema") is not None:
            raise ApiError("A required tool call is JSON already: send 'response_format' or a required "
                              "'tool_choice', not both.", field="response_format")
        fields["json_schema"] = schema
    extras.logprobs = _logprobs(body, chat)
    if extras.logprobs is not None:
        fields["logprobs"] = extras.logprobs
    for penalty in ("presence_penalty", "frequency_penalty"):
        if body.get(penalty) is not None:
            fields[penalty] = body[penalty]
    sampling = {f.name: body.get(f.name) for f in SAMPLING_FIELDS}
    sampling["max_tokens"] = body.get("max_completion_tokens", body.get("max_tokens"))
    fields.update((name, value) for name, value in sampling.items() if value is not None)
    if isinstance(fields.get("temperature"), (int, float)) and not isinstance(fields["temperature"], bool) \
            and fields["temperature"] > 2:
        raise ApiError("'temperature' must be between 0 and 2.", field="temperature")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError("'stream' must be true or false.", field="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    if fields.get("json_schema") is None:
        fields.pop("json_schema", None)
    return parse_message(Infer, fields), stream, include_usage, extras


def _messages(messages: list[Any]) -> list[Any]:
    """OpenAI's chat messages as rbee's {role, content}: tool calls and tool results become text the
    model reads (calls in words: tool_calls.calls_as_text); `developer` is `system` by its newer name."""
    names: dict[str, str] = {}  # tool_call_id -> function name
    out: list[Any] = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)  # the wire check names it
            continue
        role, content = m.get("role"), _content(m.get("content"))
        if role == "developer":
            role = "system"
        elif role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list):
                raise ApiError("'tool_calls' of an assistant message must be a list.", field="messages")
            text: list[dict[str, Any]] = []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ApiError("Each of an assistant message's 'tool_calls' needs a 'function' with a "
                                      "'name' and 'arguments'.", field="messages")
                names[str(call.get("id"))] = fn["name"]
                try:
                    arguments = json.loads(fn.get("arguments") or "{}")
                except (TypeError, ValueError, RecursionError):
                    arguments = fn.get("arguments")
                text.append({"name": fn["name"], "arguments": arguments})
            content = "\n".join(([content] if isinstance(content, str) and content else []) + [calls_as_text(text)])
        elif role == "tool":
            name = names.get(str(m.get("tool_call_id")), "the function")
            role, content = "user", f"Result of {name}: {content if isinstance(content, str) else json.dumps(content)}"
        elif role == "assistant" and content is None:
            content = ""
        out.append({"role": role, "content": content})
    return out


def _response_format(value: Any) -> dict[str, Any] | None:
    """The JSON schema `response_format` asks for (None: plain text)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise ApiError("'response_format' of type json_schema needs 'json_schema': {name, schema}.",
                              field="response_format")
        schema = spec.get("schema", {"type": "object"})
        check_json_schema(schema, "response_format")
        return schema
    raise ApiError('\'response_format\' must be {"type": "text"}, {"type": "json_object"} or {"type": '
                      '"json_schema", "json_schema": {"name", "schema"}}.', field="response_format")


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token to report; None when log-probabilities are not asked for. Chat
    asks with `logprobs: true` and `top_logprobs: N`, completions with `logprobs: N`."""
    value, top = body.get("logprobs"), body.get("top_logprobs")
    if chat:
        if value not in (None, True, False):
            raise ApiError("'logprobs' must be true or false.", field="logprobs")
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
                raise ApiError(f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}.",
                                  field="top_logprobs")
            if not value:
                raise ApiError("'top_logprobs' needs 'logprobs': true.", field="top_logprobs")
        return (top or 0) if value else None
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ApiError(f"'logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}.", field="logprobs")
    return value


def _content(content: Any) -> Any:
    """OpenAI allows content as a list of parts; rbee's models take text."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content


def _chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Worker logprobs ({token, logprob, top}) in chat's shape."""
    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**one(e["token"], e["logprob"]), "top_logprobs": [one(t["token"], t["logprob"])
                                                                           for t in e.get("top", ())]}
                        for e in entries], "refusal": None}


def _completion_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Worker logprobs in the completions shape; `offset` is where this text starts in the answer."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top", ())} for e in entries],
            "text_offset": offsets}


def _usage(result: Any) -> dict[str, Any]:
    """OpenAI's usage, with the prompt's tokens a worker's KV cache held (`prompt_tokens_details`)."""
    prompt, completion = result.get("prompt_tokens") or 0, result.get("tokens_out") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": result.get("prompt_tokens_reused") or 0}}


class OpenAIRenderer:
    """One request's answer in OpenAI's shapes: `chat.completion(.chunk)` or `text_completion`."""

    content_type = "text/event-stream"
    headers_at_once = True

    def __init__(self, job: Job, model: str, chat: bool, include_usage: bool = False,
                 extras: Extras | None = None) -> None:
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{job.id.removeprefix('job-')}"
        self.created = int(job.created_at)
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.extras = extras or Extras()
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.sent = 0  # characters of text sent so far (completions' text_offset)

    def _frame(self, choice: dict[str, Any]) -> str:
        return "data: " + json.dumps({"id": self.id, "object": self.kind, "created": self.created,
                                      "model": self.model, "choices": [choice]}, ensure_ascii=False) + "\n\n"

    def _chunk(self, text: str | None, finish: str | None, *, first: bool = False,
               logprobs: list[dict[str, Any]] | None = None) -> str:
        lp = None
        if logprobs is not None and self.extras.logprobs is not None:
            lp = _chat_logprobs(logprobs) if self.chat else _completion_logprobs(logprobs, self.sent)
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else \
                ({} if text is None else {"content": text})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lp}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": lp}
        self.sent += len(text or "")
        return self._frame(choice)

    # -- streamed ---------------------------------------------------------------------------------------

    def start(self) -> str:
        return self._chunk(None, None, first=True) if self.chat else ""

    def token(self, token: Token) -> str:
        return self._chunk(token.t, None, logprobs=token.logprobs or [])

    def error(self, error: Error) -> str:
        return "data: " + json.dumps({"error": {"message": error.message, "type": "server_error", "param": None,
                                                "code": error.code.lower()}}) + "\n\n"

    def end(self, end: End, calls: list[dict[str, Any]] | None) -> str:
        if calls:
            out = []
            for k, call in enumerate(calls[:1] if self.extras.one_call else calls):  # its head, then its arguments
                head = {"index": k, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                arguments = {"index": k, "function": {"arguments": call["function"]["arguments"]}}
                out += [self._frame({"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None,
                                     "logprobs": None}),
                        self._frame({"index": 0, "delta": {"tool_calls": [arguments]}, "finish_reason": None,
                                     "logprobs": None})]
            out.append(self._frame({"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None}))
        else:
            out = [self._chunk(None, _FINISH.get(end.stats.get("stop_reason") or "stop", "stop"))]
        if self.include_usage:
            out.append("data: " + json.dumps({"id": self.id, "object": self.kind, "created": self.created,
                                              "model": self.model, "choices": [], "usage": _usage(end.stats)})
                       + "\n\n")
        return "".join(out)

    def failed(self, failure: Failure) -> str:
        return ""  # the error event said it

    def close(self) -> str:
        return DONE_FRAME

    # -- whole ------------------------------------------------------------------------------------------

    def failure(self, failure: Failure) -> web.Response:
        return error_response(failure.status, failure.code, failure.message)

    def whole(self, result: dict[str, Any], logprobs: list[dict[str, Any]]) -> web.Response:
        text = result.get("text", "")
        finish = _FINISH.get(result.get("stop_reason") or "stop", "stop")
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.extras.logprobs is not None:
            choice["logprobs"] = _chat_logprobs(logprobs) if self.chat else _completion_logprobs(logprobs, 0)
        calls = parse_tool_calls(text, self.extras.tools) if self.extras.calls else None
        if calls and self.extras.one_call:
            calls = calls[:1]
        if self.chat and calls:
            choice.update(message={"role": "assistant", "content": None, "tool_calls": calls},
                          finish_reason="tool_calls")
        elif self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response({"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                                  "created": self.created, "model": self.model, "choices": [choice],
                                  "usage": _usage(result), "system_fingerprint": None})
