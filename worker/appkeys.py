"""Typed keys of the worker's aiohttp app."""

from __future__ import annotations

import asyncio

from aiohttp import web

from worker.config import WorkerConfig
from worker.engine import LlamaEngine
from worker.heartbeat import Heartbeat

CONFIG = web.AppKey("worker_config", WorkerConfig)
ENGINE = web.AppKey("worker_engine", LlamaEngine)
HEARTBEAT = web.AppKey("worker_heartbeat", Heartbeat)
SHUTDOWN_REQUESTED = web.AppKey("worker_shutdown_requested", asyncio.Event)
