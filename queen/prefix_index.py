"""Which prompts each worker holds in its KV cache, as the queen can tell without tokens: the index behind
cache-aware routing.

A worker keeps each slot's cache until another request takes the slot, and a prompt that begins with a
cached one reuses it (worker/slots.py: turn 2 of a chat reads ~100 ms instead of seconds). So the next
turn of a conversation is fast only on the worker that answered the last one. The queen sees text, not
tokens: it serializes a request's prompt (the chat's messages, or the plain prompt) into one string, cuts
it into chunks and chains their hashes (shared/prefix_chain.py), as SGLang's router keeps an approximate
radix tree per worker. Each worker's `PrefixIndex` holds the chains
of its last `capacity` sequences (one per slot: a new one evicts the least recently used, or replaces the
chain it extends, as the worker's own slot choice does) with each answer appended, since the next turn
carries it. What the worker reports it reused corrects the index: a chain it no longer held is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.prefix_chain import CHUNK_CHARS

MIN_ROUTED_TOKENS = 32  # as worker/slots.py's MIN_SHARED_PREFIX: less is cheaper to compute again
DEFAULT_CHARS_PER_TOKEN = 4.0  # until a worker's reports teach the index its model's figure


def shared_chunks(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PrefixIndex:
    """A worker's cached sequences, as chains (most recently used last); bounded by its slots."""

    capacity: int = 4
    chains: list[tuple[int, ...]] = field(default_factory=list)
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN

    def held(self, request: Sequence[int]) -> int:
        """Chunks of `request` the worker is expected to hold (the longest shared prefix of any chain)."""
        return max((shared_chunks(c, request) for c in self.chains), default=0)

    def tokens(self, chunks: int) -> int:
        return int(chunks * CHUNK_CHARS / self.chars_per_token)

    def record(self, sequence: tuple[int, ...]) -> None:
        """A sequence the worker now holds: it replaces the chain it shares the most with (the slot the
        worker reused), else the least recently used one when every slot is taken."""
        if not sequence:
            return
        best = max(range(len(self.chains)), key=lambda i: shared_chunks(self.chains[i], sequence), default=None)
        if best is not None and shared_chunks(self.chains[best], sequence) > 0:
            del self.chains[best]
        elif len(self.chains) >= self.capacity:
            del self.chains[0]
        self.chains.append(sequence)

    def correct(self, request: Sequence[int], reused_tokens: int) -> None:
        """The worker reused `reused_tokens` of `request`: chains it claimed to hold beyond that are gone."""
        reused_chunks = int(reused_tokens * self.chars_per_token / CHUNK_CHARS)
        if self.held(request) > reused_chunks + 1:  # a chunk of slack: chunks and tokens do not align
            self.chains = [c for c in self.chains if shared_chunks(c, request) <= reused_chunks + 1]

    def learn(self, chars: int, prompt_tokens: int | None) -> None:
        """The model's characters per token, from a prompt of `chars` that was `prompt_tokens` long."""
        if prompt_tokens and chars > 0:
            self.chars_per_token = 0.8 * self.chars_per_token + 0.2 * (chars / prompt_tokens)


@dataclass
class SavedPrefixes:
    """What each hive keeps on disk (the prompt caches its workers saved: worker/prompt_cache.py), per
    model, as the hive last reported it (GET /v1/prompt-caches). Any worker of the model on that hive
    reads such a cache back instead of computing the prompt, so a conversation whose worker has stopped
    (idle timeout, eviction, a queen restart) is still routed to the hive that kept it."""

    max_age_s: float = 5.0  # a report older than this is asked again when it could decide a route
    reports: dict[str, dict[str, list[tuple[int, ...]]]] = field(default_factory=dict)  # hive -> model -> chains
    asked_at: dict[str, float] = field(default_factory=dict)

    def stale(self, hive_id: str, now: float, worker_gone_at: float | None = None) -> bool:
        """Older than max_age_s, or older than the last time a worker of the hive went away (a stopping
        worker saves what its slots hold)."""
        asked = self.asked_at.get(hive_id, float("-inf"))
        return now - asked > self.max_age_s or (worker_gone_at is not None and worker_gone_at >= asked)

    def update(self, hive_id: str, models: dict[str, list[dict]] | None, now: float) -> None:
        """A hive's report (None: it did not answer; what it said before is kept until it does)."""
        self.asked_at[hive_id] = now
        if models is not None:
            self.reports[hive_id] = {model: [tuple(int(h) for h in entry.get("chain") or ()) for entry in entries]
                                     for model, entries in models.items() if isinstance(entries, list)}

    def held(self, hive_id: str, model: str, request: Sequence[int]) -> int:
        """Chunks of `request` the hive keeps on disk for the model (the longest shared prefix)."""
        chains = self.reports.get(hive_id, {}).get(model, ())
        return max((shared_chunks(c, request) for c in chains), default=0)


@dataclass(frozen=True)
class RouteGuard:
    """When the worker with the cache is too much busier than the least loaded one, the load wins (as
    SGLang's balance thresholds): more than `abs_slots` more busy slots AND more than `rel` times as many."""

    abs_slots: int = 2
    rel: float = 1.5

    def overloaded(self, cached_load: int, least_load: int) -> bool:
        return cached_load - least_load > self.abs_slots and cached_load > self.rel * least_load
