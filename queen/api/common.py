"""What every API on the queen shares, so each API is only a request converter and a renderer:

- reading the body (`read_body`) and checking its model (`check_model`) before a job is made;
- following a job as typed events (`follow`), and streaming it through a `Renderer` (`stream`), with
  streamed text that may be a tool call held back (queen/api/tool_calls.py);
- waiting for a whole answer (`until_finished`, `wait_for_answer`);
- a client that leaves cancels its job (`cancel_if_client_leaves`, and `watch_client` while a stream waits);
- the HTTP status of a failed job, taken from its recorded error (`Failure`).

Each API answers its errors in its own shape: `api_route` turns an RbeeError a handler raises into that
shape, with the status the error carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import aiohttp
from aiohttp import web

from queen.api.tool_calls import ToolCallHoldBack
from queen.appkeys import HIVES, KNOWN_MODELS
from shared import appkeys
from shared.errors import InvalidRequest, RbeeError
from shared.events import End, Error, Event, JobState, Token, event_from_dict
from shared.http import client_gone
from shared.job_registry import Job
from shared.models import parse_reference

CLIENT_LEFT = 499  # nginx's "client closed request": the job was cancelled before it answered

# (status, code, message, param) -> the error in an API's own shape
ErrorResponse = Callable[[int, str, str, "str | None"], web.Response]


class ApiError(InvalidRequest):
    """A request an API refuses before any job is made; `field` names the offending parameter."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, field=field, status=status, code=code)


class UnknownModel(ApiError):
    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist on any running hive (GET /v1/models lists them).",
                         status=404, field="model", code="MODEL_NOT_FOUND")


def api_route(error_response: ErrorResponse,
              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`handler`, with the RbeeErrors it raises answered in its API's shape (status, code, field)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RbeeError as exc:
            return error_response(exc.status, exc.code, exc.message, getattr(exc, "field", None))

    return handle


# --- requests --------------------------------------------------------------------------------------------


async def read_body(request: web.Request, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request's JSON object; `empty` stands for an empty body when given (else it is bad JSON)."""
    raw = await request.read()
    if not raw and empty is not None:
        return dict(empty)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[…
        raise ApiError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError("The body must be a JSON object.")
    return body


def canonical(model: str) -> str:
    """The catalog id of a model reference (`file:~/m.gguf` is `file:/home/me/m.gguf`)."""
    try:
        return parse_reference(model).id
    except InvalidRequest:
        return model  # not a reference at all: it will not be found either


async def known_models(app: web.Application, max_age_s: float = 0.0) -> list[str]:
    return await app[KNOWN_MODELS].ids(app.get(HIVES), max_age_s)


async def check_model(app: web.Application, model: str) -> None:
    """UnknownModel (404) unless a running hive had `model` (an id, a reference or an alias) when last asked,
    or has it now."""
    if not await app[KNOWN_MODELS].has(app.get(HIVES), canonical(model)):
        raise UnknownModel(model)


# --- jobs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why a job did not complete, and the HTTP status that says whose fault it was (recorded with the
    error by whichever daemon raised it)."""

    status: int
    code: str
    message: str

    @classmethod
    def of(cls, job: Job, state: JobState | None = None) -> Failure:
        state = state or job.state
        if job.error is not None:
            return cls(int(job.error.get("status") or 500), job.error["code"], job.error["message"])
        if state is JobState.CANCELLED:
            return cls(CLIENT_LEFT, "CANCELLED", "The request was cancelled before it finished.")
        return cls(500, "FAILED", f"The request ended {state.value}.")


async def follow(job: Job) -> AsyncIterator[list[Event]]:
    """The job's events, decoded, in the batches its log hands out (one write per batch)."""
    async for batch in job.follow():
        yield [decode(encoded) for _, encoded in batch]


def decode(encoded: str) -> Event:
    """An event of the job's log; a token (nearly all of them) the short way."""
    d = json.loads(encoded)
    if d.get("type") == "token" and "ids" not in d:
        return Token(t=d["t"], i=d["i"], logprobs=d.get("logprobs"))
    return event_from_dict(d)


def cancel(request: web.Request, job: Job) -> None:
    if not job.state.finished:
        request.app[appkeys.JOB_REGISTRY].cancel(job.id)


@contextlib.asynccontextmanager
async def cancel_if_client_leaves(request: web.Request, job: Job) -> AsyncIterator[None]:
    """A client that goes away mid-answer cancels its job, freeing the worker; its leaving is no error."""
    try:
        yield
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        cancel(request, job)
    except asyncio.CancelledError:
        cancel(request, job)
        raise


async def until_finished(request: web.Request, job: Job) -> Job:
    """The job once it ended, for a handler that answers with its result. aiohttp does not cancel a
    handler whose client left, so it is looked for: a client that goes away cancels its job."""
    registry = request.app[appkeys.JOB_REGISTRY]
    while not job.state.finished:
        try:
            await asyncio.wait_for(asyncio.shield(job.wait()), 0.5)
        except asyncio.TimeoutError:
            if client_gone(request) and not job.state.finished:
                registry.cancel(job.id)
                await job.wait()
        except asyncio.CancelledError:
            cancel(request, job)
            raise
    return job


async def wait_for_answer(request: web.Request, job: Job, *, logprobs: bool = False
                          ) -> tuple[Failure | None, list[dict[str, Any]]]:
    """Wait for the whole answer: None and its tokens' log-probabilities (when asked), or its Failure.
    The log-probabilities are read while it runs: a long answer's first events may not be kept."""
    entries: list[dict[str, Any]] = []

    async def collect() -> None:
        async for events in follow(job):
            for event in events:
                if isinstance(event, Token) and event.logprobs:
                    entries.extend(event.logprobs)

    collector = asyncio.create_task(collect()) if logprobs else None
    try:
        await until_finished(request, job)
        if collector is not None:
            await collector
    finally:
        if collector is not None and not collector.done():
            collector.cancel()
    return (None if job.state is JobState.COMPLETED else Failure.of(job)), entries


# --- streaming -------------------------------------------------------------------------------------------


class Renderer(Protocol):
    """An API's stream: the text for each moment of a job (each may be ""), and its failure as a whole
    response when nothing was sent yet."""

    content_type: str
    headers_at_once: bool  # False: headers wait for the first output, so an early failure gets its status

    def start(self) -> str: ...

    def token(self, token: Token) -> str: ...

    def error(self, error: Error) -> str:
        """An error event mid-stream (the job's end follows it)."""
        ...

    def end(self, end: End, calls: list[dict[str, Any]] | None) -> str:
        """The job completed; `calls`: the tool calls its held-back answer turned out to be."""
        ...

    def failed(self, failure: Failure) -> str:
        """The job failed or was cancelled after the stream began."""
        ...

    def close(self) -> str: ...

    def failure(self, failure: Failure) -> web.Response: ...


CLIENT_CHECK_S = 0.25  # how often a stream that has nothing to write yet looks for its client


async def watch_client(request: web.Request, job: Job) -> None:
    """Cancel `job` as soon as its client leaves, written to or not: a request still waiting for a worker
    (nothing to write yet) gives its place in the queue up at once, not when its first token would fail."""
    while not job.state.finished:
        await asyncio.sleep(CLIENT_CHECK_S)
        if client_gone(request):
            cancel(request, job)
            return


async def stream(request: web.Request, job: Job, renderer: Renderer,
                 tools: list[dict[str, Any]] | None = None) -> web.StreamResponse:
    """Stream `job` as `renderer` says; with `tools`, text that may be a call is held back until it is
    clearly not one, or the answer ends (and is a call)."""
    watcher = asyncio.create_task(watch_client(request, job))
    try:
        return await _stream(request, job, renderer, tools)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _stream(request: web.Request, job: Job, renderer: Renderer,
                  tools: list[dict[str, Any]] | None) -> web.StreamResponse:
    resp: web.StreamResponse | None = None
    hold = ToolCallHoldBack(tools)

    async def send(text: str) -> None:
        nonlocal resp
        if resp is None:
            resp = web.StreamResponse(headers={"Content-Type": renderer.content_type, "Cache-Control": "no-cache"})
            await resp.prepare(request)
        if text:
            await resp.write(text.encode())

    async with cancel_if_client_leaves(request, job):
        first = renderer.start()
        if renderer.headers_at_once or first:
            await send(first)
        async for batch in job.follow():  # not through follow(): one async generator less per batch
            out: list[str] = []
            for _, encoded in batch:
                event = decode(encoded)
                if isinstance(event, Token):
                    if (released := hold.feed(event)) is not None:
                        out.append(renderer.token(released))
                elif isinstance(event, Error):
                    if (released := hold.release()) is not None:
                        out.append(renderer.token(released))
                    out.append(renderer.error(event))
                elif isinstance(event, End):
                    if event.state is JobState.COMPLETED:
                        released, calls = hold.finish()
                        if released is not None:
                            out.append(renderer.token(released))
                        out.append(renderer.end(event, calls))
                    elif resp is None and not "".join(out):
                        return renderer.failure(Failure.of(job, event.state))  # nothing sent: a proper status
                    else:
                        out.append(renderer.failed(Failure.of(job, event.state)))
            text = "".join(out)
            if text:
                await send(text)
        await send(renderer.close())
        assert resp is not None
        await resp.write_eof()
    return resp if resp is not None else web.Response(status=CLIENT_LEFT)
