"""The job API of SPEC.md, mounted on any daemon's app with that daemon's executor.

    POST   /v1/jobs                 -> 201 {"job_id", "sse_url"}; with `Accept: text/event-stream`, the
                                       job's stream at once (its id in X-Rbee-Job-Id): one request, not two
    GET    /v1/jobs/{job_id}/stream -> text/event-stream, replayed from the start or after Last-Event-ID
    GET    /v1/jobs/{job_id}        -> the job's state
    GET    /v1/jobs                 -> recent jobs
    DELETE /v1/jobs/{job_id}        -> cancel

The worker mounts the same routes under /v1/inference with its own request type.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import sys
from typing import Any, AsyncIterator, Awaitable, Callable, Collection

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from shared import appkeys
from shared.errors import InvalidRequest, JobNotFound
from shared.events import DONE_FRAME, JOB_ID_HEADER, sse_frame
from shared.http import read_json
from shared.job_registry import Cursor, Executor, Job, JobLimits, JobRegistry
from shared.operations import Operation, parse_operation

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # aiohttp depends on async-timeout before 3.11
    from async_timeout import timeout

CANCEL_WAIT_S = 10.0  # DELETE waits this long for the job to end before answering 202 "still ending"
SSE_PING_S = 5.0  # keeps idle streams alive (a long prompt's prefill) and lets readers tell a hung peer
SSE_SEND_TIMEOUT_S = 30.0  # a reader that takes nothing for this long is cut (it can resume later)

Parse = Callable[[Any], "Operation | Awaitable[Operation]"]
Admit = Callable[[JobRegistry], None]
Submit = Callable[[web.Request, Operation], Job]


def setup_job_api(
    app: web.Application,
    executor: Executor,
    *,
    actor: str,
    operations: Collection[str] | None = None,
    limits: JobLimits = JobLimits(),
    max_running: int | None = None,
    path: str = "/v1/jobs",
    parse: Parse | None = None,
    admit: Admit | None = None,
    abandon_after_s: float | None = None,
    submit: Submit | None = None,
) -> None:
    """Add the job routes, and a registry whose jobs are all ended on shutdown.

    `operations` restricts what this daemon accepts (a hive takes only worker_* and model_*); `parse`
    replaces operation parsing entirely (the worker's inference requests). `admit` may refuse a new job
    (raise a 503 RbeeError) before it is created. With `abandon_after_s`, a job whose every reader has
    left is cancelled after that long; without it, jobs run on when readers leave. `submit` replaces
    the registry's own (the queen's checks the caller's rights and limits, and records the job's owner);
    a request that carries appkeys.REQUEST_OWN_ONLY sees only the jobs of its REQUEST_OWNER. When the app holds a
    history (appkeys.JOB_HISTORY), GET /v1/jobs and GET /v1/jobs/{id} also answer for jobs the registry
    no longer holds.
    """
    allowed = frozenset(operations) if operations is not None else None
    parse_request: Parse = parse or (lambda data: parse_operation(data, allowed=allowed))

    async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
        registry = JobRegistry(executor, actor=actor, limits=limits, max_running=max_running)
        app[appkeys.JOB_REGISTRY] = registry
        evictor = asyncio.create_task(registry.evict_forever(), name="job-evictor")
        yield
        evictor.cancel()
        await registry.cancel_all()
        with contextlib.suppress(asyncio.CancelledError):
            await evictor

    async def end_jobs(app: web.Application) -> None:
        # Runs before the server waits for its handlers: every stream follows a job, so ending the
        # jobs lets each stream send its `end` and `[DONE]` and close. A reader that stopped reading
        # is cut by the send timeout.
        await app[appkeys.JOB_REGISTRY].cancel_all()

    def cancel_if_abandoned_later(registry: JobRegistry, job: Job) -> None:
        """With `abandon_after_s`: cancel the job if it still has no reader that much later."""
        if abandon_after_s is None or job.readers or job.state.finished:
            return

        def cancel_if_still_abandoned() -> None:
            if not job.readers and not job.state.finished:
                registry.cancel(job.id)

        asyncio.get_running_loop().call_later(abandon_after_s, cancel_if_still_abandoned)

    async def create_job(request: web.Request) -> web.StreamResponse:
        operation = parse_request(await read_json(request))
        if inspect.isawaitable(operation):  # a parser that must leave the loop (a worker tokenizing)
            operation = await operation
        registry = request.app[appkeys.JOB_REGISTRY]
        if admit is not None:
            admit(registry)
        job = registry.submit(operation) if submit is None else submit(request, operation)
        if "text/event-stream" in request.headers.get("Accept", ""):
            # The caller reads the stream in this same request (what the queen does with workers and hives):
            # a burst of requests reaches the worker sooner, and a dropped stream resumes with GET as usual.
            return await _follow(request, registry, job, -1)
        cancel_if_abandoned_later(registry, job)  # a client that never comes to read
        return web.json_response({"job_id": job.id, "sse_url": f"{path}/{job.id}/stream"}, status=201)

    async def stream_job(request: web.Request) -> web.StreamResponse:
        registry = request.app[appkeys.JOB_REGISTRY]
        job = registry.get(request.match_info["job_id"], owner=appkeys.visible_owner(request))
        return await _follow(request, registry, job, _last_event_id(request))

    async def _follow(request: web.Request, registry: JobRegistry, job: Job, after: int) -> web.StreamResponse:
        job.readers += 1
        try:
            return await _stream(request, job, after)
        finally:
            job.readers -= 1
            cancel_if_abandoned_later(registry, job)

    async def _stream(request: web.Request, job: Job, after: int) -> web.StreamResponse:
        # send_timeout=None: _write applies our own timeout to each batch.
        async with sse_response(request, ping_interval=SSE_PING_S, send_timeout=None, allow_all_methods=True,
                                headers={JOB_ID_HEADER: job.id}) as stream:
            # Frames are written in batches (one write for everything already logged) rather than one
            # send per event: fewer syscalls, and a reader that is behind catches up quickly.
            done_sent = False
            async for batch in job.follow(after):
                text = "".join(sse_frame(encoded, seq) for seq, encoded in batch)
                if job.state.finished and batch[-1][0] == job.next_seq - 1:
                    text += DONE_FRAME  # the common case for short jobs: the whole story in one write
                    done_sent = True
                await _write(request, stream, text)
            if not done_sent:
                await _write(request, stream, DONE_FRAME)
        return stream

    async def get_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        owner = appkeys.visible_owner(request)
        try:
            return web.json_response(request.app[appkeys.JOB_REGISTRY].get(job_id, owner=owner).summary())
        except JobNotFound:
            history = request.app.get(appkeys.JOB_HISTORY)
            if history is not None and (record := await history.get(job_id, owner=owner)) is not None:
                return web.json_response(record)
            raise

    async def list_jobs(request: web.Request) -> web.Response:
        """The newest jobs first, `limit` at a time (`before`: the `next_before` of the previous page, a
        cursor of creation time and job id, so jobs made in the same instant are neither lost nor
        repeated); light records: what each is `about`, no request or answer (GET /v1/jobs/{id}).
        Read-only jobs (lists, status) only with `all=true`."""
        limit = _int_query(request, "limit", LIST_DEFAULT, 1, LIST_MAX)
        before = _cursor_query(request, "before")
        everything = request.query.get("all", "").lower() in ("1", "true", "yes")
        owner = appkeys.visible_owner(request)
        live = [j.summary(full=False) for j in request.app[appkeys.JOB_REGISTRY].jobs()
                if (before is None or (j.created_at, j.id) < before) and (everything or not j.operation.read_only)
                and (owner is None or j.owner == owner)]
        history = request.app.get(appkeys.JOB_HISTORY)
        if history is not None:
            seen = {j["job_id"] for j in live}
            live += [r for r in await history.list(limit=limit, before=before, owner=owner) if r["job_id"] not in seen]
        live.sort(key=lambda j: (j["created_at"], j["job_id"]), reverse=True)
        page = live[:limit]
        more = len(live) > limit or (history is not None and len(page) == limit)
        next_before = f"{page[-1]['created_at']!r}~{page[-1]['job_id']}" if more else None
        return web.json_response({"jobs": page, "next_before": next_before})

    async def cancel_job(request: web.Request) -> web.Response:
        job = request.app[appkeys.JOB_REGISTRY].cancel(request.match_info["job_id"],
                                                       owner=appkeys.visible_owner(request))
        # Answer with the outcome when the job ends promptly (it normally does within a token).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(job.wait()), CANCEL_WAIT_S)
        return web.json_response(job.summary(), status=200 if job.state.finished else 202)

    app.cleanup_ctx.append(registry_ctx)
    app.on_shutdown.append(end_jobs)
    app.router.add_post(path, create_job)
    app.router.add_get(path, list_jobs)
    app.router.add_get(path + "/{job_id}", get_job)
    app.router.add_delete(path + "/{job_id}", cancel_job)
    app.router.add_get(path + "/{job_id}/stream", stream_job)


async def _write(request: web.Request, stream: EventSourceResponse, text: str) -> None:
    """Write SSE frames; a reader that takes nothing for SSE_SEND_TIMEOUT_S is cut (it may resume)."""
    try:
        async with timeout(SSE_SEND_TIMEOUT_S):
            await stream.write(text.encode())
    except asyncio.TimeoutError:
        stream.stop_streaming()
        if request.transport is not None:
            request.transport.abort()
        raise


LIST_DEFAULT, LIST_MAX = 100, 1000


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
        raise InvalidRequest(f"Query parameter '{name}' must be a whole number from {lo} to {hi}, not {raw!r}.")
    return int(raw)




def _cursor_query(request: web.Request, name: str) -> Cursor | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    stamp, _, job_id = raw.partition("~")
    try:
        value = float(stamp)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise InvalidRequest(f"Query parameter '{name}' must be a list's next_before, not {raw!r}.")
    return value, job_id or "\uffff"  # a bare time: everything made before it


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return -1
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"Last-Event-ID must be an event number, not {raw!r}.") from None
    if value < -1:
        raise InvalidRequest(f"Last-Event-ID must not be negative, not {value}.")
    return value
