"""Responses the OpenAI Responses API stored (`store`, its default), in SQLite in the queen's data dir, so a
later request can go on from one (`previous_response_id`) and a client can read or delete it, after a
restart too. Bounded like the job history: the newest KEEP of each key (and of the queen's own token) stay.

Each row keeps the response as GET /v1/responses/{id} returns it, the input items it was given, and the
chat it makes with its answer (what a request that continues from it reads first), with the names of the
functions its calls named (a function_call_output names its call only by call_id).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queen.errors import QueenError
from shared.sqlite import SqliteStore

log = logging.getLogger("rbee.queen.responses")

KEEP = 1000  # rows kept; older ones are dropped

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id         TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    owner      TEXT,             -- the API key that made it; NULL: the queen's own token
    response   TEXT NOT NULL,    -- the response object, as GET returns it
    input      TEXT NOT NULL,    -- its input items, as GET .../input_items lists them
    chat       TEXT NOT NULL,    -- [[role, content], ...]: the conversation so far, its answer included
    names      TEXT NOT NULL     -- {call_id: function name} of every call in that conversation
);
CREATE INDEX IF NOT EXISTS responses_owner_created ON responses (owner, created_at);
"""


class ResponseNotFound(QueenError):
    title = "Response not found"
    code = "RESPONSE_NOT_FOUND"
    status = 404


@dataclass(frozen=True)
class StoredResponse:
    id: str
    response: dict[str, Any]
    input: list[dict[str, Any]]
    chat: list[tuple[str, str]]
    names: dict[str, str]


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA synchronous=NORMAL")  # as the job history: a crash loses nothing, a power cut the last few
    db.executescript(_SCHEMA)


class ResponseStore(SqliteStore):
    """`owner` as in ConversationStore: a key below admin sees only its own; None sees all."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, setup=_setup)

    def add(self, stored: StoredResponse, owner: str | None) -> None:
        """Store a finished response without waiting (the answer is not held up by the disk)."""
        row = (stored.id, time.time(), owner, json.dumps(stored.response, ensure_ascii=False),
               json.dumps(stored.input, ensure_ascii=False), json.dumps(stored.chat, ensure_ascii=False),
               json.dumps(stored.names, ensure_ascii=False))

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO responses (id, created_at, owner, response, input, chat, names) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            # each owner its newest KEEP: one busy key never pushes another's out
            db.execute("DELETE FROM responses WHERE owner IS ? AND created_at < (SELECT created_at FROM responses "
                       "WHERE owner IS ? ORDER BY created_at DESC LIMIT 1 OFFSET ?)", (owner, owner, KEEP - 1))

        try:
            self._db.submit(write).add_done_callback(_log_failure)
        except RuntimeError:  # the queen is stopping: its store closed under a last answer
            log.warning("the queen is stopping: response %s was not stored", stored.id)

    async def get(self, response_id: str, *, owner: str | None = None) -> StoredResponse:
        mine, args = (" AND owner = ?", (owner,)) if owner is not None else ("", ())
        row = await self._db.run(lambda db: db.execute(
            f"SELECT id, response, input, chat, names FROM responses WHERE id = ?{mine}",
            (response_id, *args)).fetchone())
        if row is None:
            raise ResponseNotFound(f"No response '{response_id}' is stored here (one made with store: false, or "
                                   f"older than the newest {KEEP}, is not).")
        return StoredResponse(row[0], json.loads(row[1]), json.loads(row[2]),
                              [(role, content) for role, content in json.loads(row[3])], json.loads(row[4]))

    async def delete(self, response_id: str, *, owner: str | None = None) -> None:
        await self.get(response_id, owner=owner)  # ResponseNotFound when it is not there (or not theirs)
        await self._db.run(lambda db: db.execute("DELETE FROM responses WHERE id = ?", (response_id,)))


def _log_failure(future: Future) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("could not store a response: %s", exc)
