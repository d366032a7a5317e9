"""OpenAI-compatible endpoints on the queen, so any OpenAI client can use your hives:

    GET  /v1/models             every model a running hive has, plus the built-in
    POST /v1/completions        text completion, streamed (`text_completion` chunks) or not
    POST /v1/chat/completions   chat in the model's own template, streamed (`chat.completion.chunk`) or not

Both take `response_format` (JSON object or JSON schema: the worker's grammar makes the output follow
it), `presence_penalty`/`frequency_penalty` and `logprobs`; chat takes `tools` (see queen/tool_calls.py).
Each request runs as an ordinary `infer` job (so it shows in `rbee jobs` and the TUI) through the same
scheduler. Errors come in OpenAI's shape; a client that goes away cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from queen.appkeys import HIVES, KNOWN_MODELS
from queen.tool_calls import (add_system, check_json_schema, check_tool_choice, check_tools, may_be_tool_call,
                              parse_tool_calls, tool_call_schema, tools_prompt)
from shared import appkeys
from shared.errors import InvalidRequest, RbeeError
from shared.events import DONE_FRAME, JobState
from shared.inference import SAMPLING_FIELDS
from shared.job_registry import Job
from shared.job_routes import until_finished
from shared.models import parse_reference
from shared.operations import Infer
from shared.wire import parse_message

PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions"})
MODELS_CACHE_S = 10.0  # a request checks its model against this recent a list (a miss asks the hives again)
# Error codes that mean the request itself was wrong, whichever daemon noticed: a 400, never a 5xx.
CLIENT_MISTAKES = frozenset({"INVALID_REQUEST", "PROMPT_TOO_LONG", "BAD_MODEL_REFERENCE", "NO_CHAT_TEMPLATE",
                             "MODEL_NOT_FOUND"})
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
MAX_TOP_LOGPROBS = 20


@dataclass
class Extras:
    """What the answer's shape needs beyond the text: log-probabilities, a tool call to find in it."""

    logprobs: int | None = None  # None: not asked; N: with the N most likely tokens at each position
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "none"  # "none" | "auto" | "required" | a function's name

    @property
    def calls(self) -> bool:
        return self.tool_choice != "none"


class OpenAIError(RbeeError):
    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message, code=code or kind, status=status)
        self.param, self.kind = param, kind


def openai_error(status: int, message: str, kind: str, param: str | None = None,
                 code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status)


def error_shaper(request: web.Request, status: int, code: str, message: str) -> web.Response | None:
    """Errors on the OpenAI routes (auth, bad JSON, …) in OpenAI's shape."""
    if request.path not in PATHS:
        return None
    kind = {401: "authentication_error", 404: "invalid_request_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return openai_error(status, message, kind, code="invalid_api_key" if status == 401 else code.lower())


def setup_openai_api(app: web.Application) -> None:
    app[appkeys.ERROR_SHAPER] = error_shaper

    async def list_models(request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "rbee"} for m in await app[KNOWN_MODELS].ids(app[HIVES])]
        return web.json_response({"object": "list", "data": data})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await handle(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await handle(request, chat=True)

    async def handle(request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return openai_error(400, f"The body is not valid JSON: {exc}.", "invalid_request_error")
        try:
            operation, stream, include_usage, extras = to_infer(body, chat)
        except OpenAIError as exc:
            return openai_error(exc.status, exc.message, exc.kind, exc.param, exc.code)
        model = canonical(operation.model)
        if not await app[KNOWN_MODELS].has(app[HIVES], model, MODELS_CACHE_S):
            return openai_error(404, f"The model '{operation.model}' does not exist on any running hive "
                                     f"(GET /v1/models lists them).", "invalid_request_error", "model",
                                "model_not_found")
        job = request.app[appkeys.JOB_REGISTRY].submit(operation)
        ids = f"{'chatcmpl' if chat else 'cmpl'}-{job.id.removeprefix('job-')}"
        if stream:
            return await stream_response(request, job, ids, operation.model, chat, include_usage, extras)
        return await whole_response(request, job, ids, operation.model, chat, extras)

    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)


def canonical(model: str) -> str:
    """The catalog id of a model reference (`file:~/m.gguf` is `file:/home/me/m.gguf`)."""
    try:
        return parse_reference(model).id
    except InvalidRequest:
        return model  # not a reference at all: it will not be found either


def to_infer(body: Any, chat: bool) -> tuple[Infer, bool, bool, Extras]:
    try:
        return _to_infer(body, chat)
    except InvalidRequest as exc:
        message = f"'{exc.field}' {exc.problem}." if exc.field and exc.problem else exc.message
        raise OpenAIError(message, param=exc.field) from None


def _to_infer(body: Any, chat: bool) -> tuple[Infer, bool, bool, Extras]:
    if not isinstance(body, dict):
        raise OpenAIError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("'model' is required (a model id from GET /v1/models).", param="model")
    fields: dict[str, Any] = {"model": model}
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError("'messages' must be a non-empty list of {role, content}.", param="messages")
        fields["messages"] = _messages(messages)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError("'prompt' must be one non-empty string.", param="prompt")
        fields["prompt"] = prompt
    n = body.get("n", 1)
    if n not in (1, None):
        raise OpenAIError("Only n=1 is supported: ask again for another answer.", param="n")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise OpenAIError(f"'{legacy}' is the deprecated form of 'tools'/'tool_choice'; send those instead.",
                              param=legacy)
    extras = Extras()
    if chat and (body.get("tools") is not None or body.get("tool_choice") is not None):
        extras.tools = check_tools(body["tools"]) if body.get("tools") is not None else []
        extras.tool_choice = check_tool_choice(body.get("tool_choice"), extras.tools)
        if body.get("parallel_tool_calls") not in (None, True, False):
            raise OpenAIError("'parallel_tool_calls' must be true or false.", param="parallel_tool_calls")
        if extras.calls:  # the template may not know tools: they are described in a system message
            add_system(fields["messages"], tools_prompt(extras.tools, extras.tool_choice))
            fields["json_schema"] = tool_call_schema(extras.tools, extras.tool_choice)
    elif not chat and body.get("tools") is not None:
        raise OpenAIError("'tools' are for /v1/chat/completions.", param="tools")
    schema = _response_format(body.get("response_format"))
    if schema is not None:
        if fields.get("json_schema") is not None:
            raise OpenAIError("A required tool call is JSON already: send 'response_format' or a required "
                              "'tool_choice', not both.", param="response_format")
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
        raise OpenAIError("'temperature' must be between 0 and 2.", param="temperature")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise OpenAIError("'stream' must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    if fields.get("json_schema") is None:
        fields.pop("json_schema", None)
    return parse_message(Infer, fields), stream, include_usage, extras


def _messages(messages: list[Any]) -> list[Any]:
    """OpenAI's chat messages as rbee's {role, content}: tool calls and tool results become text the
    model reads, in the form the tools prompt teaches; `developer` is `system` by its newer name."""
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
                raise OpenAIError("'tool_calls' of an assistant message must be a list.", param="messages")
            text = []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise OpenAIError("Each of an assistant message's 'tool_calls' needs a 'function' with a "
                                      "'name' and 'arguments'.", param="messages")
                names[str(call.get("id"))] = fn["name"]
                try:
                    arguments = json.loads(fn.get("arguments") or "{}")
                except (TypeError, ValueError, RecursionError):
                    arguments = fn.get("arguments")
                text.append(json.dumps({"name": fn["name"], "arguments": arguments}, ensure_ascii=False))
            content = "\n".join(([content] if isinstance(content, str) and content else []) + text)
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
            raise OpenAIError("'response_format' of type json_schema needs 'json_schema': {name, schema}.",
                              param="response_format")
        schema = spec.get("schema", {"type": "object"})
        check_json_schema(schema, "response_format")
        return schema
    raise OpenAIError('\'response_format\' must be {"type": "text"}, {"type": "json_object"} or {"type": '
                      '"json_schema", "json_schema": {"name", "schema"}}.', param="response_format")


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token to report; None when log-probabilities are not asked for. Chat
    asks with `logprobs: true` and `top_logprobs: N`, completions with `logprobs: N`."""
    value, top = body.get("logprobs"), body.get("top_logprobs")
    if chat:
        if value not in (None, True, False):
            raise OpenAIError("'logprobs' must be true or false.", param="logprobs")
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
                raise OpenAIError(f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}.",
                                  param="top_logprobs")
            if not value:
                raise OpenAIError("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
        return (top or 0) if value else None
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise OpenAIError(f"'logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}.", param="logprobs")
    return value


def _content(content: Any) -> Any:
    """OpenAI allows content as a list of parts; rbee's models take text."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content


def _usage(result: dict[str, Any]) -> dict[str, int]:
    prompt, completion = result.get("prompt_tokens") or 0, result.get("tokens_out") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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


async def _collect_logprobs(job: Job, into: list[dict[str, Any]]) -> None:
    async for batch in job.follow():
        for _, encoded in batch:
            if encoded.startswith('{"type":"token"'):
                into.extend(json.loads(encoded).get("logprobs") or ())


async def whole_response(request: web.Request, job: Job, ids: str, model: str, chat: bool,
                         extras: Extras | None = None) -> web.Response:
    extras = extras or Extras()
    entries: list[dict[str, Any]] = []
    collector = asyncio.create_task(_collect_logprobs(job, entries)) if extras.logprobs is not None else None
    try:
        await until_finished(request, job)
        if collector is not None:
            await collector
    finally:
        if collector is not None and not collector.done():
            collector.cancel()
    if job.state is not JobState.COMPLETED:
        error = job.error or {"code": "CANCELLED", "message": f"The generation ended {job.state.value}."}
        if error["code"] in CLIENT_MISTAKES:  # found only once a worker saw it (its context, its template)
            return openai_error(400, error["message"], "invalid_request_error", code=error["code"].lower())
        return openai_error(502 if job.state is JobState.FAILED else 499, error["message"], "server_error",
                            code=error["code"].lower())
    result = job.result or {}
    text = result.get("text", "")
    finish = _FINISH.get(result.get("stop_reason") or "stop", "stop")
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if extras.logprobs is not None:
        choice["logprobs"] = _chat_logprobs(entries) if chat else _completion_logprobs(entries, 0)
    calls = parse_tool_calls(text, extras.tools) if extras.calls else None
    if chat and calls:
        choice.update(message={"role": "assistant", "content": None, "tool_calls": calls},
                      finish_reason="tool_calls")
    elif chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return web.json_response({
        "id": ids, "object": "chat.completion" if chat else "text_completion", "created": int(job.created_at),
        "model": model, "choices": [choice], "usage": _usage(result), "system_fingerprint": None,
    })


async def stream_response(request: web.Request, job: Job, ids: str, model: str, chat: bool,
                          include_usage: bool, extras: Extras | None = None) -> web.StreamResponse:
    extras = extras or Extras()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    created = int(job.created_at)
    kind = "chat.completion.chunk" if chat else "text_completion"
    sent = 0  # characters of text sent so far (completions' text_offset)
    # With tools, text that may be a call is held back until it is clearly not one, or the answer ends.
    holding = extras.calls
    held: list[str] = []
    held_logprobs: list[dict[str, Any]] = []

    def frame(choice: dict[str, Any]) -> str:
        return "data: " + json.dumps({"id": ids, "object": kind, "created": created, "model": model,
                                      "choices": [choice]}, ensure_ascii=False) + "\n\n"

    def chunk(text: str | None, finish: str | None, *, first: bool = False,
              logprobs: list[dict[str, Any]] | None = None) -> str:
        nonlocal sent
        lp = None
        if logprobs is not None and extras.logprobs is not None:
            lp = _chat_logprobs(logprobs) if chat else _completion_logprobs(logprobs, sent)
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else \
                ({} if text is None else {"content": text})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lp}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": lp}
        sent += len(text or "")
        return frame(choice)

    def release() -> list[str]:
        """The held-back text, as the content it turned out to be."""
        nonlocal holding
        holding = False
        text, logprobs = "".join(held), list(held_logprobs)
        held.clear()
        held_logprobs.clear()
        return [chunk(text, None, logprobs=logprobs)] if text else []

    def ending(finish: str) -> list[str]:
        calls = parse_tool_calls("".join(held), extras.tools) if holding else None
        if not calls:
            return release() + [chunk(None, finish)]
        call = calls[0]
        head = {"index": 0, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        return [frame({"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None, "logprobs": None}),
                frame({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                    "arguments": call["function"]["arguments"]}}]}, "finish_reason": None, "logprobs": None}),
                frame({"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None})]

    try:
        if chat:
            await resp.write(chunk(None, None, first=True).encode())
        async for batch in job.follow():
            out = []
            for _, encoded in batch:
                event = json.loads(encoded)
                if event["type"] == "token":
                    if holding:
                        held.append(event["t"])
                        held_logprobs.extend(event.get("logprobs") or ())
                        if not may_be_tool_call("".join(held)):
                            out += release()
                    else:
                        out.append(chunk(event["t"], None, logprobs=event.get("logprobs") or []))
                elif event["type"] == "error":
                    out += release()
                    out.append("data: " + json.dumps({"error": {"message": event["message"], "type": "server_error",
                                                                "param": None, "code": event["code"].lower()}})
                               + "\n\n")
                elif event["type"] == "end" and event["state"] == JobState.COMPLETED:
                    out += ending(_FINISH.get(event.get("stop_reason") or "stop", "stop"))
                    if include_usage:
                        out.append("data: " + json.dumps({"id": ids, "object": kind, "created": created,
                                                          "model": model, "choices": [],
                                                          "usage": _usage(event)}) + "\n\n")
            if out:
                await resp.write("".join(out).encode())
        await resp.write(DONE_FRAME.encode())
    except (ConnectionResetError, aiohttp.ClientConnectionResetError, asyncio.CancelledError):
        # The client went away mid-stream: its generation stops now, freeing the worker.
        if not job.state.finished:
            request.app[appkeys.JOB_REGISTRY].cancel(job.id)
        raise
    return resp
