"""Running a job on another daemon (a hive's job API, a worker's inference API) as part of a queen job:
submit, weave its events into the queen job's stream, cancel it when the queen job is cancelled, and
turn how it ended into a result or a failure. Hive operations and inference both go through here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any, Callable

from queen.errors import QueenError
from shared.client import DaemonClient
from shared.errors import RbeeError, ServerUnreachable, StreamTimeout
from shared.events import End, Error, Event, JobState, Narration, current_job_id, detached_task, emit
from shared.job_client import JobClient
from shared.wire import WireMessage

CANCEL_GRACE_S = 0.5  # how long a cancelled queen job waits for the remote job to confirm its cancel


class RemoteJobFailed(QueenError):
    """The remote job ended failed or cancelled; `reported` when its error event is already in the stream."""

    title = "Remote job failed"
    code = "HIVE_JOB_FAILED"
    status = 502


class RemoteJobLost(QueenError):
    """The remote daemon did not take the job, or its stream broke and could not be resumed."""

    title = "Remote daemon lost"
    code = "REMOTE_LOST"
    status = 502

    def __init__(self, message: str, *, submitted: bool) -> None:
        super().__init__(message)
        self.submitted = submitted


def weave(event: Event) -> None:
    """Forward a remote event into the current queen job: one story, narration under the queen's job id."""
    if isinstance(event, Narration) and (queen_job := current_job_id()):
        event = dataclasses.replace(event, job_id=queen_job)
    emit(event)


async def run_remote_job(client: JobClient, request: WireMessage, *,
                         on_event: Callable[[Event], None] = weave,
                         failed_code: str = "HIVE_JOB_FAILED") -> dict[str, Any]:
    """Submit `request`, hand every event but `end` to `on_event`, and return the end stats.

    Raises RemoteJobFailed when the remote job did not complete, RemoteJobLost when the daemon did not
    answer or its stream broke; an error the daemon answered at submit (queue full, bad request) is
    raised as it came. Cancelling the caller cancels the remote job.
    """
    job = client.run(request)  # submit and stream in one request
    end: End | None = None
    last_error: Error | None = None
    try:
        async for event in job:
            if isinstance(event, End):
                end = event
                continue
            if isinstance(event, Error):
                last_error = event
            on_event(event)
    except asyncio.CancelledError:
        # Cancel it there too; wait for that a moment only: a hung daemon must not hold the cancel up.
        # (Cancelled before the daemon answered: it cancels a job whose reader left, or runs a short one.)
        if job.job_id is not None:
            cancel = detached_task(_cancel_quietly(client, job.job_id), name=f"cancel-{job.job_id}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(cancel), CANCEL_GRACE_S)
        raise
    except (ServerUnreachable, StreamTimeout) as exc:
        if job.job_id is None:
            raise RemoteJobLost(f"{client.base_url} did not take the job: {exc.message}", submitted=False) from exc
        raise RemoteJobLost(f"the stream from {client.base_url} broke ({exc.message})", submitted=True) from exc
    except RbeeError as exc:
        if job.job_id is None:
            raise  # the daemon's answer at submit (queue full, bad request), as it came
        raise RemoteJobLost(f"the stream from {client.base_url} broke ({exc.message})", submitted=True) from exc
    if end is None:
        raise RemoteJobLost(f"{client.base_url} ended the stream without finishing", submitted=True)
    if end.state is not JobState.COMPLETED:
        if last_error is not None:
            raise RemoteJobFailed(last_error.message, code=last_error.code, status=last_error.status,
                                  reported=True)
        if end.state is JobState.CANCELLED:  # not by us (that is a CancelledError here): it is going away
            raise RemoteJobFailed(f"{client.base_url} cancelled the {request.name} (is it shutting down?)",
                                  code="REMOTE_CANCELLED")
        raise RemoteJobFailed(f"the {request.name} ended {end.state}", code=failed_code)
    return dict(end.stats)


async def _cancel_quietly(client: JobClient, job_id: str) -> None:
    # the daemon may have finished or gone, or we are shutting down: the cancel was best effort
    with contextlib.suppress(RbeeError, RuntimeError):
        await client.cancel(job_id)


async def hive_answers(client: DaemonClient, alias: str) -> bool:
    """True when a hive answers /health at the client's URL as `alias` (not some other service there)."""
    return await hive_health(client, alias) is not None


async def hive_health(client: DaemonClient, alias: str) -> dict[str, Any] | None:
    """What a hive's /health at the client's URL says (its GPUs among it), when it is `alias`; else None."""
    health = await client.health_or_none()
    return health if health is not None and health.get("hive_id") == alias else None
