"""`create_app(config, token)`: the queen's aiohttp application.

Who may do what is queen/access (API keys, scopes; its middleware sees every request). Resources, each
owned by `queen_ctx` (a cleanup_ctx) and stopped in reverse order: the job history
(SQLite, in its own thread), the HTTP client session, the hive registry (stops the hives this queen
started), the running jobs, and the idle-worker reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from queen.access.middleware import access_middleware, submit_job
from queen.access.routes import setup_access
from queen.api.routes import setup_apis
from queen.appkeys import CLIENTS, CONFIG, CONVERSATIONS, EXECUTOR, HIVES, KNOWN_MODELS, RESPONSES, WORKERS
from queen.config import QueenConfig
from queen.conversation_routes import setup_conversation_api
from queen.conversations import ConversationStore
from queen.executor import QueenExecutor
from queen.history import JobHistoryStore
from queen.hives import HiveRegistry
from queen.hives.backend import HiveState
from queen.inference import InferenceRunner
from queen.metrics import queen_gauges
from queen.model_names import KnownModels
from queen.responses import ResponseStore
from queen.scheduler import Scheduler
from queen.worker_registry import WorkerRegistry
from shared import __version__
from shared import appkeys as shared_keys
from shared.app import create_base_app
from shared.errors import Forbidden, RbeeError, Unauthorized
from shared.heartbeat import HEARTBEAT_PATH, parse_heartbeat
from shared.http import read_json
from shared.job_client import Clients
from shared.job_routes import setup_job_api
from shared.metrics import setup_metrics
from shared.operations import LOCAL_HIVE, WorkerDelete
from shared.settings import config_file
from shared.token import tokens_equal

log = logging.getLogger("rbee.queen")


def create_app(config: QueenConfig, token: str) -> web.Application:
    app = create_base_app(token, auth=access_middleware(token))  # API keys and scopes: queen/access
    app[CONFIG] = config
    app[KNOWN_MODELS] = KnownModels()

    async def execute(operation, job):
        return await app[EXECUTOR](operation, job)

    setup_job_api(app, execute, actor="queen", submit=submit_job)
    setup_apis(app)  # OpenAI's, Ollama's and Anthropic's
    setup_conversation_api(app)
    setup_access(app, config.paths.data_dir / "keys.db")  # before queen_ctx: a key is checked on every request
    app.cleanup_ctx.append(queen_ctx)  # after the job registry's, so it can hook into it
    app.router.add_get("/v1/info", info)
    app.router.add_get("/v1/config", show_config)
    app.router.add_post(HEARTBEAT_PATH, heartbeat)
    app.router.add_get("/v1/workers", list_workers)
    app.router.add_get("/v1/hives", list_hives)
    setup_metrics(app, queen_gauges)
    return app


def queen_url(app: web.Application) -> str:
    """Where hives and workers reach this queen: where it listens (known once bound)."""
    return app[shared_keys.LISTENING].url or app[CONFIG].bind_url


async def queen_ctx(app: web.Application) -> AsyncIterator[None]:
    config, jobs = app[CONFIG], app[shared_keys.JOB_REGISTRY]
    async with contextlib.AsyncExitStack() as resources:
        history = JobHistoryStore(config.paths.data_dir / "queen.db")
        resources.push_async_callback(history.close)
        await history.open()
        app[shared_keys.JOB_HISTORY] = history
        jobs.on_submit(history.record)
        jobs.on_finish(history.record)
        session = await resources.enter_async_context(aiohttp.ClientSession())
        clients = app[CLIENTS] = Clients(session, app[shared_keys.TOKEN])
        workers = app[WORKERS] = WorkerRegistry(config.heartbeat_timeout_s)
        hives = app[HIVES] = HiveRegistry(config, clients, queen_url=lambda: queen_url(app), workers=workers)
        resources.push_async_callback(hives.close)
        resuming = asyncio.create_task(resume_remote_hives(app), name="resume-remote-hives")
        resources.push_async_callback(stop_task, resuming)
        resources.push_async_callback(jobs.cancel_all)  # before the hives they drive are stopped
        runner = InferenceRunner(Scheduler(config, hives, workers), workers, clients,
                                 config.worker_progress_timeout_s)
        conversations = app[CONVERSATIONS] = ConversationStore(config.paths.data_dir / "conversations.db")
        resources.push_async_callback(conversations.close)
        await conversations.open()
        responses = app[RESPONSES] = ResponseStore(config.paths.data_dir / "responses.db")
        resources.push_async_callback(responses.close)
        await responses.open()
        app[EXECUTOR] = QueenExecutor(hives, workers, runner, clients, jobs, config.paths.data_dir, conversations)
        reaper = asyncio.create_task(reap_idle_workers(config, hives, workers), name="idle-worker-reaper")
        resources.push_async_callback(stop_task, reaper)
        yield


async def resume_remote_hives(app: web.Application) -> None:
    """Once the queen listens (the remote forwards point at its port), supervise its remote hives again."""
    await app[shared_keys.LISTENING].bound.wait()
    try:
        app[HIVES].resume()
    except RbeeError as exc:  # a broken hives.conf: said again when a hive is used
        log.warning("could not resume remote hives: %s", exc.message)


async def stop_task(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def reap_idle_workers(config: QueenConfig, hives: HiveRegistry, workers: WorkerRegistry) -> None:
    """Stop workers idle longer than the configured time (their memory is worth more than warmth)."""
    period = max(1.0, min(60.0, config.worker_idle_timeout_s / 4))
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        for worker in workers.all():
            if worker.alive and worker.idle and now - worker.last_used > config.worker_idle_timeout_s:
                log.info("stopping %s: idle for %.0f s", worker.worker_id, now - worker.last_used)
                try:
                    await hives.forward(WorkerDelete(hive_id=worker.hive_id, id=worker.worker_id))
                except RbeeError as exc:  # keep reaping the others
                    log.warning("could not stop idle worker %s: %s", worker.worker_id, exc.message)
                workers.forget(worker.worker_id)


async def info(request: web.Request) -> web.Response:
    return web.json_response({"name": "queen-rbee", "version": __version__, "url": queen_url(request.app),
                              "pid": os.getpid(), "features": ["jobs", "infer", "local_hive", "heartbeats", "history"]})


async def show_config(request: web.Request) -> web.Response:
    """The queen's settings and where each came from (flag, env, rbee.toml, default), and its local hive's
    when it runs (`rbee config show`)."""
    config = request.app[CONFIG]
    hive = request.app[HIVES].get(LOCAL_HIVE)
    local = None
    if hive.state is HiveState.RUNNING and hive.url:
        try:
            local = (await request.app[HIVES].clients_for(LOCAL_HIVE).daemon(hive.url).request(
                "GET", "/v1/config", timeout=2))["hive"]
        except (RbeeError, KeyError, TypeError):  # an older hive, or one going away: told as unknown
            local = None
    return web.json_response({"file": str(config_file(config.paths.config_dir)), "queen": config.settings,
                              "hive": local})


async def heartbeat(request: web.Request) -> web.Response:
    """From the local hive's workers (the queen's token), or relayed by a remote hive (that hive's token,
    good for its own workers only); a remote worker's URL becomes the link's forward to it."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <token>'.")
    beat = parse_heartbeat(await read_json(request))
    hives = request.app[HIVES]
    if not tokens_equal(given.strip(), request.app[shared_keys.TOKEN]):
        hive_token = hives.token_of(beat.hive_id)
        if hive_token is None or not tokens_equal(given.strip(), hive_token):
            raise Unauthorized(f"Wrong bearer token for a heartbeat of hive {beat.hive_id}.")
        known = request.app[WORKERS].get(beat.worker_id)
        if known is not None and known.hive_id != beat.hive_id:  # a hive speaks for its own workers only
            raise Forbidden(f"Worker {beat.worker_id} belongs to hive {known.hive_id}, not {beat.hive_id}.")
        beat = dataclasses.replace(beat, url=await hives.worker_url(beat.hive_id, beat.url))
    request.app[WORKERS].heartbeat(beat)
    return web.json_response({"ok": True, "worker_id": beat.worker_id})


async def list_workers(request: web.Request) -> web.Response:
    return web.json_response({"workers": [w.to_dict() for w in request.app[WORKERS].all()]})


async def list_hives(request: web.Request) -> web.Response:
    return web.json_response({"hives": await request.app[HIVES].statuses()})
