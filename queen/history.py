"""Job history in SQLite, so `GET /v1/jobs` and `GET /v1/jobs/{id}` survive a queen restart.

Every query runs in the database's own thread (shared/sqlite.py): recording a job costs the event loop
one snapshot of the row, and the trim that keeps the table bounded deletes below an indexed bound.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from shared.errors import unique_match
from shared.job_registry import Job, about
from shared.sqlite import SqliteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    operation   TEXT NOT NULL,
    request     TEXT NOT NULL,      -- the operation as JSON
    state       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    text        TEXT,               -- what an infer generated
    result      TEXT,               -- JSON
    error       TEXT,               -- JSON {code, message}
    about       TEXT,               -- what the job is about, for listings
    owner       TEXT                -- the API key that made it; NULL: the queen's own token
);
CREATE INDEX IF NOT EXISTS jobs_created_at ON jobs (created_at);
"""
COLUMNS = "job_id, operation, request, state, created_at, started_at, finished_at, text, result, error, about, owner"
LIGHT_COLUMNS = "job_id, operation, state, created_at, started_at, finished_at, error, about, owner"
# A request or answer is kept whole up to this size; beyond it, its long texts are cut (and it says so),
# so a thousand one-megabyte prompts cost the disk tens of megabytes, not a gigabyte.
TEXT_CAP = 16 << 10
# Result fields kept out of the result column: the text has its own, and embedding vectors (an embed job's
# answer, up to megabytes) are of use to the client that asked only; their dimensions and tokens are kept.
UNSTORED = frozenset({"text", "embeddings"})
log = logging.getLogger("rbee.queen.history")

KEEP = 1000  # rows kept; older ones are dropped
LIST_LIMIT = 100
_INTERRUPTED = json.dumps({"code": "QUEEN_STOPPED", "message": "The queen stopped while this job ran."})


def _setup(db: sqlite3.Connection) -> None:
    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of the queen loses nothing, a
    # power cut at most the last jobs' records; two commits per job cost a third of the CPU they did.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for added in ("about", "owner"):  # a history made by an older rbee
        if added not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {added} TEXT")
    # Jobs that were running when the queen last stopped did not finish.
    db.execute("UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE state IN ('queued', 'running')",
               (time.time(), _INTERRUPTED))


class JobHistoryStore(SqliteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, setup=_setup)

    def record(self, job: Job) -> None:
        """Snapshot the job now (on the loop) and write it in the database thread. Read-only jobs (lists,
        status) are not history: they would be most of it."""
        if job.operation.read_only:
            return
        row = _row(job)

        def write(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT OR REPLACE INTO jobs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            # The KEEP-th newest row's time bounds what stays; both lookups walk the created_at index.
            db.execute("DELETE FROM jobs WHERE created_at < "
                       "(SELECT created_at FROM jobs ORDER BY created_at DESC LIMIT 1 OFFSET ?)", (KEEP - 1,))

        self._db.submit(write).add_done_callback(_log_failure)

    async def get(self, job_id: str, *, owner: str | None = None) -> dict[str, Any] | None:
        """The job `job_id` names: its whole id or a unique beginning of it (AmbiguousId if several); with
        `owner`, among that API key's jobs only."""
        like = job_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        mine = "" if owner is None else "owner = ? AND "
        rows = await self._db.run(lambda db: db.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE {mine}(job_id = ? OR job_id LIKE ? ESCAPE '\\' OR job_id LIKE ? "
            "ESCAPE '\\') LIMIT 6", (*([owner] if owner is not None else []), job_id, like, "job-" + like)).fetchall())
        found = unique_match(job_id, [r[0] for r in rows], kind="job", prefix="job-")
        return next((_summary(r) for r in rows if r[0] == found), None)

    async def list(self, *, limit: int = LIST_LIMIT, before: tuple[float, str] | None = None,
                   owner: str | None = None) -> list[dict[str, Any]]:
        """Light records, newest first, from just before the (created_at, job_id) cursor: no request, no
        answer (those are for get)."""
        stamp, job_id = before if before is not None else (float("inf"), "")
        mine = "" if owner is None else "owner = ? AND "
        rows = await self._db.run(lambda db: db.execute(
            f"SELECT {LIGHT_COLUMNS} FROM jobs WHERE {mine}(created_at < ? OR (created_at = ? AND job_id < ?)) "
            "ORDER BY created_at DESC, job_id DESC LIMIT ?",
            (*([owner] if owner is not None else []), stamp, stamp, job_id, limit)).fetchall())
        return [{"job_id": r[0], "operation": r[1], "state": r[2], "created_at": r[3], "started_at": r[4],
                 "finished_at": r[5], "error": json.loads(r[6]) if r[6] else None, "about": r[7] or "",
                 "key": r[8], "from_history": True} for r in rows]


def _log_failure(future: Future) -> None:
    if (exc := future.exception()) is not None:
        log.error("could not record a job in the history: %s", exc)


def _row(job: Job) -> tuple:
    result = job.result or {}
    text = result.get("text")
    return (job.id, job.operation.name, json.dumps(capped(job.operation.redacted())), job.state.value,
            job.created_at, job.started_at, job.finished_at, text[:TEXT_CAP] if isinstance(text, str) else text,
            json.dumps({k: v for k, v in result.items() if k not in UNSTORED}) if result else None,
            json.dumps(job.error) if job.error else None, about(job.operation), job.owner)


def capped(request: dict[str, Any]) -> dict[str, Any]:
    """The request with each long text cut at TEXT_CAP characters, marked `"truncated": true` if any was."""
    out, cut = dict(request), False
    if isinstance(out.get("prompt"), str) and len(out["prompt"]) > TEXT_CAP:
        out["prompt"], cut = out["prompt"][:TEXT_CAP], True
    if isinstance(out.get("messages"), list):
        messages = []
        for m in out["messages"]:
            if len(m.get("content", "")) > TEXT_CAP:
                m, cut = {**m, "content": m["content"][:TEXT_CAP]}, True
            messages.append(m)
        out["messages"] = messages
    if isinstance(out.get("grammar"), str) and len(out["grammar"]) > TEXT_CAP:
        out["grammar"], cut = out["grammar"][:TEXT_CAP], True
    if "json_schema" in out and len(json.dumps(out["json_schema"])) > TEXT_CAP:  # not kept whole: a note instead
        out["json_schema"], cut = {"description": "(a schema over 16 KB, not kept)"}, True
    if isinstance(out.get("input"), list):  # embed: many texts; the first TEXT_CAP characters of them
        kept, room = [], TEXT_CAP
        for text in out["input"]:
            if room <= 0 or len(text) > room:
                cut = True
                if room > 0:
                    kept.append(text[:room])
                break
            kept.append(text)
            room -= len(text)
        out["input"] = kept
    if cut:
        out["truncated"] = True
    return out


def _summary(row: tuple) -> dict[str, Any]:
    result = json.loads(row[8]) if row[8] else None
    if row[7] is not None:
        result = {**(result or {}), "text": row[7]}
    return {
        "job_id": row[0], "operation": row[1], "request": json.loads(row[2]), "state": row[3],
        "created_at": row[4], "started_at": row[5], "finished_at": row[6], "result": result,
        "error": json.loads(row[9]) if row[9] else None, "about": row[10] or "", "key": row[11],
        "from_history": True,
    }
