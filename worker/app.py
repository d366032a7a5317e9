"""`create_app(config, token)`: the worker's aiohttp application.

Resources, each owned by a cleanup_ctx: the llama engine thread, and the heartbeat task with its client
(when a queen is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from typing import AsyncIterator

from aiohttp import web

from shared import appkeys as shared_keys
from shared.app import create_base_app
from shared.client import DaemonClient
from shared.heartbeat import EngineState, Heartbeat
from shared.metrics import setup_metrics
from shared.version import PROTOCOL, VERSION, version_fields
from worker.appkeys import CONFIG, ENGINE, GOODBYE, HEARTBEAT
from worker.config import WorkerConfig
from worker.embedder import EmbeddingEngine
from worker.embedding_api import refuse_embeddings, setup_embedding_api
from worker.engine import GenerationEngine
from worker.heartbeat import HeartbeatSender
from worker.inference_api import queue_depth, setup_inference_api
from worker.metrics import worker_gauges


def create_app(config: WorkerConfig, token: str) -> web.Application:
    # The queen re-sends a 1 MB prompt JSON-escaped: non-ASCII text can take three times the bytes.
    app = create_base_app(token, health=health, max_body_bytes=8 << 20)
    app[CONFIG] = config
    app.cleanup_ctx.append(engine_ctx)
    if config.queen_url:
        app.cleanup_ctx.append(heartbeat_ctx)
        app.on_shutdown.append(say_stopping)  # before the job API's own, which ends the generations
    if config.embedding:
        setup_embedding_api(app)
    else:
        setup_inference_api(app)
        refuse_embeddings(app)
    setup_metrics(app, worker_gauges)
    return app


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    def state_changed(state: EngineState) -> None:
        if HEARTBEAT in app:
            app[HEARTBEAT].poke()

    config = app[CONFIG]
    engine: EmbeddingEngine | GenerationEngine
    if config.embedding:
        engine = EmbeddingEngine(config, on_state_change=state_changed)
    else:
        engine = GenerationEngine(config, on_state_change=state_changed)
    app[ENGINE] = engine
    try:
        engine.start()
        yield
    finally:
        await engine.stop()


async def heartbeat_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    listening = app[shared_keys.LISTENING]

    def heartbeat() -> Heartbeat:
        return Heartbeat(worker_id=config.worker_id, hive_id=config.hive_id or "", url=listening.url or "",
                         model=config.model_ref, state=app[ENGINE].state, pid=os.getpid(),
                         queue_depth=queue_depth(app), device=config.device_name, slots=app[ENGINE].slots_total,
                         slots_busy=app[ENGINE].slots_busy, embedding=config.embedding, version=VERSION,
                         protocol=PROTOCOL)

    app[GOODBYE] = lambda: dataclasses.replace(heartbeat(), state=EngineState.STOPPING)

    async with DaemonClient(config.queen_url or "", app[shared_keys.TOKEN]) as queen:
        sender = app[HEARTBEAT] = HeartbeatSender(queen, heartbeat, config.heartbeat_interval_s)
        task = asyncio.create_task(sender.run(listening.bound), name="heartbeat")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def say_stopping(app: web.Application) -> None:
    if HEARTBEAT in app and GOODBYE in app and app[shared_keys.LISTENING].url:
        await app[HEARTBEAT].say_goodbye(app[GOODBYE]())


async def health(request: web.Request) -> web.Response:
    app = request.app
    config = app[CONFIG]
    engine = app[ENGINE]
    body = {
        "status": "ok" if engine.state is not EngineState.FAILED else "error",
        "state": engine.state.value,
        "worker_id": config.worker_id,
        **version_fields(),
        "model": config.model_ref,
        "device": config.device_name,
        "threads": config.threads,
        "ctx_size": engine.n_ctx,
        "slots": engine.slots_total,
        "slots_busy": engine.slots_busy,
        "slots_open": engine.slots_open,
        "queue_depth": queue_depth(app),
        "max_queue": config.max_queue,
        "pid": os.getpid(),
        "embedding": config.embedding,
        "kv_cache_type": config.kv_cache_type,
        "flash_attn": config.flash_attn,
        "gpu_layers": engine.gpu_layers,
        "layers": engine.layers,
        "tensor_split": list(config.tensor_split),
    }
    if isinstance(engine, EmbeddingEngine):
        body.update(dimensions=engine.dimensions, pooling=engine.pooling)
    if engine.load_error:
        body["error"] = engine.load_error
    return web.json_response(body)
