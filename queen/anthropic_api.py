"""Anthropic's Messages API on the queen, so Claude-API clients can use your hives:

    POST /v1/messages   chat in the model's own template, streamed (Anthropic's SSE events) or not

Each request runs as an ordinary `infer` job through the same scheduler as the OpenAI layer. The token
comes in `x-api-key` (what Anthropic's clients send) or as `Authorization: Bearer`; errors come in
Anthropic's shape. Text only: tools, images and extended thinking are refused with a clear message.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from queen.appkeys import HIVES, KNOWN_MODELS
from queen.openai_api import CLIENT_MISTAKES, MODELS_CACHE_S, canonical
from shared import appkeys
from shared.errors import InvalidRequest
from shared.events import JobState
from shared.job_registry import Job
from shared.job_routes import until_finished
from shared.models import BUILTIN_MODEL
from shared.operations import Infer
from shared.token import tokens_equal
from shared.wire import parse_message

PATH = "/v1/messages"
OWN_AUTH = frozenset({("POST", PATH)})  # the handler checks x-api-key itself (the middleware knows Bearer only)
DEFAULT_TEMPERATURE = 1.0  # Anthropic's default (rbee's own is llama.cpp's 0.8)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}


class AnthropicError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def anthropic_error(status: int, message: str, kind: str | None = None) -> web.Response:
    kind = kind or _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def setup_anthropic_api(app: web.Application) -> None:
    previous = app.get(appkeys.ERROR_SHAPER)

    def error_shaper(request: web.Request, status: int, code: str, message: str) -> web.Response | None:
        """Errors the middleware raises on this route (bad JSON, too large, a crash) in Anthropic's shape;
        other routes keep whatever shape their API has."""
        if request.path == PATH or request.path.startswith(PATH + "/"):  # count_tokens, batches: not served
            return anthropic_error(status, message)
        return previous(request, status, code, message) if previous else None

    app[appkeys.ERROR_SHAPER] = error_shaper

    async def messages(request: web.Request) -> web.StreamResponse:
        if not authorized(request):
            return anthropic_error(401, "Missing or wrong API key: send the rbee token (the file 'token' in the "
                                        "rbee config dir) as 'x-api-key'.")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return anthropic_error(400, f"The body is not valid JSON: {exc}.")
        try:
            operation, stream = to_infer(body)
        except AnthropicError as exc:
            return anthropic_error(exc.status, exc.message)
        model = canonical(operation.model)
        if not await app[KNOWN_MODELS].has(app[HIVES], model, MODELS_CACHE_S):
            return anthropic_error(404, f"model: '{operation.model}' does not exist on any running hive "
                                        f"(GET /v1/models lists them; '{BUILTIN_MODEL}' is built in).")
        job = request.app[appkeys.JOB_REGISTRY].submit(operation)
        message_id = "msg_" + job.id.removeprefix("job-").replace("-", "")
        if stream:
            return await stream_response(request, job, message_id, operation)
        return await whole_response(request, job, message_id, operation)

    app.router.add_post(PATH, messages)


def authorized(request: web.Request) -> bool:
    """`x-api-key: <token>` as Anthropic's clients send it, or the `Authorization: Bearer` every rbee route takes."""
    token = request.app[appkeys.TOKEN]
    given = request.headers.get("x-api-key", "").strip()
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    if not given and scheme.lower() == "bearer":
        given = bearer.strip()
    return bool(given) and tokens_equal(given, token)


def _text(content: Any, where: str) -> str:
    """A string, or a list of text blocks joined (rbee's models take text only)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise AnthropicError(f"{where}: must be a string or a list of content blocks.")
    parts = []
    for k, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text" or not isinstance(block.get("text"), str):
            raise AnthropicError(f"{where}.{k}: only text blocks are supported (got {kind or type(block).__name__}); "
                                 "rbee's models read text.")
        parts.append(block["text"])
    return "".join(parts)


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise AnthropicError(f"{name}: must be {kind} from {low:g} to {high:g} (got {value!r}).")
    return value


def to_infer(body: Any) -> tuple[Infer, bool]:
    """The `infer` operation a Messages request asks for, and whether to stream it."""
    if not isinstance(body, dict):
        raise AnthropicError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise AnthropicError(f"model: Field required (a model id from GET /v1/models, e.g. '{BUILTIN_MODEL}').")
    if body.get("max_tokens") is None:
        raise AnthropicError("max_tokens: Field required.")
    max_tokens = _number(body, "max_tokens", 1, 1 << 20, integer=True)
    for unsupported in ("tools", "thinking"):
        value = body.get(unsupported)
        if value and not (isinstance(value, dict) and value.get("type") == "disabled"):
            raise AnthropicError(f"{unsupported}: not supported by rbee's Messages API (text chat only).")
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        raise AnthropicError("messages: must be a non-empty list of {role, content}.")
    chat = []
    system = body.get("system")
    if system is not None:
        text = _text(system, "system")
        if text:
            chat.append({"role": "system", "content": text})
    for k, m in enumerate(given):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise AnthropicError(f"messages.{k}.role: must be 'user' or 'assistant' (the system prompt goes in "
                                 "'system').")
        chat.append({"role": m["role"], "content": _text(m.get("content"), f"messages.{k}.content")})
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)):
        raise AnthropicError("stop_sequences: must be a list of non-empty strings.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise AnthropicError("stream: must be true or false.")
    fields: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens,
                              "temperature": _number(body, "temperature", 0, 1) if "temperature" in body
                              else DEFAULT_TEMPERATURE,
                              "top_p": _number(body, "top_p", 0, 1),
                              "top_k": _number(body, "top_k", 0, 1 << 20, integer=True),
                              "stop": stops or None}
    try:
        operation = parse_message(Infer, {k: v for k, v in fields.items() if v is not None})
    except InvalidRequest as exc:
        raise AnthropicError(f"{exc.field}: {exc.problem}." if exc.field and exc.problem else exc.message) from None
    return operation, stream


def stop_of(result: dict[str, Any], operation: Infer) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for a generation's result."""
    if result.get("stop_reason") == "length":
        return "max_tokens", None
    matched = result.get("stop_sequence")  # the stop string that ended it, when the worker says so
    if matched and operation.stop and matched in operation.stop:
        return "stop_sequence", matched
    return "end_turn", None


def message(message_id: str, model: str, text: str | None, stop: tuple[str | None, str | None],
            input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": stop[0], "stop_sequence": stop[1],
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


def _failure(job: Job) -> web.Response:
    error = job.error or {"code": "CANCELLED", "message": f"The generation ended {job.state.value}."}
    if error["code"] in CLIENT_MISTAKES:  # found only once a worker saw it (its context, its template)
        return anthropic_error(404 if error["code"] == "MODEL_NOT_FOUND" else 400, error["message"])
    return anthropic_error(500, error["message"], "api_error")


async def whole_response(request: web.Request, job: Job, message_id: str, operation: Infer) -> web.Response:
    await until_finished(request, job)
    if job.state is not JobState.COMPLETED:
        return _failure(job)
    result = job.result or {}
    return web.json_response(message(message_id, operation.model, result.get("text", ""), stop_of(result, operation),
                                     result.get("prompt_tokens") or 0, result.get("tokens_out") or 0))


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n"


async def stream_response(request: web.Request, job: Job, message_id: str, operation: Infer) -> web.StreamResponse:
    """message_start, content_block_start, ping, content_block_delta…, content_block_stop, message_delta,
    message_stop, as Anthropic sends them (input_tokens, known only at the end, come in message_delta)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        await resp.write((sse("message_start", {"message": message(message_id, operation.model, None, (None, None),
                                                                    0, 0)})
                          + sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                          + sse("ping", {})).encode())
        async for batch in job.follow():
            out = []
            for _, encoded in batch:
                event = json.loads(encoded)
                if event["type"] == "token":
                    out.append(sse("content_block_delta", {"index": 0,
                                                           "delta": {"type": "text_delta", "text": event["t"]}}))
            if out:
                await resp.write("".join(out).encode())
        if job.state is JobState.COMPLETED:
            result = job.result or {}
            reason, sequence = stop_of(result, operation)
            await resp.write((sse("content_block_stop", {"index": 0})
                              + sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
                                                      "usage": {"input_tokens": result.get("prompt_tokens") or 0,
                                                                "output_tokens": result.get("tokens_out") or 0}})
                              + sse("message_stop", {})).encode())
        else:
            failure = json.loads(_failure(job).text or "{}")
            await resp.write(f"event: error\ndata: {json.dumps(failure)}\n\n".encode())
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        # The client went away mid-stream: its generation stops now, freeing the worker (no error to log).
        if not job.state.finished:
            request.app[appkeys.JOB_REGISTRY].cancel(job.id)
    except asyncio.CancelledError:
        if not job.state.finished:
            request.app[appkeys.JOB_REGISTRY].cancel(job.id)
        raise
    return resp
