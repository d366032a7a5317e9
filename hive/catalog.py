"""The hive's model catalog: one SQLite file under the data dir, one row per provisioned model."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
    """Small, quick queries on a local file: called inline from the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit; each statement is atomic
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get(self, model_id: str) -> CatalogEntry | None:
        row = self._db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        return _entry(row) if row else None

    def list(self) -> list[CatalogEntry]:
        return [_entry(r) for r in self._db.execute("SELECT * FROM models ORDER BY added_at")]

    def add(self, model_id: str, reference: str, path: Path, size: int, sha256: str, downloaded: bool) -> CatalogEntry:
        entry = CatalogEntry(model_id, reference, str(path), size, sha256, time.time(), downloaded)
        self._db.execute(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.id, entry.reference, entry.path, entry.size, entry.sha256, entry.added_at, int(downloaded)),
        )
        return entry

    def remove(self, model_id: str) -> None:
        self._db.execute("DELETE FROM models WHERE id = ?", (model_id,))


def _entry(row: tuple) -> CatalogEntry:
    return CatalogEntry(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))
