"""The KV cache side of continuous batching: `Slot`, one llama.cpp sequence and the tokens its cells hold,
and `place_prompt`, which picks the slot (and the cache to copy) a new prompt reuses the most of.

A slot outlives the requests it serves: when one ends, its cells stay, so the next request that starts
the same way (the next turn of a chat, a shared system prompt) decodes only what is new. What a request
carries while it runs (sampling, stop strings, its text so far) is its `Decoding` (worker/decoding.py).
Pure Python: the engine makes the matching llama.cpp memory calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from worker.decoding import Decoding

MIN_SHARED_PREFIX = 32  # tokens: below this, computing a prefix again is cheaper than copying a cache


@dataclass(eq=False)
class Slot:
    """A llama.cpp sequence: the tokens whose KV cells it holds, those about to enter it, and the request
    using it, if any."""

    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells are in the cache, in order
    last_used: float = 0.0  # time.monotonic() when its last request ended
    pending: list[int] = field(default_factory=list)  # prompt tokens still to decode
    next_token: int | None = None  # sampled, to be decoded in the next step
    batch_index: int = -1  # where its logits are in this step's batch (-1: none)
    decoding: Decoding | None = None  # the request generating in it
    held_text: str = ""  # the last request's prompt and answer, serialized as the queen routes (prompt caches)

    @property
    def position(self) -> int:
        """Where the next token decoded into this sequence goes."""
        return len(self.cached)

    def shared_prefix(self, tokens: Sequence[int]) -> int:
        return common_prefix(self.cached, tokens)

    def begin(self, prompt: Sequence[int], keep: int, decoding: Decoding) -> None:
        """A request takes the slot: the first `keep` cached tokens stay (the engine removed the rest's
        cells), the rest of the prompt is still to decode."""
        self.cached, self.pending = list(prompt[:keep]), list(prompt[keep:])
        self.next_token, self.batch_index, self.decoding = None, -1, decoding

    def decoded(self, take: int) -> None:
        """This step's decode put the sampled token, or `take` pending prompt tokens, into the cells."""
        if self.next_token is not None:
            self.cached.append(self.next_token)
            self.next_token = None
        self.cached.extend(self.pending[:take])
        del self.pending[:take]

    def release(self) -> None:
        """The request has ended; the cells keep what was decoded (a cancelled prompt's part too)."""
        self.pending, self.next_token, self.decoding = [], None, None
        self.last_used = time.monotonic()


@dataclass(frozen=True)
class Placement:
    slot: Slot  # a free slot
    copy_from: Slot | None  # a busy slot whose whole cache is first copied into it
    keep: int  # cached tokens the request reuses: the cells past these are removed


def place_prompt(slots: Sequence[Slot], prompt: Sequence[int]) -> Placement:
    """Into the free slot whose cache shares the longest prefix with the prompt (the least recently used
    among equals, so other cached conversations survive longer). When a busy slot shares a clearly longer
    prefix (a system prompt the running requests have too), its cache is copied into the stalest free slot
    instead of computing that prefix again. The last prompt token is always decoded again: it gives the
    logits to sample from."""
    free = [s for s in slots if s.decoding is None]
    if not free:
        raise ValueError("place_prompt needs a free slot")
    own = {s.seq: s.shared_prefix(prompt) for s in free}
    slot = max(free, key=lambda s: (own[s.seq], -s.last_used))
    common, copy_from = own[slot.seq], None
    busy = [s for s in slots if s.decoding is not None]
    source = max(busy, key=lambda s: s.shared_prefix(prompt), default=None)
    if source is not None and (shared := source.shared_prefix(prompt)) >= common + MIN_SHARED_PREFIX:
        slot, copy_from, common = min(free, key=lambda s: s.last_used), source, shared
    return Placement(slot, copy_from, min(common, len(prompt) - 1))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n
