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
    architecture TEXT,              -- general.architecture of the GGUF; NULL until read
    alias       TEXT,               -- a short name given when it was pushed (NULL: the file's name)
    origin      TEXT,               -- where it came from, for people ("pushed from ...", "copied from hive ...")
    state       TEXT,               -- ok | missing | corrupt | bad_gguf (NULL: ok), from the last check
    problem     TEXT                -- what that check found wrong
)
"""
_COLUMNS = "id, reference, path, size, sha256, added_at, downloaded, architecture, alias, origin, state, problem"
_ADDED_COLUMNS = ("architecture", "alias", "origin", "state", "problem")  # added after the first release
STATES = ("ok", "missing", "corrupt", "bad_gguf")


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
    alias: str = ""
    origin: str = ""
    state: str = "ok"
    problem: str = ""

    @property
    def usable(self) -> bool:
        return self.state == "ok"

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
                  downloaded: bool, *, alias: str | None = None, origin: str = "") -> CatalogEntry:
        def insert(db: sqlite3.Connection) -> CatalogEntry:
            entry = CatalogEntry(model_id, reference, str(path), size, sha256, time.time(), downloaded,
                                 architecture_of(str(path)), alias or "", origin)
            db.execute(f"INSERT OR REPLACE INTO models ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (entry.id, entry.reference, entry.path, entry.size, entry.sha256, entry.added_at,
                        int(downloaded), entry.architecture, entry.alias or None, entry.origin or None, None, None))
            return entry

        return await self._db.run(insert)

    async def set_alias(self, model_id: str, alias: str) -> None:
        await self._db.run(lambda db: db.execute("UPDATE models SET alias = ? WHERE id = ?", (alias, model_id)))

    async def mark(self, model_id: str, state: str, problem: str = "") -> None:
        """What the last check found: `ok`, or what is wrong (the entry stays, so it is seen, not lost)."""
        assert state in STATES, state
        await self._db.run(lambda db: db.execute("UPDATE models SET state = ?, problem = ? WHERE id = ?",
                                                 (None if state == "ok" else state, problem or None, model_id)))

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
    """Create the table; a catalog from an older rbee gets the columns added since (architecture filled
    from the files)."""
    db.execute(_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(models)")}
    for column in _ADDED_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE models ADD COLUMN {column} TEXT")
    for model_id, path in db.execute("SELECT id, path FROM models WHERE architecture IS NULL").fetchall():
        db.execute("UPDATE models SET architecture = ? WHERE id = ?", (architecture_of(path), model_id))


def _entry(row: tuple) -> CatalogEntry:
    return CatalogEntry(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7] or "", row[8] or "",
                        row[9] or "", row[10] or "ok", row[11] or "")
