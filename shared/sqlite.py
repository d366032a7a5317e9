"""A SQLite database owned by one thread, so no query ever blocks a daemon's event loop.

SQLite connections belong to the thread that made them; a single-thread executor gives every query
that thread, in submission order (a write submitted before a read is seen by it).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")
Query = Callable[[sqlite3.Connection], T]


class SqliteThread:
    def __init__(self, path: Path, *, setup: Query[Any] | None = None) -> None:
        self.path = path
        self._setup = setup
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self.run(lambda _db: None)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; each statement is atomic
            db.execute("PRAGMA journal_mode=WAL")
            if self._setup is not None:
                self._setup(db)
            self._db = db
        return self._db

    def submit(self, query: Query[T]) -> Future[T]:
        """Queue a query without waiting for it (a write the caller need not see finish)."""
        return self._executor.submit(lambda: query(self._connect()))

    async def run(self, query: Query[T]) -> T:
        return await asyncio.wrap_future(self.submit(query))

    async def close(self) -> None:
        """Finish every queued query, then close the connection in its own thread."""
        def close(_db: sqlite3.Connection) -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        if self._db is not None:
            await self.run(close)
        await asyncio.to_thread(self._executor.shutdown, wait=True)


class SqliteStore:
    """Base of the stores kept in one SQLite file (catalog, job history, conversations): the owner opens it
    at start-up and closes it at shutdown (a cleanup_ctx), and subclasses add their queries on `_db`."""

    def __init__(self, path: Path, *, setup: Query[Any]) -> None:
        self._db = SqliteThread(path, setup=setup)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()
