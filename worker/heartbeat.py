"""Heartbeats to the queen: on every state change and every few seconds. A queen that is down costs
the worker nothing but a log line; it keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

from shared.client import DaemonClient
from shared.errors import RbeeError
from shared.heartbeat import HEARTBEAT_PATH, Heartbeat

log = logging.getLogger("rbee.worker.heartbeat")


class HeartbeatSender:
    def __init__(self, queen: DaemonClient, heartbeat: Callable[[], Heartbeat], interval_s: float) -> None:
        self._queen = queen
        self._heartbeat = heartbeat
        self._interval_s = interval_s
        self._poke = asyncio.Event()
        self._queen_was_up: bool | None = None
        self._gone = False

    async def say_goodbye(self, heartbeat: Heartbeat) -> None:
        """One last heartbeat saying the worker is going (short: shutdown must not wait on the queen);
        none follows it, or a "ready" sent as its generations end would bring the worker back to life."""
        self._gone = True
        try:
            await self._queen.request("POST", HEARTBEAT_PATH, heartbeat.to_dict(), timeout=1.0)
        except RbeeError as exc:
            log.info("could not tell the queen this worker is stopping: %s", exc.message)

    def poke(self) -> None:
        """Send one now (state changed)."""
        self._poke.set()

    async def run(self, ready_to_send: asyncio.Event) -> None:
        await ready_to_send.wait()  # the worker's URL is known once its socket is bound
        while not self._gone:
            self._poke.clear()
            try:
                await self._queen.request("POST", HEARTBEAT_PATH, self._heartbeat().to_dict(),
                                          timeout=min(self._interval_s, 5.0))
                up = True
            except RbeeError as exc:
                up = False
                if self._queen_was_up is not False:
                    log.warning("heartbeat to the queen at %s failed (%s); will keep trying", self._queen.base_url,
                                exc.message)
            self._queen_was_up = up
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._interval_s)
