"""Anthropic's Messages API on the queen, so Claude-API clients can use your hives:

    POST /v1/messages   chat in the model's own template, streamed (Anthropic's SSE events) or not

Each request runs as an ordinary `infer` job through the same scheduler as the OpenAI layer. The token
comes in `x-api-key` (what Anthropic's clients send) or as `Authorization: Bearer`; errors come in
Anthropic's shape. Text only: tools, images and extended thinking are refused with a clear message.
This module converts a request into that job (`to_infer`) and renders the job in Anthropic's shapes
(`AnthropicRenderer`); queen/api/common.py does the rest.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from aiohttp import web

from queen.access.middleware import submit_job
from queen.api.common import CLIENT_LEFT, ApiError, Failure, api_route, check_model, read_body, stream, wait_for_answer
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


async def messages(request: web.Request) -> web.StreamResponse:
    operation, streamed = to_infer(await read_body(request))
    try:
        await check_model(request.app, operation.model)
    except ApiError:
        raise ApiError(f"model: '{operation.model}' does not exist on any running hive (GET /v1/models lists "
                       f"them; '{BUILTIN_MODEL}' is built in).", status=404, code="MODEL_NOT_FOUND") from None
    job = submit_job(request, operation)
    renderer = AnthropicRenderer(job, operation)
    if streamed:
        return await stream(request, job, renderer)
    failure, _ = await wait_for_answer(request, job)
    if failure is not None:
        return renderer.failure(failure)
    return renderer.whole(job.result or {})


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
            raise ApiError(f"{where}.{k}: only text blocks are supported (got {kind or type(block).__name__}); "
                                 "rbee's models read text.")
        parts.append(block["text"])
    return "".join(parts)


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ApiError(f"{name}: must be {kind} from {low:g} to {high:g} (got {value!r}).")
    return value


def to_infer(body: Any) -> tuple[Infer, bool]:
    """The `infer` operation a Messages request asks for, and whether to stream it."""
    if not isinstance(body, dict):
        raise ApiError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(f"model: Field required (a model id from GET /v1/models, e.g. '{BUILTIN_MODEL}').")
    if body.get("max_tokens") is None:
        raise ApiError("max_tokens: Field required.")
    max_tokens = _number(body, "max_tokens", 1, 1 << 20, integer=True)
    for unsupported in ("tools", "thinking"):
        value = body.get(unsupported)
        if value and not (isinstance(value, dict) and value.get("type") == "disabled"):
            raise ApiError(f"{unsupported}: not supported by rbee's Messages API (text chat only).")
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        raise ApiError("messages: must be a non-empty list of {role, content}.")
    chat = []
    system = body.get("system")
    if system is not None:
        text = _text(system, "system")
        if text:
            chat.append({"role": "system", "content": text})
    for k, m in enumerate(given):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ApiError(f"messages.{k}.role: must be 'user' or 'assistant' (the system prompt goes in "
                                 "'system').")
        chat.append({"role": m["role"], "content": _text(m.get("content"), f"messages.{k}.content")})
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
                              "stop": stops or None}
    try:
        operation = parse_message(Infer, {k: v for k, v in fields.items() if v is not None})
    except InvalidRequest as exc:
        raise ApiError(f"{exc.field}: {exc.problem}." if exc.field and exc.problem else exc.message) from None
    return operation, stream


def stop_of(result: Mapping[str, Any], operation: Infer) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for a generation's result."""
    if result.get("stop_reason") == "length":
        return "max_tokens", None
    matched = result.get("stop_sequence")  # the stop string that ended it, when the worker says so
    if matched and operation.stop and matched in operation.stop:
        return "stop_sequence", matched
    return "end_turn", None


def message(message_id: str, model: str, text: str | None, stop: tuple[str | None, str | None],
            usage: dict[str, int]) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": stop[0], "stop_sequence": stop[1], "usage": usage}


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
    (input_tokens, known only at the end, come in message_delta)."""

    content_type = "text/event-stream"
    headers_at_once = True

    def __init__(self, job: Job, operation: Infer) -> None:
        self.id = "msg_" + job.id.removeprefix("job-").replace("-", "")
        self.operation = operation

    def start(self) -> str:
        return (sse("message_start", {"message": message(self.id, self.operation.model, None, (None, None), usage_of({}))})
                + sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                + sse("ping", {}))

    def token(self, token: Token) -> str:
        return sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token.t}})

    def error(self, error: Error) -> str:
        return ""  # said once the job ends

    def end(self, end: End, calls: list[dict[str, Any]] | None) -> str:
        result = end.stats
        reason, sequence = stop_of(result, self.operation)
        return (sse("content_block_stop", {"index": 0})
                + sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
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
        return web.json_response(message(self.id, self.operation.model, result.get("text", ""),
                                         stop_of(result, self.operation), usage_of(result)))
