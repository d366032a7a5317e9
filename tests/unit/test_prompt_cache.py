"""worker/prompt_cache.py's bookkeeping: which saved sequence a prompt reuses, what is not saved again,
the hive-wide size bound (least recently used first), and files that are truncated, corrupt, foreign or
half-written are removed and never read. The state files here are written by the test (llama.cpp writes
them in a worker: tests/integration/test_prompt_cache.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from worker.prompt_cache import PromptCacheStore


def store(root: Path, model: str = "abc", max_bytes: int = 1 << 20) -> PromptCacheStore:
    s = PromptCacheStore(root / model, f"{model}:98000000:f16", max_bytes)
    s.open()
    return s


def writer(size: int = 1000, ok: bool = True):
    def write(path: Path) -> bool:
        path.write_bytes(os.urandom(size))
        return ok
    return write


def test_the_longest_saved_prefix_of_a_prompt_is_found(tmp_path):
    s = store(tmp_path)
    s.save(range(0, 300), writer())
    s.save([7] * 400, writer())
    entry, shared = s.longest([*range(0, 250), 999, 1000])
    assert shared == 250 and entry.tokens == tuple(range(0, 300))
    assert s.longest([5, 6, 7]) == (None, 0)


def test_a_sequence_already_saved_is_not_saved_again_and_a_longer_one_replaces_it(tmp_path):
    s = store(tmp_path)
    first = s.save(range(300), writer())
    assert s.covers(range(200)) and s.covers(range(300)) and not s.covers(range(301))
    longer = s.save(range(500), writer())
    assert list(s.entries) == [longer.key]  # the prefix it extends went
    assert not (tmp_path / "abc" / f"{first.key}.kv").exists()


def test_files_are_private_and_come_back_after_a_restart(tmp_path):
    s = store(tmp_path)
    entry = s.save(range(300), writer())
    for suffix in (".kv", ".json"):
        assert stat.S_IMODE((tmp_path / "abc" / f"{entry.key}{suffix}").stat().st_mode) == 0o600
    again = store(tmp_path)
    assert again.entries == {entry.key: entry}
    assert again.read(entry, lambda path: list(range(300)))


def test_truncated_corrupt_foreign_and_half_written_files_are_removed_not_read(tmp_path):
    s = store(tmp_path)
    truncated, corrupt, unreadable = (s.save(range(n, n + 300), writer()) for n in (0, 1000, 2000))
    directory = tmp_path / "abc"
    data = (directory / f"{truncated.key}.kv").read_bytes()
    (directory / f"{truncated.key}.kv").write_bytes(data[:500])
    data = bytearray((directory / f"{corrupt.key}.kv").read_bytes())
    data[500] ^= 0xFF
    (directory / f"{corrupt.key}.kv").write_bytes(bytes(data))
    read_calls = []

    def read(path: Path):
        read_calls.append(path)
        return list(range(2000, 2300))

    assert not s.read(corrupt, read) and read_calls == []  # the CRC says so before llama.cpp sees it
    assert not s.read(unreadable, lambda path: None)  # llama.cpp refused it
    assert s.entries == {truncated.key: truncated}
    assert not (directory / f"{corrupt.key}.kv").exists() and not (directory / f"{unreadable.key}.json").exists()

    # at start-up: the truncated one (its size is off), a foreign model's, a save cut short
    other = PromptCacheStore(tmp_path / "elsewhere", "another-model:1:f16", 1 << 20)
    other.open()
    alien = other.save(range(300), writer())
    for suffix in (".kv", ".json"):
        os.replace(tmp_path / "elsewhere" / f"{alien.key}{suffix}", directory / f"{alien.key}{suffix}")
    (directory / "cut.kv.tmp").write_bytes(b"half")
    reopened = store(tmp_path)
    assert reopened.entries == {}
    assert sorted(p.name for p in directory.iterdir()) == []


def test_a_failed_write_leaves_nothing(tmp_path):
    s = store(tmp_path)
    assert s.save(range(300), writer(ok=False)) is None
    assert list((tmp_path / "abc").iterdir()) == [] and s.entries == {}


def test_the_hive_wide_bound_drops_the_least_recently_used_of_any_model(tmp_path):
    a, b = store(tmp_path, "a", max_bytes=2500), store(tmp_path, "b", max_bytes=2500)
    old = b.save(range(300), writer(1000))
    os.utime(tmp_path / "b" / f"{old.key}.kv", (1, 1))  # long unused
    first = a.save(range(1000, 1300), writer(1000))
    os.utime(tmp_path / "a" / f"{first.key}.kv", (2, 2))
    newest = a.save(range(2000, 2300), writer(1000))  # 3,000 bytes: the oldest goes, another model's
    assert not (tmp_path / "b" / f"{old.key}.kv").exists()
    assert set(a.entries) == {first.key, newest.key}
    assert not b.read(old, lambda path: list(range(300)))  # its worker finds it gone, and forgets it
