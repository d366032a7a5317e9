"""OpenAI-compatible endpoints on the queen, so any OpenAI client can use your hives:

    GET  /v1/models             every model a running hive has, plus the built-in
    POST /v1/completions        text completion, streamed (`text_completion` chunks) or not
    POST /v1/chat/completions   chat in the model's own template, streamed (`chat.completion.chunk`) or not

Each request runs as an ordinary `infer` job (so it shows in `rbee jobs` and the TUI) through the same
scheduler. Errors come in OpenAI's shape; a client that goes away cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from queen.appkeys import HIVES
from queen.forwarding import run_remote_job
from shared import appkeys
from shared.errors import InvalidRequest, RbeeError
from shared.events import DONE_FRAME, Data, Event, JobState
from shared.inference import SAMPLING_FIELDS
from shared.job_client import JobClient
from shared.job_registry import Job
from shared.models import BUILTIN_MODEL, parse_reference
from shared.operations import Infer, ModelList
from shared.wire import parse_message

PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions"})
MODELS_CACHE_S = 10.0  # a request checks its model against this recent a list (a miss asks the hives again)
# Error codes that mean the request itself was wrong, whichever daemon noticed: a 400, never a 5xx.
CLIENT_MISTAKES = frozenset({"INVALID_REQUEST", "PROMPT_TOO_LONG", "BAD_MODEL_REFERENCE", "NO_CHAT_TEMPLATE",
                             "MODEL_NOT_FOUND"})
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


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

    cache: dict[str, Any] = {"models": [BUILTIN_MODEL], "at": 0.0}

    async def known_models(max_age_s: float = 0.0) -> list[str]:
        """Models of the running hives (asking them takes a job on each: cached for requests)."""
        if time.monotonic() - cache["at"] <= max_age_s:
            return cache["models"]
        hives = app[HIVES]
        # Every hive with an address, not only those seen running: one the queen has not used since it
        # started may well be up; one that is not answers nothing, quickly.
        per_hive = await asyncio.gather(*(hive_models(hives.clients_for(h.alias).jobs(h.url, request_timeout=5),
                                                      h.alias)
                                          for h in hives.all() if h.url and (h.local or hives.token_of(h.alias))))
        models = [BUILTIN_MODEL]
        for ids in per_hive:
            models += [m for m in ids if m not in models]
        cache.update(models=models, at=time.monotonic())
        return models

    async def list_models(request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "rbee"} for m in await known_models()]
        return web.json_response({"object": "list", "data": data})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await handle(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await handle(request, chat=True)

    async def handle(request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            return openai_error(400, f"The body is not valid JSON: {exc}.", "invalid_request_error")
        try:
            operation, stream, include_usage = to_infer(body, chat)
        except OpenAIError as exc:
            return openai_error(exc.status, exc.message, exc.kind, exc.param, exc.code)
        model = canonical(operation.model)
        if model not in await known_models(MODELS_CACHE_S) and model not in await known_models():
            return openai_error(404, f"The model '{operation.model}' does not exist on any running hive "
                                     f"(GET /v1/models lists them).", "invalid_request_error", "model",
                                "model_not_found")
        job = request.app[appkeys.JOB_REGISTRY].submit(operation)
        ids = f"{'chatcmpl' if chat else 'cmpl'}-{job.id.removeprefix('job-')}"
        if stream:
            return await stream_response(request, job, ids, operation.model, chat, include_usage)
        return await whole_response(request, job, ids, operation.model, chat)

    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)


async def hive_models(client: JobClient, alias: str) -> list[str]:
    """The model ids in one hive's catalog; none when it does not answer."""
    found: list[str] = []

    def collect(event: Event) -> None:
        if isinstance(event, Data) and isinstance(event.payload, dict):
            found.extend(str(m["id"]) for m in event.payload.get("models", []) if isinstance(m, dict) and "id" in m)

    try:
        await run_remote_job(client, ModelList(hive_id=alias), on_event=collect)
    except RbeeError:
        return []  # a hive that does not answer has no models to offer right now
    return found


def canonical(model: str) -> str:
    """The catalog id of a model reference (`file:~/m.gguf` is `file:/home/me/m.gguf`)."""
    try:
        return parse_reference(model).id
    except InvalidRequest:
        return model  # not a reference at all: it will not be found either


def to_infer(body: Any, chat: bool) -> tuple[Infer, bool, bool]:
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
        fields["messages"] = [{"role": m.get("role"), "content": _content(m.get("content"))}
                              if isinstance(m, dict) else m for m in messages]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError("'prompt' must be one non-empty string.", param="prompt")
        fields["prompt"] = prompt
    n = body.get("n", 1)
    if n != 1:
        raise OpenAIError("Only n=1 is supported.", param="n")
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
    try:
        operation = parse_message(Infer, fields)
    except InvalidRequest as exc:
        message = f"'{exc.field}' {exc.problem}." if exc.field and exc.problem else exc.message
        raise OpenAIError(message, param=exc.field) from None
    return operation, stream, include_usage


def _content(content: Any) -> Any:
    """OpenAI allows content as a list of parts; rbee's models take text."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content


def _usage(result: dict[str, Any]) -> dict[str, int]:
    prompt, completion = result.get("prompt_tokens") or 0, result.get("tokens_out") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _closed(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def whole_response(request: web.Request, job: Job, ids: str, model: str, chat: bool) -> web.Response:
    registry = request.app[appkeys.JOB_REGISTRY]
    while not job.state.finished:
        try:
            await asyncio.wait_for(asyncio.shield(job.wait()), 0.5)
        except asyncio.TimeoutError:
            if _closed(request):  # the client gave up: stop its generation
                registry.cancel(job.id)
                await job.wait()
        except asyncio.CancelledError:
            registry.cancel(job.id)
            raise
    if job.state is not JobState.COMPLETED:
        error = job.error or {"code": "CANCELLED", "message": f"The generation ended {job.state.value}."}
        if error["code"] in CLIENT_MISTAKES:  # found only once a worker saw it (its context, its template)
            return openai_error(400, error["message"], "invalid_request_error", code=error["code"].lower())
        return openai_error(502 if job.state is JobState.FAILED else 499, error["message"], "server_error",
                            code=error["code"].lower())
    result = job.result or {}
    finish = _FINISH.get(result.get("stop_reason") or "stop", "stop")
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": result.get("text", "")}
    else:
        choice["text"] = result.get("text", "")
    return web.json_response({
        "id": ids, "object": "chat.completion" if chat else "text_completion", "created": int(job.created_at),
        "model": model, "choices": [choice], "usage": _usage(result), "system_fingerprint": None,
    })


async def stream_response(request: web.Request, job: Job, ids: str, model: str, chat: bool,
                          include_usage: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    created = int(job.created_at)
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, *, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else \
                ({} if text is None else {"content": text})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return "data: " + json.dumps({"id": ids, "object": kind, "created": created, "model": model,
                                      "choices": [choice]}, ensure_ascii=False) + "\n\n"

    try:
        if chat:
            await resp.write(chunk(None, None, first=True).encode())
        async for batch in job.follow():
            out = []
            for _, encoded in batch:
                event = json.loads(encoded)
                if event["type"] == "token":
                    out.append(chunk(event["t"], None))
                elif event["type"] == "error":
                    out.append("data: " + json.dumps({"error": {"message": event["message"], "type": "server_error",
                                                                "param": None, "code": event["code"].lower()}})
                               + "\n\n")
                elif event["type"] == "end" and event["state"] == JobState.COMPLETED:
                    out.append(chunk(None, _FINISH.get(event.get("stop_reason") or "stop", "stop")))
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
