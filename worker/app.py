"""`create_app(config, token)`: the worker's aiohttp application.

Resources, each owned by a cleanup_ctx: the llama engine thread, the heartbeat task (when a queen is
given) and its client session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from shared import appkeys as shared_keys
from shared.app import create_base_app
from worker.appkeys import CONFIG, ENGINE, HEARTBEAT, SHUTDOWN_REQUESTED
from worker.config import WorkerConfig
from worker.engine import LlamaEngine
from worker.heartbeat import Heartbeat, heartbeat_payload
from worker.inference_api import pending_jobs, setup_inference_api



@dataclass
class Advertised:
    """The URL others reach this worker at; known only once the socket is bound (port 0)."""

    url: str


ADVERTISED = web.AppKey("worker_advertised", Advertised)


def create_app(config: WorkerConfig, token: str) -> web.Application:
    app = create_base_app(token, health=health)
    app[CONFIG] = config
    app[SHUTDOWN_REQUESTED] = asyncio.Event()
    app[ADVERTISED] = Advertised(f"http://{config.host}:{config.port}")
    app.cleanup_ctx.append(engine_ctx)
    if config.queen_url:
        app.cleanup_ctx.append(heartbeat_ctx)
    setup_inference_api(app)
    app.router.add_post("/v1/shutdown", shutdown)
    return app


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    def state_changed(state: str) -> None:
        if HEARTBEAT in app:
            app[HEARTBEAT].poke()

    engine = LlamaEngine(app[CONFIG], on_state_change=state_changed)
    app[ENGINE] = engine
    engine.start()
    yield
    await engine.stop()


async def heartbeat_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]

    def payload() -> dict:
        return heartbeat_payload(config.worker_id, config.hive_id, app[ADVERTISED].url, config.model_ref,
                                 app[ENGINE].state, queue_depth(app), config.device)

    heartbeat = Heartbeat(config.queen_url or "", app[shared_keys.TOKEN], payload, config.heartbeat_interval_s)
    app[HEARTBEAT] = heartbeat
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(heartbeat.run(session), name="heartbeat")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def queue_depth(app: web.Application) -> int:
    """Requests waiting behind the one being generated."""
    if shared_keys.JOB_REGISTRY not in app:
        return 0
    return max(0, pending_jobs(app[shared_keys.JOB_REGISTRY]) - (1 if app[ENGINE].state == "busy" else 0))


async def health(request: web.Request) -> web.Response:
    app = request.app
    config = app[CONFIG]
    engine = app[ENGINE]
    body = {
        "status": "ok" if engine.state != "failed" else "error",
        "state": engine.state,
        "worker_id": config.worker_id,
        "model": config.model_ref,
        "device": config.device,
        "threads": config.threads,
        "ctx_size": engine.n_ctx,
        "slots": 1,
        "queue_depth": queue_depth(app),
        "max_queue": config.max_queue,
        "pid": os.getpid(),
    }
    if engine.load_error:
        body["error"] = engine.load_error
    return web.json_response(body)


async def shutdown(request: web.Request) -> web.Response:
    request.app[SHUTDOWN_REQUESTED].set()
    return web.json_response({"status": "shutting down"}, status=202)
