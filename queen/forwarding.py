"""Run an operation on a hive and weave the hive's events into the current queen job's stream."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp

from queen.errors import ForwardedFailure
from shared.events import End, Error, Narration, current_job_id, emit
from shared.job_client import JobClient
from shared.operations import Operation


async def forward(session: aiohttp.ClientSession, hive_url: str, token: str, operation: Operation) -> dict[str, Any]:
    """Returns the hive job's end stats; raises ForwardedFailure when it failed (its error already shown).

    Cancelling the calling task cancels the hive's job too.
    """
    async with JobClient(hive_url, token, session=session) as client:
        submitted = await client.submit(operation)
        end: End | None = None
        last_error: Error | None = None
        queen_job = current_job_id()
        try:
            async for event in client.stream(submitted.job_id):
                if isinstance(event, End):
                    end = event
                    continue
                if isinstance(event, Narration) and queen_job:
                    event = dataclasses.replace(event, job_id=queen_job)  # one story, under the queen's job
                elif isinstance(event, Error):
                    last_error = event
                emit(event)
        except asyncio.CancelledError:
            await asyncio.shield(_cancel_quietly(client, submitted.job_id))
            raise
    if end is None or end.state != "completed":
        state = end.state if end else "lost"
        message = last_error.message if last_error else f"the hive's {operation.name} job ended {state}"
        failure = ForwardedFailure(message, code=last_error.code if last_error else "HIVE_JOB_FAILED")
        failure.reported = last_error is not None
        raise failure
    return dict(end.stats)


async def _cancel_quietly(client: JobClient, job_id: str) -> None:
    try:
        await client.cancel(job_id)
    except Exception:  # the hive may have finished or gone; the cancel was best effort
        pass


async def hive_answers(session: aiohttp.ClientSession, url: str, alias: str) -> bool:
    """True when a hive answers /health at `url` as `alias` (not some other service on that port)."""
    try:
        async with session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status == 200 and (await resp.json()).get("hive_id") == alias
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return False
