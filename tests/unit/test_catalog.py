"""The hive's model catalog on a real SQLite file: entries carry their GGUF's architecture, and a catalog
written before that column existed gains it, read from the files, without losing a row."""

from __future__ import annotations

import sqlite3

from hive.catalog import ModelCatalog
from tests.support.gguf_writer import llama_like

OLD_SCHEMA = """
CREATE TABLE models (id TEXT PRIMARY KEY, reference TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
                     sha256 TEXT NOT NULL, added_at REAL NOT NULL, downloaded INTEGER NOT NULL)
"""


async def test_an_added_model_carries_its_architecture_and_a_non_gguf_an_empty_one(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(llama_like())
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    catalog = ModelCatalog(tmp_path / "catalog.sqlite")
    await catalog.open()
    try:
        entry = await catalog.add("file:" + str(gguf), "file:" + str(gguf), gguf, gguf.stat().st_size, "0" * 64, False)
        assert entry.architecture == "llama"
        assert (await catalog.get(entry.id)).architecture == "llama"
        bad = await catalog.add("file:" + str(junk), "file:" + str(junk), junk, 17, "1" * 64, False)
        assert bad.architecture == ""
        assert [e.to_dict()["architecture"] for e in await catalog.list()] == ["llama", ""]
    finally:
        await catalog.close()


async def test_a_catalog_from_before_the_architecture_column_is_migrated_in_place(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(llama_like())
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("file:" + str(gguf), "file:" + str(gguf), str(gguf), 123, "a" * 64, 1.0, 0))
        db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("gone", "file:/nowhere.gguf", "/nowhere.gguf", 5, "b" * 64, 2.0, 1))
    catalog = ModelCatalog(path)
    await catalog.open()
    try:
        entries = await catalog.list()
        assert [(e.id, e.size, e.sha256, e.downloaded, e.architecture) for e in entries] == [
            ("file:" + str(gguf), 123, "a" * 64, False, "llama"), ("gone", 5, "b" * 64, True, "")]
    finally:
        await catalog.close()
