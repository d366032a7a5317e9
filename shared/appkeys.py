"""Typed application keys shared by every daemon's aiohttp app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from shared.job_registry import JobRegistry

TOKEN = web.AppKey("rbee_token", str)
JOB_REGISTRY: web.AppKey["JobRegistry"] = web.AppKey("rbee_job_registry")
