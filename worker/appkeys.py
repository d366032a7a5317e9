"""Typed keys of the worker's aiohttp app (the shared ones are in shared/appkeys.py)."""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from shared.heartbeat import Heartbeat
from worker.config import WorkerConfig
from worker.heartbeat import HeartbeatSender
from worker.owner_thread import LlamaOwner

CONFIG = web.AppKey("worker_config", WorkerConfig)
# The generation or the embedding engine (--embedding); each API narrows it to its kind.
ENGINE: web.AppKey[LlamaOwner[Any]] = web.AppKey("worker_engine", LlamaOwner)
HEARTBEAT = web.AppKey("worker_heartbeat", HeartbeatSender)
GOODBYE: web.AppKey[Callable[[], Heartbeat]] = web.AppKey("worker_goodbye")  # its last heartbeat, when it stops
