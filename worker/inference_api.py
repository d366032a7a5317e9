"""The worker's inference endpoint: the shared job API mounted at /v1/inference, run by the engine.

    POST   /v1/inference                 -> 201 {"job_id", "sse_url"}   (503 when the queue is full)
    GET    /v1/inference/{job_id}/stream -> started, token..., end (tokens_out, ttft_ms, ...), [DONE]
    DELETE /v1/inference/{job_id}        -> stops the generation within one token
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from shared import appkeys as shared_keys
from shared.errors import InvalidRequest
from shared.heartbeat import EngineState
from shared.inference import parse_inference_request
from shared.job_registry import Job, JobRegistry
from shared.job_routes import setup_job_api
from worker.appkeys import CONFIG, ENGINE
from worker.decoding import PreparedRequest, end_stats
from worker.engine import GenerationEngine
from worker.errors import NotReady, QueueFull


def pending_jobs(registry: JobRegistry) -> int:
    return sum(1 for job in registry.jobs() if not job.state.finished)


def queue_depth(app: web.Application) -> int:
    """Requests waiting for a slot (the heartbeat, /health and /metrics report it)."""
    if shared_keys.JOB_REGISTRY not in app:
        return 0
    return max(0, pending_jobs(app[shared_keys.JOB_REGISTRY]) - app[ENGINE].slots_busy)


def generation_engine(app: web.Application) -> GenerationEngine:
    engine = app[ENGINE]
    assert isinstance(engine, GenerationEngine)  # setup_inference_api is mounted on generating workers only
    return engine


def setup_inference_api(app: web.Application) -> None:
    config = app[CONFIG]

    async def parse(data: Any) -> PreparedRequest:
        request = parse_inference_request(data)
        engine = generation_engine(app)
        if request.max_tokens >= engine.n_ctx and not (request.fill_context or request.count_only):
            problem = f"must be smaller than the context of a slot of this worker, {engine.n_ctx} tokens"
            raise InvalidRequest(f"Field 'max_tokens' ({request.max_tokens}) {problem}.", field="max_tokens",
                                 problem=problem)
        if engine.state in (EngineState.LOADING, EngineState.FAILED):
            raise NotReady(f"The model is {engine.state}; wait for GET /health to say ready.")
        return await asyncio.to_thread(engine.prepare, request)  # tokenizing a long prompt takes a while

    def admit(registry: JobRegistry) -> None:
        waiting = pending_jobs(registry)
        if waiting >= config.slots_at_most + config.max_queue:  # every slot busy, max_queue waiting for one
            raise QueueFull(f"The worker's queue is full ({config.slots_at_most} slots busy, {config.max_queue} "
                            "requests waiting for one). Retry later, or start a worker with more --parallel "
                            "slots.")

    async def execute(request: PreparedRequest, job: Job) -> dict[str, Any]:
        if request.count_only:  # tokenized and chat-formatted already: that is the answer
            return {**end_stats(0, None, 0.0, "count"), "prompt_tokens": len(request.prompt_tokens),
                    "prompt_tokens_reused": 0, "text": ""}
        def emit(event) -> None:
            if not job.state.finished:  # a late token from the engine after a cancel is dropped
                job.emit(event)

        generation = generation_engine(app).submit(request, job.id, emit)

        async def stop_generation() -> None:
            generation.cancel.set()
            job.result = await generation.done  # the engine stops within one step

        try:
            return await asyncio.shield(generation.done)
        except asyncio.CancelledError:
            job.add_cleanup(stop_generation)
            raise

    setup_job_api(app, execute, actor="worker", path="/v1/inference", parse=parse, admit=admit,
                  abandon_after_s=config.abandon_after_s)
