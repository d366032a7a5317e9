"""Where this hive's queen is right now, and the relay of its workers' heartbeats to it.

On a remote machine (--relay-heartbeats) workers send heartbeats to their hive (the same path the
queen serves), and the hive passes them on. There the queen is reached through an SSH remote forward whose port changes with every
connection, so the queen re-tells its address (PUT /v1/queen) each time it connects, and only the hive
has to learn it: the workers' address for heartbeats never changes."""

from __future__ import annotations

import logging
from typing import Any, Callable

import aiohttp
from aiohttp import web

from shared.client import DaemonClient
from shared.errors import InvalidRequest, RbeeError, ServerUnreachable
from shared.heartbeat import HEARTBEAT_PATH, parse_heartbeat
from shared.http import read_json

log = logging.getLogger("rbee.hive.queen")

RELAY_TIMEOUT_S = 2.0


class QueenLink:
    def __init__(self, hive_id: str, url: str | None, token: str, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.hive_id = hive_id
        self.url = url
        self._token = token
        self._session = session
        self._was_up: bool | None = None

    async def send(self, beat: dict[str, Any]) -> None:
        """Pass one heartbeat on; raises ServerUnreachable when no queen is known or it does not answer."""
        if not self.url:
            raise ServerUnreachable("This hive does not know its queen yet (it tells the hive when it connects).")
        try:
            await DaemonClient(self.url, self._token, session=self._session()).request(
                "POST", HEARTBEAT_PATH, beat, timeout=RELAY_TIMEOUT_S)
        except RbeeError as exc:
            if self._was_up is not False:
                log.warning("relaying heartbeats to the queen at %s failed (%s); will keep trying", self.url,
                            exc.message)
            self._was_up = False
            raise
        self._was_up = True


def setup_queen_routes(app: web.Application, link: Callable[[], QueenLink]) -> None:
    async def relay_heartbeat(request: web.Request) -> web.Response:
        beat = parse_heartbeat(await read_json(request))
        queen = link()
        if beat.hive_id != queen.hive_id:
            raise InvalidRequest(f"This is hive {queen.hive_id}, not {beat.hive_id}.", field="hive_id")
        await queen.send(beat.to_dict())
        return web.json_response({"ok": True, "worker_id": beat.worker_id})

    async def set_queen(request: web.Request) -> web.Response:
        body = await read_json(request)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidRequest("Expected {\"url\": \"http://host:port\"}: the queen's URL.", field="url")
        queen = link()
        if queen.url != url:
            log.info("the queen is now at %s (was %s)", url, queen.url)
        queen.url = url
        return web.json_response({"ok": True, "url": url})

    app.router.add_post(HEARTBEAT_PATH, relay_heartbeat)
    app.router.add_put("/v1/queen", set_queen)
