"""worker/seq_state.py: a sequence's state from a context with N slots, stored as one stream, read by a
context with M slots (the byte layout of llama.cpp's sequence state, written here by hand)."""

from __future__ import annotations

import struct

import pytest

from worker.seq_state import StateFormatError, for_context, portable

MAGIC = 0x67677371


def state(streams: int, own: int, seq: int, entry: bytes) -> bytes:
    """What llama.cpp writes for sequence `seq` whose cells (`entry`: count, then cells) are in stream `own`."""
    body = b"".join(entry if s == own else struct.pack("<I", 0) for s in range(streams))
    return struct.pack("<IiI", MAGIC, seq, streams) + body


ENTRY = struct.pack("<I", 3) + bytes(range(40))  # three cells, and their (here arbitrary) data


@pytest.mark.parametrize("streams,seq", [(1, 0), (4, 0), (4, 2), (4, 3), (16, 9)])
def test_a_state_moves_between_contexts_of_any_size(streams, seq):
    kept = portable(state(streams, seq, seq, ENTRY), seq)
    assert kept == struct.pack("<IiI", MAGIC, 0, 1) + ENTRY
    for target_streams, target_seq in [(1, 0), (4, 1), (16, 15)]:
        assert for_context(kept, target_seq, target_streams) == state(target_streams, 0, target_seq, ENTRY)


def test_an_empty_sequence_is_one_zero_count():
    assert portable(state(4, 1, 1, struct.pack("<I", 0)), 1) == struct.pack("<IiII", MAGIC, 0, 1, 0)


@pytest.mark.parametrize("bad", [
    b"",  # nothing
    struct.pack("<Ii", MAGIC, 0),  # no stream count
    state(4, 1, 1, ENTRY)[:-2],  # cut: the zeros of the streams after it are gone
    state(2, 0, 1, ENTRY),  # cells in another stream than the sequence's own
])
def test_what_is_not_one_sequence_s_state_is_refused(bad):
    with pytest.raises(StateFormatError):
        portable(bad, 1)


def test_only_a_one_stream_state_is_read():
    with pytest.raises(StateFormatError):
        for_context(state(2, 0, 0, ENTRY), 0, 4)
