"""Job history in SQLite, so `GET /v1/jobs` and `GET /v1/jobs/{id}` survive a queen restart."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from shared.job_registry import Job

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
    error       TEXT                -- JSON {code, message}
)
"""
KEEP = 1000  # rows kept; older ones are dropped


class JobHistoryStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        # Jobs that were running when the queen last stopped did not finish.
        self._db.execute(
            "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE state IN ('queued', 'running')",
            (time.time(), json.dumps({"code": "QUEEN_STOPPED", "message": "The queen stopped while this job ran."})),
        )

    def close(self) -> None:
        self._db.close()

    def record(self, job: Job) -> None:
        result = job.result or {}
        self._db.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.operation.name, json.dumps(job.operation.to_dict()), job.state.value, job.created_at,
             job.started_at, job.finished_at, result.get("text"),
             json.dumps({k: v for k, v in result.items() if k != "text"}) if result else None,
             json.dumps(job.error) if job.error else None),
        )
        self._db.execute("DELETE FROM jobs WHERE job_id NOT IN "
                         "(SELECT job_id FROM jobs ORDER BY created_at DESC LIMIT ?)", (KEEP,))

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _summary(row) if row else None

    def list(self) -> list[dict[str, Any]]:
        return [_summary(r) for r in self._db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT 200")]


def _summary(row: tuple) -> dict[str, Any]:
    result = json.loads(row[8]) if row[8] else None
    if row[7] is not None:
        result = {**(result or {}), "text": row[7]}
    return {
        "job_id": row[0], "operation": row[1], "request": json.loads(row[2]), "state": row[3],
        "created_at": row[4], "started_at": row[5], "finished_at": row[6], "result": result,
        "error": json.loads(row[9]) if row[9] else None, "from_history": True,
    }
