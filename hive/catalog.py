"""The hive's model catalog: one SQLite file under the data dir, one row per provisioned model.
Queries run in the database's own thread (shared/sqlite.py), never on the event loop."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.sqlite import SqliteThread

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id          TEXT PRIMARY KEY,   -- the canonical reference: smollm2-135m, hf:org/repo:file.gguf, file:/abs/path
    reference   TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    added_at    REAL NOT NULL,
    downloaded  INTEGER NOT NULL    -- 1 when the hive fetched the file (model_delete removes it then)
)
"""


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    reference: str
    path: str
    size: int
    sha256: str
    added_at: float
    downloaded: bool

    def to_dict(self) -> dict:
        return asdict(self)


class ModelCatalog:
    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, setup=lambda db: db.execute(_SCHEMA))

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def get(self, model_id: str) -> CatalogEntry | None:
        row = await self._db.run(lambda db: db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone())
        return _entry(row) if row else None

    async def list(self) -> list[CatalogEntry]:
        rows = await self._db.run(lambda db: db.execute("SELECT * FROM models ORDER BY added_at").fetchall())
        return [_entry(r) for r in rows]

    async def add(self, model_id: str, reference: str, path: Path, size: int, sha256: str,
                  downloaded: bool) -> CatalogEntry:
        entry = CatalogEntry(model_id, reference, str(path), size, sha256, time.time(), downloaded)

        def insert(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (entry.id, entry.reference, entry.path, entry.size, entry.sha256, entry.added_at,
                        int(downloaded)))

        await self._db.run(insert)
        return entry

    async def remove(self, model_id: str) -> None:
        await self._db.run(lambda db: db.execute("DELETE FROM models WHERE id = ?", (model_id,)))


def _entry(row: tuple) -> CatalogEntry:
    return CatalogEntry(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))
