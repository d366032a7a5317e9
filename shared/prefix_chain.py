"""Prompts as the queen routes them: a request serialized to one string, cut into CHUNK_CHARS chunks whose
hashes are chained (a hash names everything up to its chunk's end), as SGLang's router keys its prefix
tree. The queen indexes what each worker's slots hold by these chains (queen/prefix_index.py); a worker
writes the chain of each prompt cache it saves to disk beside it (worker/prompt_cache.py), and its hive
reports them (`saved_chains`), so the queen also knows which hive keeps which conversation on disk. The
hash is stable across processes (blake2b), unlike Python's own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shared.wire import Messages

CHUNK_CHARS = 64  # the routing's resolution: shorter shared prefixes are not worth a worker's load
MAX_INDEXED_CHARS = 256 * 1024  # about 64k tokens: a longer prompt's tail does not decide where it goes
_ROLE, _END = "\x1e", "\x1f"  # separators no text carries


def serialize(prompt: str | None, messages: Messages | None) -> str:
    """One string per request, whose prefixes are the prefixes of what the worker will tokenize."""
    if messages is not None:
        return "".join(f"{role}{_ROLE}{content}{_END}" for role, content in messages)
    return f"raw{_ROLE}{prompt or ''}"


def with_answer(prompt: str | None, messages: Messages | None, answer: str) -> str:
    """What the worker's slot holds after answering: the prompt, then the answer as the next turn sends it."""
    if messages is not None:
        return serialize(None, (*messages, ("assistant", answer)))
    return serialize(prompt, None) + answer


def chain(text: str) -> tuple[int, ...]:
    """The hash of each whole chunk of `text`, each chained to the one before (63-bit integers: JSON-safe)."""
    hashes: list[int] = []
    previous = b""
    data = text[:MAX_INDEXED_CHARS]
    for start in range(0, len(data) - CHUNK_CHARS + 1, CHUNK_CHARS):
        previous = hashlib.blake2b(previous + data[start:start + CHUNK_CHARS].encode(), digest_size=8).digest()
        hashes.append(int.from_bytes(previous, "big") >> 1)
    return tuple(hashes)


def saved_chains(directory: Path) -> list[tuple[tuple[int, ...], int]]:
    """(chain, tokens) of each prompt cache saved in a model's cache directory, from the sidecars the
    worker writes (worker/prompt_cache.py); a sidecar without a chain or unreadable is skipped."""
    found = []
    for sidecar in directory.glob("*.json") if directory.is_dir() else ():
        try:
            meta = json.loads(sidecar.read_text())
            saved_chain = tuple(int(h) for h in meta.get("chain") or ())
            tokens = len(meta.get("tokens") or ())
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if saved_chain:
            found.append((saved_chain, tokens))
    return found
