"""Typed application keys the shared base app and job API put on every daemon's aiohttp app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from aiohttp import web

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from shared.job_registry import JobHistory, JobRegistry


@dataclass
class Listening:
    """Where the daemon listens; known only once its socket is bound (port 0), which `bound` announces."""

    url: str | None = None
    bound: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self, url: str) -> None:
        self.url = url
        self.bound.set()


TOKEN = web.AppKey("rbee_token", str)
LISTENING = web.AppKey("rbee_listening", Listening)
SHUTDOWN_REQUESTED = web.AppKey("rbee_shutdown_requested", asyncio.Event)
# (request, status, code, message) -> a response in another API's error shape, or None for ours
ERROR_SHAPER: web.AppKey[Callable[[web.Request, int, str, str], "web.Response | None"]] = web.AppKey("rbee_error_shaper")
JOB_REGISTRY: web.AppKey["JobRegistry"] = web.AppKey("rbee_job_registry")
JOB_HISTORY: web.AppKey["JobHistory"] = web.AppKey("rbee_job_history")  # set by a daemon that keeps one
# Set by a daemon's access check (the queen's, for an API key): the owner the job routes record on what the
# request makes; with REQUEST_OWN_ONLY (a key below admin), the request also sees nothing of anyone else's.
REQUEST_OWNER = web.RequestKey("rbee_request_owner", str)
REQUEST_OWN_ONLY = web.RequestKey("rbee_request_own_only", bool)


def visible_owner(request: web.Request) -> str | None:
    """The owner a request may see the things of; None: everything."""
    return request.get(REQUEST_OWNER) if request.get(REQUEST_OWN_ONLY) else None
METRICS: web.AppKey["CollectorRegistry"] = web.AppKey("rbee_metrics")  # this app's own (shared/metrics.py)
