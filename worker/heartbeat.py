"""Heartbeats to the queen: on every state change and every few seconds. A queen that is down costs
the worker nothing but a debug line; it keeps serving."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

import aiohttp

log = logging.getLogger("rbee.worker.heartbeat")


class Heartbeat:
    def __init__(self, queen_url: str, token: str, payload: Callable[[], dict[str, Any]], interval_s: float) -> None:
        self._url = queen_url.rstrip("/") + "/v1/workers/heartbeat"
        self._token = token
        self._payload = payload
        self._interval_s = interval_s
        self._poke = asyncio.Event()
        self._queen_was_up: bool | None = None
        self.sent = 0

    def poke(self) -> None:
        """Send one now (state changed)."""
        self._poke.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {self._token}"}
        timeout = aiohttp.ClientTimeout(total=min(self._interval_s, 5.0))
        await self._poke.wait()  # the first poke comes once the worker's URL is known
        while True:
            self._poke.clear()
            try:
                async with session.post(self._url, json=self._payload(), headers=headers, timeout=timeout) as resp:
                    await resp.read()
                    up = resp.status < 400
                    if not up:
                        log.warning("queen refused heartbeat: HTTP %d", resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                up = False
                if self._queen_was_up is not False:
                    log.warning("queen at %s unreachable (%s); will keep trying", self._url, exc)
            if up:
                self.sent += 1
            self._queen_was_up = up
            try:
                await asyncio.wait_for(self._poke.wait(), self._interval_s)
            except asyncio.TimeoutError:
                pass


def heartbeat_payload(worker_id: str, hive_id: str | None, url: str, model_ref: str, state: str,
                      queue_depth: int, device: str) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "hive_id": hive_id,
        "url": url,
        "model": model_ref,
        "state": state,
        "pid": os.getpid(),
        "queue_depth": queue_depth,
        "device": device,
    }
