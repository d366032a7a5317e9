"""Typed application keys shared by every daemon's aiohttp app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from aiohttp import web

if TYPE_CHECKING:
    from shared.job_registry import JobRegistry

TOKEN = web.AppKey("rbee_token", str)
# (request, status, code, message) -> a response in another API's error shape, or None for ours
ERROR_SHAPER: web.AppKey[Callable[[web.Request, int, str, str], "web.Response | None"]] = web.AppKey("rbee_error_shaper")
JOB_REGISTRY: web.AppKey["JobRegistry"] = web.AppKey("rbee_job_registry")
