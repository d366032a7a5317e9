"""`create_app(config, token)`: the queen's aiohttp application.

Resources, each owned by a cleanup_ctx: the HTTP client session, the job history (SQLite), the hive
registry (stops the hives this queen started), and the idle-worker reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from queen.config import QueenConfig
from queen.executor import QueenExecutor
from queen.forwarding import forward
from queen.history import JobHistoryStore
from queen.hives import HiveRegistry
from queen.inference import InferenceRunner
from queen.openai_api import setup_openai_api
from queen.scheduler import Scheduler
from queen.worker_registry import WorkerRegistry
from shared import __version__
from shared import appkeys as shared_keys
from shared.app import create_base_app
from shared.job_routes import setup_job_api
from shared.operations import WorkerDelete

log = logging.getLogger("rbee.queen")


@dataclass
class QueenState:
    """What exists only while the queen runs (filled in by queen_ctx)."""

    url: str
    executor: QueenExecutor | None = None
    history: JobHistoryStore | None = None


CONFIG = web.AppKey("queen_config", QueenConfig)
STATE = web.AppKey("queen_state", QueenState)
SHUTDOWN_REQUESTED = web.AppKey("queen_shutdown_requested", asyncio.Event)


class _History:
    """Read-through to the SQLite history once it is open (the job routes consult it)."""

    def __init__(self, state: QueenState) -> None:
        self._state = state

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._state.history.get(job_id) if self._state.history else None

    def list(self) -> list[dict[str, Any]]:
        return self._state.history.list() if self._state.history else []


def create_app(config: QueenConfig, token: str) -> web.Application:
    app = create_base_app(token)
    app[CONFIG] = config
    state = app[STATE] = QueenState(url=f"http://{config.host}:{config.port}")
    app[SHUTDOWN_REQUESTED] = asyncio.Event()

    async def execute(operation, job):
        assert state.executor is not None
        return await state.executor(operation, job)

    setup_job_api(app, execute, actor="queen", history=_History(state))

    def running_hive_urls() -> list[str]:
        hives = state.executor.hives.all() if state.executor else []
        return [h.url for h in hives if h.url and h.state == "running"]

    setup_openai_api(app, running_hive_urls)
    app.cleanup_ctx.append(queen_ctx)  # after the job registry's, so it can hook into it
    app.router.add_get("/v1/info", info)
    app.router.add_post("/v1/workers/heartbeat", heartbeat)
    app.router.add_get("/v1/workers", list_workers)
    app.router.add_get("/v1/hives", list_hives)
    app.router.add_post("/v1/shutdown", shutdown)
    return app


async def queen_ctx(app: web.Application) -> AsyncIterator[None]:
    config, state, token = app[CONFIG], app[STATE], app[shared_keys.TOKEN]
    jobs = app[shared_keys.JOB_REGISTRY]
    history = JobHistoryStore(config.paths.data_dir / "queen.db")
    state.history = history
    jobs.on_submit(history.record)
    jobs.on_finish(history.record)
    async with aiohttp.ClientSession() as session:
        workers = WorkerRegistry(config.heartbeat_timeout_s)
        hives = HiveRegistry(config, token, session, queen_url=lambda: state.url)
        scheduler = Scheduler(config, hives, workers, session, token)
        runner = InferenceRunner(scheduler, workers, session, token)
        state.executor = QueenExecutor(hives, workers, runner, session, token, jobs, config.paths.data_dir)
        reaper = asyncio.create_task(reap_idle_workers(config, hives, workers, session, token))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await jobs.cancel_all()
            await hives.close()
            history.close()


async def reap_idle_workers(config: QueenConfig, hives: HiveRegistry, workers: WorkerRegistry,
                            session: aiohttp.ClientSession, token: str) -> None:
    """Stop workers idle longer than the configured time (their memory is worth more than warmth)."""
    period = max(1.0, min(60.0, config.worker_idle_timeout_s / 4))
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        for worker in workers.all():
            if worker.alive and worker.leased_by is None and now - worker.last_used > config.worker_idle_timeout_s:
                log.info("stopping %s: idle for %.0f s", worker.worker_id, now - worker.last_used)
                try:
                    url = await hives.ensure_running(worker.hive_id)
                    await forward(session, url, token, WorkerDelete(hive_id=worker.hive_id, id=worker.worker_id))
                except Exception as exc:  # keep reaping the others
                    log.warning("could not stop idle worker %s: %s", worker.worker_id, exc)
                workers.forget(worker.worker_id)


async def info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"name": "queen-rbee", "version": __version__, "url": state.url, "pid": os.getpid(),
                              "features": ["jobs", "infer", "local_hive", "heartbeats", "history"]})


async def heartbeat(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.executor is not None
    worker = state.executor.workers.heartbeat(await request.json())
    return web.json_response({"ok": True, "worker_id": worker.worker_id})


async def list_workers(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.executor is not None
    return web.json_response({"workers": [w.to_dict() for w in state.executor.workers.all()]})


async def list_hives(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.executor is not None
    hives = state.executor.hives
    return web.json_response({"hives": [await hives.status(h.alias) for h in hives.all()]})


async def shutdown(request: web.Request) -> web.Response:
    request.app[SHUTDOWN_REQUESTED].set()
    return web.json_response({"status": "shutting down"}, status=202)
