"""`infer`: lease a worker, run the generation on it, forward its tokens into the queen's job."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from queen.errors import ForwardedFailure, WorkerCrashed
from queen.scheduler import Scheduler
from queen.worker_registry import WorkerInfo, WorkerRegistry
from shared.errors import RbeeError
from shared.events import End, Error, Token, emit, narrate
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from shared.job_registry import Job
from shared.operations import Infer

SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")


def canonical_model(reference: str) -> str:
    """The catalog id a hive gives this reference (what workers report in heartbeats)."""
    from hive.models import parse_reference  # pure parsing; no I/O

    return parse_reference(reference).id


class InferenceRunner:
    def __init__(self, scheduler: Scheduler, workers: WorkerRegistry, session: aiohttp.ClientSession,
                 token: str) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self._session = session
        self._token = token

    async def infer(self, op: Infer, job: Job) -> dict[str, Any]:
        started = time.perf_counter()
        model = canonical_model(op.model)
        worker = await self.scheduler.acquire(model, op.hive_id, job.id)
        try:
            return await self._generate(worker, op, started)
        finally:
            if worker.leased_by == job.id:
                self.workers.release(worker)

    async def _generate(self, worker: WorkerInfo, op: Infer, started: float) -> dict[str, Any]:
        fields = {k: getattr(op, k) for k in SAMPLING_FIELDS if getattr(op, k) is not None}
        request = InferenceRequest(prompt=op.prompt, messages=op.messages, **fields)
        client = JobClient(worker.url, self._token, session=self._session, path="/v1/inference",
                           max_resumes=1, resume_backoff=0.05)
        try:
            submitted = await client.submit(request)
        except RbeeError as exc:
            if exc.code in ("QUEUE_FULL", "NOT_READY", "INVALID_REQUEST"):
                raise
            self._lost(worker)
            raise WorkerCrashed(f"Worker {worker.worker_id} on hive {worker.hive_id} did not take the request: "
                                f"{exc.message} The next request will use a fresh worker.") from exc
        narrate("infer_start", f"Generating on {worker.worker_id} ({worker.model})", target=worker.worker_id)
        parts: list[str] = []
        first_token_at: float | None = None
        end: End | None = None
        error: Error | None = None
        try:
            async for event in client.stream(submitted.job_id):
                if isinstance(event, Token):
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    parts.append(event.t)
                    emit(event)
                elif isinstance(event, End):
                    end = event
                elif isinstance(event, Error):
                    error = event
                    emit(event)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(client, submitted.job_id))
            raise
        except RbeeError as exc:  # the stream broke and could not be resumed: the worker is gone
            self._lost(worker)
            raise WorkerCrashed(
                f"Worker {worker.worker_id} on hive {worker.hive_id} died mid-generation after {len(parts)} "
                f"tokens ({exc.message}). The next request will start a fresh worker.") from exc
        if end is None:
            self._lost(worker)
            raise WorkerCrashed(f"Worker {worker.worker_id} on hive {worker.hive_id} ended the stream without "
                                f"finishing, after {len(parts)} tokens.")
        if end.state != "completed":
            failure = ForwardedFailure(error.message if error else f"the generation ended {end.state}",
                                       code=error.code if error else "GENERATION_FAILED")
            failure.reported = error is not None
            raise failure
        stats = dict(end.stats)
        return {
            "text": "".join(parts),
            "tokens_out": stats.get("tokens_out"),
            "prompt_tokens": stats.get("prompt_tokens"),
            "ttft_ms": round((first_token_at - started) * 1000, 2) if first_token_at else None,
            "tokens_per_s": stats.get("tokens_per_s"),
            "stop_reason": stats.get("stop_reason"),
            "worker_id": worker.worker_id,
            "hive_id": worker.hive_id,
            "model": worker.model,
        }

    def _lost(self, worker: WorkerInfo) -> None:
        self.workers.mark(worker.worker_id, "crashed")

    @staticmethod
    async def _cancel(client: JobClient, job_id: str) -> None:
        try:
            await client.cancel(job_id)
        except Exception:  # the worker may be gone already
            pass
