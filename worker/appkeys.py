"""Typed keys of the worker's aiohttp app (the shared ones are in shared/appkeys.py)."""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from shared.heartbeat import Heartbeat
from worker.config import WorkerConfig
from worker.engine import LlamaEngine
from worker.heartbeat import HeartbeatSender

CONFIG = web.AppKey("worker_config", WorkerConfig)
ENGINE = web.AppKey("worker_engine", LlamaEngine)
HEARTBEAT = web.AppKey("worker_heartbeat", HeartbeatSender)
GOODBYE: web.AppKey[Callable[[], Heartbeat]] = web.AppKey("worker_goodbye")  # its last heartbeat, when it stops
