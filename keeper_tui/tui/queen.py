"""The TUI's way to the queen: one client for every tab, the queen woken first (once, however many tabs
ask at the same moment), and the read-only jobs whose answer is one Data event (lists of hives, models)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from keeper_tui.queen_control import ensure_queen, queen_api
from shared.errors import RbeeError
from shared.events import Data, Error
from shared.job_client import JobClient
from shared.operations import Operation
from shared.paths import RbeePaths
from shared.token import load_or_create_token

Say = Callable[[str], None]


class QueenLink:
    """The queen at `url`; `say` is where waking it is told when the caller names nowhere else (the app
    points it at the chat's story pane)."""

    def __init__(self, url: str, paths: RbeePaths, *, autostart: bool) -> None:
        self.url = url
        self.paths = paths
        self.autostart = autostart
        self.say: Say = lambda message: None
        self._client: JobClient | None = None
        self._waking = asyncio.Lock()

    async def client(self, say: Say | None = None) -> JobClient:
        """A client for the queen, waking it first unless autostart is off."""
        async with self._waking:
            await ensure_queen(self.url, self.paths, autostart=self.autostart, say=say or self.say)
        if self._client is None:
            self._client = queen_api(self.url, load_or_create_token(self.paths))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def data_of(client: JobClient, operation: Operation) -> dict[str, Any]:
    """Run a job that answers with one Data event (hive_list, model_list) and return its payload."""
    job = await client.submit(operation)
    payload = None
    async for event in client.stream(job.job_id):
        if isinstance(event, Data):
            payload = event.payload
        elif isinstance(event, Error):
            raise RbeeError(event.message, code=event.code)
    return payload or {}
