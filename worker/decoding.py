"""A generation request as the engine takes it (`PreparedRequest`), the handle the event loop keeps
(`Generation`), and what the request carries while it runs in a slot (`Decoding`): its sampler, its
text stream, its text and tokens so far and its timings, apart from the slot's cache (worker/slots.py),
which outlives it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from shared.events import Event, Token
from shared.inference import InferenceRequest
from worker.ngram import NgramDrafter
from worker.text_stream import TextStream


@dataclass(frozen=True, kw_only=True)
class PreparedRequest(InferenceRequest):
    """An inference request with its prompt already tokenized (and chat-formatted): sizes are checked
    before it is queued, and the owner thread does no text work."""

    prompt_tokens: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()  # the request's and the chat template's
    gbnf: str | None = None  # the grammar the output must follow (from `grammar` or `json_schema`)

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body.pop("prompt_tokens", None)
        body.pop("stop_strings", None)
        body.pop("gbnf", None)
        return body


@dataclass(eq=False)
class Generation:
    """One request on its way through the engine, as the loop sees it. `done` resolves (on the loop) to
    the end stats; setting `cancel` stops it within one step."""

    request: PreparedRequest
    job_id: str
    emit: Callable[[Event], Any]
    done: asyncio.Future[dict[str, Any]]
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class Decoding:
    """A generation while it holds a slot (owner thread only)."""

    gen: Generation
    sampler: Any  # its llama.cpp sampler chain, freed when it ends
    text: TextStream
    greedy: bool = False  # that chain is greedy alone: the engine takes the largest logit itself (worker/sampling.py)
    reused: int = 0  # prompt tokens found in the slot's cache
    started: float = field(default_factory=time.perf_counter)
    generated: int = 0  # tokens sampled, an end-of-generation one included
    first_token_at: float | None = None
    parts: list[str] = field(default_factory=list)  # the text handed out, one part per token event
    outbox: list[Token] = field(default_factory=list)  # token events for the loop's next hand-over
    ids_pending: list[int] = field(default_factory=list)  # generated ids whose text is not all out yet
    logprobs_pending: list[dict[str, Any]] = field(default_factory=list)  # one per id whose text is not out yet
    drafter: NgramDrafter | None = None  # its guesses of the next tokens (worker/ngram.py), once it may guess

    def add_text(self, text: str, *, with_ids: bool = False) -> bool:
        """Queue a token event for `text` (nothing for ""), with the log-probabilities of every token it
        covers and, when it is all of their text (`with_ids`), their ids: what the queen continues from
        then matches what the client saw. True when it is the answer's first (it goes out at once)."""
        if not text:
            return False
        self.parts.append(text)
        ids = None
        if with_ids:
            ids, self.ids_pending = tuple(self.ids_pending), []
        logprobs = None
        if self.gen.request.logprobs is not None:
            logprobs, self.logprobs_pending = self.logprobs_pending, []
        self.outbox.append(Token(t=text, i=len(self.parts) - 1, ids=ids, logprobs=logprobs))
        return len(self.parts) == 1

    def end_stats(self, stop_reason: str, stop_sequence: str | None = None) -> dict[str, Any]:
        ttft = None if self.first_token_at is None else (self.first_token_at - self.started) * 1000
        stats = end_stats(self.generated, ttft, time.perf_counter() - self.started, stop_reason)
        stats.update(prompt_tokens=len(self.gen.request.prompt_tokens), prompt_tokens_reused=self.reused,
                     text="".join(self.parts))
        if self.drafter is not None and self.drafter.tried:  # speculative decoding: guessed, and kept
            stats.update(draft_tokens=self.drafter.tried, draft_tokens_accepted=self.drafter.kept)
        if stop_sequence is not None:  # which stop string ended it (Anthropic's API names it)
            stats["stop_sequence"] = stop_sequence
        return stats


def end_stats(tokens_out: int, ttft_ms: float | None, elapsed_s: float, stop_reason: str) -> dict[str, Any]:
    return {
        "tokens_out": tokens_out,
        "ttft_ms": None if ttft_ms is None else round(ttft_ms, 2),
        "tokens_per_s": round(tokens_out / elapsed_s, 2) if elapsed_s > 0 and tokens_out else 0.0,
        "stop_reason": stop_reason,
    }
