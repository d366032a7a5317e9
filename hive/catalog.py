"""The hive's model catalog: one SQLite file under the data dir, one row per provisioned model.
Queries run in the database's own thread (shared/sqlite.py), never on the event loop.

Each entry carries the GGUF's architecture ("llama"), read once when the model is added, so whoever
lists models (the Ollama API's `details.family`) never opens the file itself.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hive.gguf import GGUFError, read_gguf_metadata
from shared.sqlite import SqliteStore

log = logging.getLogger("rbee.hive.catalog")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id          TEXT PRIMARY KEY,   -- the canonical reference: smollm2-135m, hf:org/repo:file.gguf, file:/abs/path
    reference   TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    added_at    REAL NOT NULL,
    downloaded  INTEGER NOT NULL,   -- 1 when the hive fetched the file (model_delete removes it then)
    architecture TEXT               -- general.architecture of the GGUF; NULL until read
)
"""
_COLUMNS = "id, reference, path, size, sha256, added_at, downloaded, architecture"


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    reference: str
    path: str
    size: int
    sha256: str
    added_at: float
    downloaded: bool
    architecture: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class ModelCatalog(SqliteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, setup=_setup)

    async def get(self, model_id: str) -> CatalogEntry | None:
        row = await self._db.run(lambda db: db.execute(f"SELECT {_COLUMNS} FROM models WHERE id = ?",
                                                       (model_id,)).fetchone())
        return _entry(row) if row else None

    async def list(self) -> list[CatalogEntry]:
        rows = await self._db.run(lambda db: db.execute(f"SELECT {_COLUMNS} FROM models ORDER BY added_at").fetchall())
        return [_entry(r) for r in rows]

    async def add(self, model_id: str, reference: str, path: Path, size: int, sha256: str,
                  downloaded: bool) -> CatalogEntry:
        def insert(db: sqlite3.Connection) -> CatalogEntry:
            entry = CatalogEntry(model_id, reference, str(path), size, sha256, time.time(), downloaded,
                                 architecture_of(str(path)))
            db.execute(f"INSERT OR REPLACE INTO models ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (entry.id, entry.reference, entry.path, entry.size, entry.sha256, entry.added_at,
                        int(downloaded), entry.architecture))
            return entry

        return await self._db.run(insert)

    async def remove(self, model_id: str) -> None:
        await self._db.run(lambda db: db.execute("DELETE FROM models WHERE id = ?", (model_id,)))


def architecture_of(path: str) -> str:
    """The GGUF's general.architecture, or "" when the file cannot say (the entry is still usable)."""
    try:
        return str(read_gguf_metadata(path).get("general.architecture") or "")
    except (GGUFError, OSError) as exc:
        log.warning("cannot read the architecture of %s: %s", path, exc)
        return ""


def _setup(db: sqlite3.Connection) -> None:
    """Create the table; a catalog from before the architecture column gets it, filled from the files."""
    db.execute(_SCHEMA)
    if "architecture" not in {row[1] for row in db.execute("PRAGMA table_info(models)")}:
        db.execute("ALTER TABLE models ADD COLUMN architecture TEXT")
    for model_id, path in db.execute("SELECT id, path FROM models WHERE architecture IS NULL").fetchall():
        db.execute("UPDATE models SET architecture = ? WHERE id = ?", (architecture_of(path), model_id))


def _entry(row: tuple) -> CatalogEntry:
    return CatalogEntry(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7] or "")
