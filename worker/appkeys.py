"""Typed keys of the worker's aiohttp app (the shared ones are in shared/appkeys.py)."""

from __future__ import annotations

from aiohttp import web

from worker.config import WorkerConfig
from worker.engine import LlamaEngine
from worker.heartbeat import HeartbeatSender

CONFIG = web.AppKey("worker_config", WorkerConfig)
ENGINE = web.AppKey("worker_engine", LlamaEngine)
HEARTBEAT = web.AppKey("worker_heartbeat", HeartbeatSender)
