"""Prompt caches kept on disk: a slot's KV cache is written to the hive's cache directory before another
request overwrites it, and when the worker stops; a later request whose prompt starts with a saved
sequence reads it back instead of computing it again, on any worker of the model on that hive (so a
conversation survives its worker's idle timeout, an eviction, a queen restart).

One saved sequence is two files: llama.cpp's own sequence state (`<key>.kv`: its KV cells, in the form
worker/seq_state.py gives them, which a worker with any number of slots reads) and a sidecar (`<key>.json`) naming the model it belongs to (its
file's sha256 and the cache type: a state only fits the model and cache type that made it), the tokens,
and the state file's size and CRC-32, so that a truncated, corrupt or foreign file is found before
llama.cpp reads it and is removed, never loaded (the prompt is computed instead). Each model has its own
directory under the hive's cache directory, bounded together: past `max_bytes` the least recently used
sequences of any model go. Files are 0600.

This module is the bookkeeping; the engine (worker/engine.py) does the llama.cpp calls through the
`write` and `read` callables it passes, on its owner thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.slots import common_prefix

log = logging.getLogger("rbee.worker.prompt_cache")

FORMAT = 2  # 2: the state as worker/seq_state.py keeps it (any number of slots reads it); 1: llama.cpp's file
MIN_SAVED_TOKENS = 256  # a shorter sequence is cheaper to compute again than to write and read back
MIN_RESTORE_GAIN = 64  # read a saved sequence only when it gives this many tokens more than a slot does
CRC_CHUNK = 1 << 20


@dataclass(frozen=True)
class SavedPrefix:
    key: str
    tokens: tuple[int, ...]
    size: int  # of the state file, bytes
    crc: int  # CRC-32 of the state file


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


class PromptCacheStore:
    """The saved sequences of one model (its own directory), indexed in memory by their tokens."""

    def __init__(self, directory: Path, model_key: str, max_bytes: int) -> None:
        self.directory = directory
        self.model_key = model_key
        self.max_bytes = max_bytes
        self.entries: dict[str, SavedPrefix] = {}

    def open(self) -> None:
        """Index what is there; a sidecar that is not ours, or whose state file is missing or of another
        size, is removed with its state file."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sidecar in self.directory.glob("*.json"):
            entry = self._read_sidecar(sidecar)
            if entry is None:
                log.warning("removing %s: not a prompt cache of this model, or incomplete", sidecar.name)
                self._remove(sidecar.stem)
            else:
                self.entries[entry.key] = entry
        for stray in self.directory.glob("*.kv.tmp"):  # a save cut short
            stray.unlink(missing_ok=True)

    def _read_sidecar(self, sidecar: Path) -> SavedPrefix | None:
        try:
            meta = json.loads(sidecar.read_text())
            entry = SavedPrefix(sidecar.stem, tuple(int(t) for t in meta["tokens"]), int(meta["size"]), int(meta["crc"]))
            if meta.get("format") != FORMAT or meta.get("model") != self.model_key:
                return None
            if (self.directory / f"{entry.key}.kv").stat().st_size != entry.size:
                return None
            return entry
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def longest(self, prompt: Sequence[int]) -> tuple[SavedPrefix | None, int]:
        """The saved sequence sharing the longest prefix with `prompt`, and how many tokens it shares."""
        best, shared = None, 0
        for entry in self.entries.values():
            n = common_prefix(entry.tokens, prompt)
            if n > shared:
                best, shared = entry, n
        return best, shared

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether a saved sequence already starts with all of `tokens` (saving them again is pointless)."""
        return any(len(e.tokens) >= len(tokens) and common_prefix(e.tokens, tokens) == len(tokens)
                   for e in self.entries.values())

    def save(self, tokens: Sequence[int], write: Callable[[Path], bool],
             chain: Sequence[int] = ()) -> SavedPrefix | None:
        """Save a sequence: `write(path)` writes its state there (False: it could not). `chain`: the
        sequence's text as the queen routes by it (shared/prefix_chain.py), for its hive to report."""
        tokens = tuple(tokens)
        key = hashlib.sha256(f"{self.model_key}:{','.join(map(str, tokens))}".encode()).hexdigest()[:32]
        tmp, final = self.directory / f"{key}.kv.tmp", self.directory / f"{key}.kv"
        try:
            if not write(tmp):
                tmp.unlink(missing_ok=True)
                return None
            os.chmod(tmp, 0o600)
            entry = SavedPrefix(key, tokens, tmp.stat().st_size, file_crc(tmp))
            os.replace(tmp, final)
            sidecar = self.directory / f"{key}.json"
            fd = os.open(sidecar.with_suffix(".json.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "model": self.model_key, "tokens": list(tokens), "size": entry.size,
                           "crc": entry.crc, "saved_at": time.time(), "chain": list(chain)}, f)
            os.replace(sidecar.with_suffix(".json.tmp"), sidecar)
        except OSError as exc:
            log.warning("could not save a prompt cache of %d tokens: %s", len(tokens), exc)
            self._remove(key)
            return None
        # a saved sequence this one extends is no longer needed
        for older in [e for e in self.entries.values() if len(e.tokens) < len(tokens)
                      and common_prefix(e.tokens, tokens) == len(e.tokens)]:
            self.forget(older)
        self.entries[key] = entry
        self._bound()
        return entry

    def read(self, entry: SavedPrefix, read: Callable[[Path], Sequence[int] | None]) -> bool:
        """Check the state file against its sidecar, then `read(path)` loads it (returning the tokens it
        held, or None); anything amiss removes the entry. True when the tokens are the saved ones."""
        path = self.directory / f"{entry.key}.kv"
        try:
            intact = path.stat().st_size == entry.size and file_crc(path) == entry.crc
        except OSError:
            intact = False
        if not intact:
            log.warning("removing prompt cache %s: its file is truncated or corrupt", entry.key)
            self.forget(entry)
            return False
        tokens = read(path)
        if tokens is None or tuple(tokens) != entry.tokens:
            log.warning("removing prompt cache %s: llama.cpp could not read it back", entry.key)
            self.forget(entry)
            return False
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept longer
        return True

    def forget(self, entry: SavedPrefix) -> None:
        self.entries.pop(entry.key, None)
        self._remove(entry.key)

    def _remove(self, key: str) -> None:
        for suffix in (".kv", ".json", ".kv.tmp", ".json.tmp"):
            (self.directory / f"{key}{suffix}").unlink(missing_ok=True)

    def _bound(self) -> None:
        """Past max_bytes in the whole hive's cache (every model's directory beside this one), the least
        recently used sequences go, by their state files' mtime: another model's too (its worker finds the
        file gone when it looks, and computes the prompt)."""
        files = []
        for kv in self.directory.parent.glob("*/*.kv"):
            with contextlib.suppress(OSError):
                stat = kv.stat()
                files.append((stat.st_mtime, stat.st_size, kv))
        total = sum(size for _, size, _ in files)
        for _, size, kv in sorted(files):
            if total <= self.max_bytes:
                break
            total -= size
            if kv.parent == self.directory and kv.stem in self.entries:
                self.forget(self.entries[kv.stem])
            else:
                for suffix in (".kv", ".json"):
                    kv.with_suffix(suffix).unlink(missing_ok=True)
