"""Conversations (`rbee chat`, the TUI's chat), kept in SQLite in the queen's data dir so that any keeper
can list and resume one, after a restart too.

A client sends the whole history with each request (`Infer.messages`, plus `conversation_id`); the queen
stores the exchange (the last user message and the answer) when that job ends, so what is stored is what
was answered, cancelled answers included as far as they got.
An id may be given as any unique beginning of one ("conv-" may be left out). The routes are in
queen/conversation_routes.py.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from queen.errors import QueenError
from shared.errors import unique_match
from shared.sqlite import SqliteStore

log = logging.getLogger("rbee.queen.conversations")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL DEFAULT '',
    model      TEXT,
    hive_id    TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner      TEXT              -- the API key that made it; NULL: the queen's own token
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    at              REAL NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
"""
FIELDS = ("model", "hive_id", "title")  # what a client may set
TITLE_CHARS = 60
COLUMNS = "id, title, model, hive_id, created_at, updated_at"
COUNT = "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)"


class ConversationNotFound(QueenError):
    title = "Conversation not found"
    code = "CONVERSATION_NOT_FOUND"
    status = 404


def _record(row: tuple) -> dict[str, Any]:
    return {"id": row[0], "title": row[1], "model": row[2], "hive_id": row[3], "created_at": row[4],
            "updated_at": row[5], "message_count": row[6]}


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(conversations)")}:  # an older rbee's
        db.execute("ALTER TABLE conversations ADD COLUMN owner TEXT")


class ConversationStore(SqliteStore):
    """Every method takes the `owner` asking (an API key's name below admin): it sees only its own
    conversations, and another's are not found, as if they did not exist. None: sees all."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, setup=_setup)

    async def create(self, *, model: str | None = None, hive_id: str | None = None, title: str | None = None,
                     owner: str | None = None) -> dict[str, Any]:
        conv_id, now = f"conv-{secrets.token_hex(6)}", time.time()
        await self._db.run(lambda db: db.execute(
            f"INSERT INTO conversations ({COLUMNS}, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conv_id, title or "", model, hive_id, now, now, owner)))
        return await self.get(conv_id, messages=False)

    async def list(self, *, owner: str | None = None) -> list[dict[str, Any]]:
        """Conversations with something in them (one whose first question failed is not worth showing)."""
        mine, args = ("AND owner = ?", (owner,)) if owner is not None else ("", ())
        rows = await self._db.run(lambda db: db.execute(
            f"SELECT {COLUMNS}, {COUNT} AS n FROM conversations c WHERE n > 0 {mine} ORDER BY updated_at DESC, id",
            args).fetchall())
        return [_record(r) for r in rows]

    async def resolve(self, given: str, *, owner: str | None = None) -> str:
        """The id `given` names: a whole id or a unique beginning of one."""
        like = given.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        mine, args = ("owner = ? AND ", (owner,)) if owner is not None else ("", ())
        ids = await self._db.run(lambda db: [r[0] for r in db.execute(
            f"SELECT id FROM conversations WHERE {mine}(id LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\') LIMIT 6",
            (*args, like, "conv-" + like))])
        found = unique_match(given, ids, kind="conversation", prefix="conv-")
        if found is None:
            raise ConversationNotFound(f"No conversation '{given}'. `rbee conversations list` shows them.")
        return found

    async def get(self, given: str, *, messages: bool = True, owner: str | None = None) -> dict[str, Any]:
        conv_id = await self.resolve(given, owner=owner)

        def read(db: sqlite3.Connection) -> tuple[tuple, list[tuple]]:
            row = db.execute(f"SELECT {COLUMNS}, {COUNT} FROM conversations c WHERE id = ?", (conv_id,)).fetchone()
            said = db.execute("SELECT role, content, at FROM messages WHERE conversation_id = ? ORDER BY seq",
                              (conv_id,)).fetchall() if messages else []
            return row, said

        row, said = await self._db.run(read)
        if row is None:  # deleted in between
            raise ConversationNotFound(f"No conversation '{given}'.")
        record = _record(row)
        if messages:
            record["messages"] = [{"role": r, "content": c, "at": at} for r, c, at in said]
        return record

    async def update(self, given: str, fields: dict[str, Any], *, owner: str | None = None) -> dict[str, Any]:
        conv_id = await self.resolve(given, owner=owner)
        if fields:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            await self._db.run(lambda db: db.execute(
                f"UPDATE conversations SET {assignments}, updated_at = ? WHERE id = ?",
                (*fields.values(), time.time(), conv_id)))
        return await self.get(conv_id, messages=False)

    async def delete(self, given: str, *, owner: str | None = None) -> str:
        conv_id = await self.resolve(given, owner=owner)

        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conv_id,))
            db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,))

        await self._db.run(delete)
        return conv_id

    def add_exchange(self, conv_id: str, said: list[tuple[str, str]], model: str) -> None:
        """Append messages (role, content) to a conversation, without waiting (a cancelled job cannot)."""
        now = time.time()
        first_user = next((c for r, c in said if r == "user"), "")
        title = " ".join(first_user.split())[:TITLE_CHARS]

        def write(db: sqlite3.Connection) -> None:
            (last,) = db.execute("SELECT COALESCE(MAX(seq), -1) FROM messages WHERE conversation_id = ?",
                                 (conv_id,)).fetchone()
            db.executemany("INSERT INTO messages (conversation_id, seq, role, content, at) VALUES (?, ?, ?, ?, ?)",
                           [(conv_id, last + 1 + k, role, content, now) for k, (role, content) in enumerate(said)])
            db.execute("UPDATE conversations SET updated_at = ?, model = ?, "
                       "title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?", (now, model, title, conv_id))

        self._db.submit(write).add_done_callback(_log_failure)


def _log_failure(future: Future) -> None:
    if (exc := future.exception()) is not None:
        log.error("could not store a conversation's messages: %s", exc)
