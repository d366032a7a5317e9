"""One sequence's KV cells as bytes that fit a context with any number of slots.

llama.cpp's sequence state (llama_state_seq_get_data) starts with a magic number and the sequence's id,
then the number of KV streams of the context it came from (one per slot: kv_unified is off) and refuses another number ("n_stream mismatch"), then has
an entry per stream: a cell count, and the cells where the count is not 0. A sequence's cells are all in
its own stream, so its state is the count of streams, zeros for the streams before its own, its entry, and
zeros for those after. Stored with the count 1 and only that entry, it reads back into any stream of a
context of any size (llama.cpp puts a one-sequence state into the target sequence's stream whatever the
entry's place): so a worker's slots can grow (worker/engine.py) and a prompt cache saved by a worker with
4 slots is read by one with 16 (worker/prompt_cache.py).
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

COUNT = struct.Struct("<I")
HEAD = struct.Struct("<Ii")  # llama.cpp's magic, the sequence id


class StateFormatError(ValueError):
    """The bytes are not one sequence's state as this module expects."""


def portable(state: bytes, stream: int) -> bytes:
    """A sequence's state taken from stream `stream` of its context, as one stream."""
    if len(state) < HEAD.size + COUNT.size:
        raise StateFormatError("shorter than its header")
    magic, _ = HEAD.unpack_from(state)
    (streams,) = COUNT.unpack_from(state, HEAD.size)
    if not 0 <= stream < streams:
        raise StateFormatError(f"stream {stream} of {streams}")
    before = HEAD.size + COUNT.size * (1 + stream)
    after = COUNT.size * (streams - 1 - stream)
    if len(state) < before + COUNT.size + after or any(state[HEAD.size + COUNT.size:before]) \
            or any(state[len(state) - after:]):
        raise StateFormatError("other streams hold cells")
    return HEAD.pack(magic, 0) + COUNT.pack(1) + state[before:len(state) - after]


def for_context(portable_state: bytes, seq: int, streams: int) -> bytes:
    """A portable state as a context with `streams` streams reads it into sequence `seq`."""
    body = HEAD.size + COUNT.size
    if len(portable_state) < body + COUNT.size or COUNT.unpack_from(portable_state, HEAD.size)[0] != 1:
        raise StateFormatError("not a one-stream state")
    magic, _ = HEAD.unpack_from(portable_state)
    return HEAD.pack(magic, seq) + COUNT.pack(streams) + portable_state[body:] + bytes(COUNT.size * (streams - 1))


def take(ctx: Any, seq: int) -> bytes | None:
    """Sequence `seq`'s cells in `ctx` (its stream `seq`), portable; None when llama.cpp gives none."""
    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    buffer = (ctypes.c_uint8 * size)()
    if size == 0 or llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq) != size:
        return None
    try:
        return portable(bytes(buffer), seq)
    except StateFormatError:
        return None


def put(ctx: Any, seq: int, portable_state: bytes, streams: int) -> bool:
    """Read a portable state into sequence `seq` of `ctx` (a context of `streams` slots)."""
    import llama_cpp

    try:
        data = for_context(portable_state, seq, streams)
    except StateFormatError:
        return False
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    return llama_cpp.llama_state_seq_set_data(ctx, buffer, len(data), seq) == len(data)
