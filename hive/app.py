"""`create_app(config, token)`: the hive's aiohttp application.

Resources, each owned by a cleanup_ctx: the model catalog (SQLite, in its own thread), the worker
supervisor (its client session and every worker process: stopped gracefully on shutdown). Workers'
heartbeats go through the hive to the queen (hive/queen_link.py). /health carries the latest GPU reading
(hive/capabilities.py), never waiting for nvidia-smi: the queen checks it every second.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp import web

from hive.appkeys import CONFIG, EXECUTOR, QUEEN
from hive.capabilities import MACHINE, detect_capabilities
from hive.catalog import ModelCatalog
from hive.config import HiveConfig
from hive.executor import HiveExecutor
from hive.metrics import hive_gauges
from hive.models import ModelStore
from hive.queen_link import QueenLink, setup_queen_routes
from hive.workers import WorkerSupervisor
from shared import appkeys as shared_keys
from shared.app import create_base_app
from shared.job_routes import setup_job_api
from shared.metrics import setup_metrics
from shared.operations import HIVE_OPERATIONS, WorkerSpawn
from shared.prefix_chain import saved_chains
from shared.version import version_fields


def create_app(config: HiveConfig, token: str) -> web.Application:
    app = create_base_app(token, health=health)
    app[CONFIG] = config
    app.cleanup_ctx.append(hive_ctx)

    async def execute(operation, job):
        if isinstance(operation, WorkerSpawn):
            MACHINE.narrate_gpu_problem_once()  # GPUs this llama.cpp cannot use: said in the first spawn's story
        return await app[EXECUTOR](operation, job)

    setup_job_api(app, execute, actor="hive", operations=HIVE_OPERATIONS)
    setup_queen_routes(app, lambda: app[QUEEN])
    app.router.add_get("/v1/capabilities", capabilities)
    app.router.add_get("/v1/prompt-caches", prompt_caches)
    app.router.add_get("/v1/config", show_config)
    setup_metrics(app, hive_gauges)
    return app


async def hive_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    async with contextlib.AsyncExitStack() as resources:
        catalog = ModelCatalog(config.paths.data_dir / "models.db")
        resources.push_async_callback(catalog.close)
        MACHINE.hive_id = config.hive_id
        # GPUs, and (where there are some) whether llama.cpp can offload to them: a child Python imports
        # it (~0.3 s), while the catalog opens.
        detected = asyncio.ensure_future(asyncio.to_thread(detect_capabilities))
        await catalog.open()
        token = app[shared_keys.TOKEN]
        queen = app[QUEEN] = QueenLink(config.hive_id, config.queen_url, token, lambda: supervisor.session)
        # Local workers beat straight to the queen (a hung hive does not make them look lost); a remote
        # hive's go through the hive, the one that learns where the queen is now.
        supervisor = WorkerSupervisor(config, token, queen, heartbeat_url=lambda: (
            app[shared_keys.LISTENING].url if config.relay_heartbeats else config.queen_url))
        resources.push_async_callback(supervisor.close)
        caps = await detected
        store = ModelStore(catalog, config.paths.model_dir)
        await store.register_builtin()
        app[EXECUTOR] = HiveExecutor(config, store, supervisor, caps)
        yield


async def health(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    executor = request.app.get(EXECUTOR)
    workers = executor.supervisor.all() if executor else []
    reading = MACHINE.latest()
    return web.json_response({
        "status": "ok", "hive_id": config.hive_id, **version_fields(),
        "workers": sum(1 for w in workers if w.alive),
        "gpus": reading.gpus if reading else None,  # None: not read yet (start-up)
        "gpu_problem": MACHINE.gpu_problem(),
    })


async def show_config(request: web.Request) -> web.Response:
    """The hive's settings and where each came from (flag, rbee.toml, default)."""
    config = request.app[CONFIG]
    return web.json_response({"hive_id": config.hive_id, "hive": config.settings})


async def prompt_caches(request: web.Request) -> web.Response:
    """The prompt caches this hive keeps on disk, per model, as the queen routes by them (chains of the
    serialized prompt and answer: shared/prefix_chain.py), so a conversation goes back where its cache is."""
    config, store = request.app[CONFIG], request.app[EXECUTOR].store
    entries = await store.catalog.list()

    def read() -> dict[str, list[dict]]:
        return {e.id: [{"chain": list(c), "tokens": n} for c, n in saved_chains(config.prompt_cache_dir(e.sha256))]
                for e in entries if e.sha256}

    return web.json_response({"hive_id": config.hive_id, "models": await asyncio.to_thread(read)})


async def capabilities(request: web.Request) -> web.Response:
    executor = request.app[EXECUTOR]
    caps = await executor.refresh_capabilities()
    cores_free = max(0, int(caps["cpu"]["cores"]) - executor.supervisor.threads_in_use())
    return web.json_response({"hive_id": request.app[CONFIG].hive_id, **caps, "cores_free": cores_free})
