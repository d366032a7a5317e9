"""`GenerationEngine`: the owner thread (worker/owner_thread.py) of a generating worker, which decodes
every active request together.

Continuous batching, as llama-server does it: the context has slots (llama.cpp sequences, each with its
own share of the KV cache; worker/slots.py), fixed (--parallel) or growing with demand (`_grow`, rules in
shared/kv_cache.py). Each step admits waiting requests into free slots, then decodes one batch holding
the next token of every generating sequence plus a chunk of each new prompt, and samples each sequence
with its own sampler chain. A request whose prompt starts with what a slot already holds (the next turn of
a chat, a shared system prompt) reuses those KV cells.
Cancelling sets an Event that the loop reads every step. What a request carries while it runs (its
sampler, text stream, timings) is its `Decoding` (worker/decoding.py); the text a client sees comes out
of a `TextStream` (worker/text_stream.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from shared.errors import InvalidRequest
from shared.events import Event, Started, Token
from shared.heartbeat import EngineState
from shared.inference import InferenceRequest, schema_for_grammar
from shared.kv_cache import KV_ELEMENT_BYTES
from shared.meminfo import ram_bytes
from shared.prefix_chain import chain, with_answer
from worker import seq_state
from worker.config import WorkerConfig
from worker.decoding import Decoding, Generation, PreparedRequest, end_stats
from worker.errors import GenerationError
from worker.ngram import NgramDrafter
from worker.owner_thread import LlamaOwner, log, reject, resolve
from worker.prompt_cache import MIN_RESTORE_GAIN, MIN_SAVED_TOKENS, PromptCacheStore
from worker.sampling import greedy_alone, sampler_for
from worker.slots import Slot, place_prompt
from worker.text_stream import TextStream

# Tokens reach the event loop in small batches: a request's first at once (TTFT), then every sequence's
# new tokens together in one hand-over per TOKEN_FLUSH_S. Each hand-over wakes this loop, the queen and
# the client, and every wake-up steals CPU from llama.cpp's threads when they use every core: measured
# on 2 cores, per-token hand-over cost 8-12 % of throughput end to end, 20 ms about 5 %, 50 ms under 3 %.
TOKEN_FLUSH_S = 0.05
BATCH_TOKENS = 512  # tokens decoded per step at most: every generating sequence's next one, then prompts
# While other sequences are generating, each new prompt goes in by chunks of at most this many tokens, so
# one long prompt delays their next token by a fraction of a second per step rather than by seconds (on 2
# cores a 512-token chunk of the built-in model takes about 1.3 s, 128 tokens about 0.3 s), while many
# short ones (a burst of clients) go in together, up to the batch: each waits one step, not one per prompt.
PROMPT_CHUNK_WHILE_GENERATING = 128
# an idle worker's first step waits for the rest of a burst (GenerationEngine._gather)
GATHER_FIRST_S, GATHER_GAP_S, GATHER_MAX_S = 0.002, 0.008, 0.040
GUESSING_SLOTS_MAX = 2  # guessed tokens (worker/ngram.py) are decoded when at most this many sequences generate


LOOSE_JSON_CHAR = 'char ::= [^"\\\\]'
STRICT_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F]'


def strict_json_strings(gbnf: str) -> str:
    """llama-cpp-python's converter lets a JSON string hold raw control characters (a newline, say), which
    no JSON parser takes: llama.cpp's own converter excludes them, and so does this."""
    return gbnf.replace(LOOSE_JSON_CHAR, STRICT_JSON_CHAR)


class GenerationEngine(LlamaOwner[Generation]):
    def __init__(self, config: WorkerConfig, on_state_change: Callable[[EngineState], Any] | None = None) -> None:
        super().__init__(config, on_state_change)
        self._chat_formatter: Any = None
        self._slots: list[Slot] = []  # owner thread from here on
        self._waiting: deque[Generation] = deque()
        self._batch: Any = None
        self._memory: Any = None
        self._busy_told = 0  # the busy-slot count last handed to the loop
        self._deliver_now = False  # a first token waits for its hand-over
        self._n_vocab = 0  # the model's, once loaded: the length of a position's logits
        self._delivered_at = 0.0
        self._prompt_cache: PromptCacheStore | None = None  # opened on the owner thread (file I/O)
        self._cannot_grow = False  # set when growing failed (no memory): the slots stay as they are

    # -- loop side ------------------------------------------------------------------------------------

    def prepare(self, request: InferenceRequest) -> PreparedRequest:
        """Tokenize (and chat-format) a request and check it fits a slot. Runs in any thread: the
        vocabulary is read-only once loaded."""
        with self._vocab_lock:
            self._check_ready()
            return self._prepare(request)

    def submit(self, request: PreparedRequest, job_id: str, emit: Callable[[Event], Any]) -> Generation:
        generation = Generation(request, job_id, emit, asyncio.get_running_loop().create_future())
        self._enqueue(generation)
        return generation

    def _prepare(self, request: InferenceRequest) -> PreparedRequest:
        import llama_cpp

        stops = list(request.stop or ())
        if request.messages is not None:
            tokens, template_stops = self._chat_prompt(request.messages)
            stops += template_stops
        else:
            tokens = self.tokenize(request.prompt or "", add_special=True)
        if request.continue_ids:
            n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            if max(request.continue_ids) >= n_vocab:
                raise InvalidRequest(f"Field 'continue_ids' holds a token id past this model's {n_vocab} tokens.",
                                     field="continue_ids", problem=f"holds ids past {n_vocab}")
            tokens = tokens + list(request.continue_ids)
        if len(tokens) >= self.n_ctx and not request.count_only:
            problem = (f"is {len(tokens)} tokens long; a slot of this worker holds {self.n_ctx} "
                       f"(--ctx-size), the answer included")
            raise InvalidRequest(f"The prompt {problem}. Shorten it, or start the worker with a larger --ctx-size.",
                                 field="prompt", problem=problem, code="PROMPT_TOO_LONG")
        gbnf = None if request.count_only else self._grammar_of(request)
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(InferenceRequest)}
        return PreparedRequest(**fields, prompt_tokens=tuple(tokens), stop_strings=tuple(s for s in stops if s),
                               gbnf=gbnf)

    def _grammar_of(self, request: InferenceRequest) -> str | None:
        """The request's grammar as GBNF, checked by llama.cpp here so a bad one is the client's 400, not
        a failed generation. A JSON schema goes through llama-cpp-python's converter (llama.cpp's own)."""
        import llama_cpp

        if request.json_schema is not None:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            try:
                gbnf = strict_json_strings(json_schema_to_gbnf(json.dumps(schema_for_grammar(request.json_schema))))
            except Exception as exc:  # the converter asserts on what it does not know
                problem = f"is not a JSON schema this worker can follow ({exc or type(exc).__name__})"
                raise InvalidRequest(f"Field 'json_schema' {problem}.", field="json_schema", problem=problem) from exc
            name = "json_schema"
        elif request.grammar is not None:
            gbnf, name = request.grammar, "grammar"
        else:
            return None
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            problem = "is not a valid GBNF grammar with a 'root' rule (llama.cpp could not parse it)"
            if name == "json_schema":
                problem = "gives a grammar llama.cpp cannot parse"
            raise InvalidRequest(f"Field '{name}' {problem}.", field=name, problem=problem)
        llama_cpp.llama_sampler_free(sampler)
        return gbnf

    def _chat_prompt(self, messages) -> tuple[list[int], list[str]]:
        """The model's own chat template (GGUF metadata), as llama-cpp-python's formatter renders it. A
        model without one (a base model) gets the one message as plain text, or a plain transcript:
        clients send chat by default and must not fail for it."""
        if self._chat_formatter is None:
            if len(messages) == 1:
                return self.tokenize(messages[0][1], add_special=True), []
            transcript = "".join(f"{role.capitalize()}: {content}\n" for role, content in messages) + "Assistant:"
            return self.tokenize(transcript, add_special=True), ["\nUser:"]
        formatted = self._chat_formatter(messages=[{"role": r, "content": c} for r, c in messages])
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        return self.tokenize(formatted.prompt, add_special=not formatted.added_special), stop

    # -- thread side: loading -------------------------------------------------------------------------

    def _context_params(self, llama_cpp: Any, cparams: Any) -> str:
        """Slots for continuous batching."""
        slots = self.config.slots_at_start
        cparams.n_ctx = self.n_ctx * slots
        cparams.n_batch = cparams.n_ubatch = BATCH_TOKENS
        cparams.n_seq_max = slots
        cparams.kv_unified = False  # each slot its own share of the cache, as llama-server -np N
        return f"a context of {self.n_ctx} tokens x {slots} slots"

    def _context_ready(self, llama_cpp: Any) -> None:
        self._chat_formatter = self._make_chat_formatter()
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)

    def _make_chat_formatter(self) -> Any:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._meta(b"tokenizer.chat_template", size=1 << 16)
        if template is None:
            return None
        eos_id, bos_id = llama_cpp.llama_vocab_eos(self._vocab), llama_cpp.llama_vocab_bos(self._vocab)
        eos = self.piece(eos_id, special=True).decode(errors="replace") if eos_id != -1 else ""
        bos = self.piece(bos_id, special=True).decode(errors="replace") if bos_id != -1 else ""
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id])

    # -- thread side: the owner loop ------------------------------------------------------------------

    def _serve(self) -> None:
        import llama_cpp

        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._slots = [Slot(seq) for seq in range(self.config.slots_at_start)]
        if (directory := self.config.prompt_cache_dir) is not None:
            key = f"{directory.name}:{self.config.model_path.stat().st_size}:{self.config.kv_cache_type}"
            self._prompt_cache = PromptCacheStore(directory, key, self.config.prompt_cache_bytes)
            self._prompt_cache.open()
        try:
            while self._step(self._slots, self._waiting):
                pass
            for slot in self._slots:  # told to stop: what the slots hold outlives the worker
                self._save_slot(slot, keep=0)
        finally:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    def _abandon(self, left: list[Generation], broke: BaseException | None) -> None:
        ending: str | BaseException = GenerationError(
            f"The worker's engine failed ({broke}); ask again: another worker will answer.",
            status=500) if broke else "cancelled"
        for slot in self._slots:
            if slot.decoding is not None:
                self._finish(slot, ending)
        self._waiting.extend(left)
        for gen in self._waiting:
            if isinstance(ending, BaseException):
                self._post(reject, gen.done, ending)
            else:
                self._post(resolve, gen.done, end_stats(0, None, 0.0, "cancelled"))
        self._waiting.clear()

    def _step(self, slots: list[Slot], waiting: deque[Generation]) -> bool:
        """One step: take new requests, drop cancelled ones, admit, decode one batch, sample. False: stop."""
        idle = not waiting and all(s.decoding is None for s in slots)
        try:
            item = self._requests.get(block=idle)
            while True:
                if item is None:
                    return False
                waiting.append(item)
                item = self._requests.get_nowait()
        except queue.Empty:
            pass
        if idle and self._gather(waiting):
            return False
        if self._shutdown.is_set():
            return False
        for slot in slots:
            if slot.decoding is not None and slot.decoding.gen.cancel.is_set():
                self._finish(slot, "cancelled")
        for gen in [g for g in waiting if g.cancel.is_set()]:
            waiting.remove(gen)
            self._post(resolve, gen.done, end_stats(0, None, 0.0, "cancelled"))
        if waiting and all(s.decoding is not None for s in slots) and len(slots) < self.config.slots_at_most \
                and not self._cannot_grow:
            self._grow(slots, len(slots) + len(waiting))
        while waiting and any(s.decoding is None for s in slots):
            self._admit(waiting.popleft(), slots)
        self._tell_busy(slots)
        if any(s.decoding is not None for s in slots):
            self._decode_and_sample([s for s in slots if s.decoding is not None])
            self._deliver(slots)
            self._tell_busy(slots)  # a slot that just finished is free now, not after the next request
        return True

    def _gather(self, waiting: deque[Generation]) -> bool:
        """An idle worker's first step waits a moment for the rest of a burst: clients that ask at once reach
        it over tens of milliseconds (each passes the queen's and this worker's event loops in turn), and a
        step started with the first alone makes every other wait for it to end. Waits GATHER_FIRST_S for a
        second request, then GATHER_GAP_S after each arrival, GATHER_MAX_S in all, never past a full house.
        True: told to stop meanwhile."""
        began = time.perf_counter()
        deadline = began + GATHER_FIRST_S
        while len(waiting) < self.config.slots_at_most:
            left = min(deadline, began + GATHER_MAX_S) - time.perf_counter()
            if left <= 0:
                break
            try:
                item = self._requests.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                return True
            waiting.append(item)
            deadline = time.perf_counter() + GATHER_GAP_S
        return False

    def _grow(self, slots: list[Slot], wanted: int) -> None:
        """Make room for `wanted` slots (the next power of two, at most --max-parallel): a larger context,
        every slot's cells moved into it, the old one freed. Only when the machine has the memory; if not,
        or if llama.cpp cannot make it, the slots stay as they are (and waiting requests wait for one)."""
        import llama_cpp

        began, have = time.perf_counter(), len(slots)
        target = min(self.config.slots_at_most, 1 << max(wanted - 1, 1).bit_length())
        more = self._kv_bytes_per_token() * self.n_ctx * (target - have)
        # on a GPU the KV cache is in its memory: llama.cpp refuses the context when it does not fit
        if self.config.device == "cpu" and (available := ram_bytes("MemAvailable")) is not None \
                and more * 1.25 > available:
            log.warning("not growing to %d slots: their KV cache needs %.0f MB more, %.0f MB of memory is "
                        "available", target, more / 1e6, available / 1e6)
            self._cannot_grow = True
            return
        params = type(self._cparams).from_buffer_copy(self._cparams)
        params.n_ctx, params.n_seq_max = self.n_ctx * target, target
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            log.warning("not growing to %d slots: llama.cpp could not make the context (out of memory?)", target)
            self._cannot_grow = True
            return
        for slot in slots:  # every slot's cells: running requests go on where they were, idle caches stay
            if slot.cached and not ((state := seq_state.take(self._ctx, slot.seq)) is not None
                                    and seq_state.put(ctx, slot.seq, state, target)):
                llama_cpp.llama_free(ctx)
                log.warning("not growing to %d slots: slot %d's cache could not be moved", target, slot.seq)
                self._cannot_grow = True
                return
        llama_cpp.llama_free(self._ctx)
        self._ctx, self._cparams, self._memory = ctx, params, llama_cpp.llama_get_memory(ctx)
        slots.extend(Slot(seq) for seq in range(have, target))
        self._post(setattr, self, "slots_open", target)
        log.info("grew from %d to %d slots (%.0f MB more KV cache) in %.0f ms", have, target, more / 1e6,
                 (time.perf_counter() - began) * 1000)

    def _kv_bytes_per_token(self) -> float:
        """One token's K and V over every layer, as llama.cpp stores them (llama-kv-cache.cpp)."""
        import llama_cpp

        model = self._model
        n_head = max(1, llama_cpp.llama_model_n_head(model))
        per_layer = 2 * llama_cpp.llama_model_n_embd(model) // n_head * llama_cpp.llama_model_n_head_kv(model)
        return llama_cpp.llama_model_n_layer(model) * per_layer * KV_ELEMENT_BYTES[self.config.kv_cache_type]

    def _tell_busy(self, slots: list[Slot]) -> None:
        busy = sum(1 for s in slots if s.decoding is not None)
        if busy != self._busy_told:  # only changes cross to the loop: each hand-over costs a wake-up
            self._busy_told = busy
            self._post(self._set_busy, busy)

    def _admit(self, gen: Generation, slots: list[Slot]) -> None:
        """Into the slot whose cache it reuses the most of (worker/slots.py says which)."""
        import llama_cpp

        req, started = gen.request, time.perf_counter()
        placement = place_prompt(slots, req.prompt_tokens)
        slot, keep = placement.slot, placement.keep
        if placement.copy_from is not None:
            llama_cpp.llama_memory_seq_cp(self._memory, placement.copy_from.seq, slot.seq, -1, -1)  # all of it
        elif self._prompt_cache is not None:
            self._save_slot(slot, keep)  # before the cells past `keep` are overwritten
            keep = self._restore(slot, req.prompt_tokens, keep)
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)
        slot.begin(req.prompt_tokens, keep, Decoding(
            gen, sampler=sampler_for(req, self._vocab, self.n_ctx), text=TextStream(req.stop_strings),
            greedy=greedy_alone(req),
            reused=keep, started=started))
        self._post(gen.emit, Started(job_id=gen.job_id, model=self.config.model_ref))

    def _save_slot(self, slot: Slot, keep: int) -> None:
        """Save the slot's cache when a request is about to drop at least MIN_SAVED_TOKENS of it (another
        conversation takes the slot; the next turn of the same one keeps it) and nothing saved holds it."""
        store, held = self._prompt_cache, slot.cached
        if store is None or len(held) - keep < MIN_SAVED_TOKENS or store.covers(held):
            return
        began = time.perf_counter()

        def write(path: Path) -> bool:
            state = seq_state.take(self._ctx, slot.seq)
            if state is None:
                return False
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
                return file.write(state) == len(state)

        saved = store.save(held, write, chain(slot.held_text) if slot.held_text else ())
        if saved is not None:
            log.info("saved the prompt cache of %d tokens (%.1f MB) in %.0f ms", len(held), saved.size / 1e6,
                     (time.perf_counter() - began) * 1000)

    def _restore(self, slot: Slot, prompt: list[int], keep: int) -> int:
        """Read back the saved sequence sharing the longest prefix with the prompt into the slot, when it
        gives MIN_RESTORE_GAIN tokens more than the slot holds; the tokens the request now reuses."""
        import llama_cpp

        store = self._prompt_cache
        saved, shared = store.longest(prompt) if store is not None else (None, 0)
        shared = min(shared, len(prompt) - 1)  # the last prompt token is decoded again: it gives the logits
        if store is None or saved is None or shared < keep + MIN_RESTORE_GAIN:
            return keep
        def read(path: Path) -> list[int] | None:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            slot.cached = []
            if not seq_state.put(self._ctx, slot.seq, path.read_bytes(), len(self._slots)):
                return None
            return list(saved.tokens)

        began = time.perf_counter()
        if not store.read(saved, read):
            if not slot.cached:  # the slot was emptied for it: nothing of its own is left to reuse
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
                return 0
            return keep
        slot.cached = list(saved.tokens)
        log.info("read back the prompt cache of %d tokens (%.1f MB) in %.0f ms: %d of the prompt's %d tokens reused",
                 len(saved.tokens), saved.size / 1e6, (time.perf_counter() - began) * 1000, shared, len(prompt))
        return shared

    def _decode_and_sample(self, active: list[Slot]) -> None:
        import llama_cpp

        batch, n = self._batch, 0

        def add(token: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = logits
            n += 1

        generating = [s for s in active if s.next_token is not None]
        # guesses only while few sequences generate and no prompt is going in: a guess costs a batch
        # position, which a busy batch gives to another sequence's token for sure
        guessing = self.config.draft_max > 0 and len(generating) <= GUESSING_SLOTS_MAX \
            and not any(s.pending for s in active)
        guesses: dict[int, list[int]] = {}
        for slot in generating:
            slot.batch_index = n
            add(slot.next_token, slot.position, slot.seq, True)
            if guessing and (guess := self._guess(slot, self.config.draft_max)):
                guesses[slot.seq] = guess
                for k, token in enumerate(guess):
                    add(token, slot.position + 1 + k, slot.seq, True)
        chunks: list[tuple[Slot, int]] = []
        chunk = PROMPT_CHUNK_WHILE_GENERATING if generating else BATCH_TOKENS
        for slot in (s for s in active if s.pending):  # prompts share what is left of the batch
            take = min(len(slot.pending), BATCH_TOKENS - n, chunk)
            if take <= 0:
                break
            start = slot.position
            for k in range(take):
                add(slot.pending[k], start + k, slot.seq, k == take - 1 and take == len(slot.pending))
            slot.batch_index = n - 1 if take == len(slot.pending) else -1
            chunks.append((slot, take))
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            for slot in active:
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
                slot.cached = []
                self._finish(slot, GenerationError(f"llama.cpp could not decode (status {status}): the cache is "
                                                   "full or the request too large", status=500))
            return
        for slot in generating:
            slot.decoded(0)
        for slot, take in chunks:
            slot.decoded(take)
        for slot in generating:
            self._sample_guessed(slot, guesses.get(slot.seq, []))
        for slot, _ in chunks:
            if not slot.pending and slot.decoding is not None and slot.batch_index >= 0:
                self._sample(slot, slot.decoding, slot.batch_index)

    def _guess(self, slot: Slot, room: int) -> list[int]:
        """Tokens that may follow the slot's next one (worker/ngram.py), at most `room`."""
        run = slot.decoding
        assert run is not None and slot.next_token is not None  # a generating slot
        req = run.gen.request
        room = min(room, req.max_tokens - run.generated - 1, self.n_ctx - slot.position - 2)
        if room <= 0:
            return []
        if run.drafter is None:  # made the first time it may guess: the prompt and the answer so far
            run.drafter = NgramDrafter(slot.cached + [slot.next_token], longest=self.config.draft_max)
        return run.drafter.guess(room)

    def _sample_guessed(self, slot: Slot, guess: list[int]) -> None:
        """Sample the slot's next token, then, while each sampled token is the one guessed at that place,
        the token after it from the guess's own logits; the cells of guesses not kept are removed."""
        import llama_cpp

        kept = 0
        for j in range(len(guess) + 1):
            if slot.decoding is None:
                break
            token = self._sample(slot, slot.decoding, slot.batch_index + j)
            if token is None or j == len(guess) or token != guess[j]:
                break
            slot.cached.append(token)  # its cell was decoded with the guess: kept
            slot.next_token = None
            kept += 1
        if guess:
            if slot.decoding is not None and slot.decoding.drafter is not None:
                slot.decoding.drafter.judged(len(guess), kept)
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, len(slot.cached), -1)

    def _sample(self, slot: Slot, run: Decoding, index: int) -> int | None:
        """Sample from the logits at `index` of the batch; the token when the generation goes on, None
        when it ended."""
        import llama_cpp
        import numpy as np

        req = run.gen.request
        if run.greedy:
            token = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index),
                                              shape=(self._n_vocab,)).argmax())
        else:
            token = llama_cpp.llama_sampler_sample(run.sampler, self._ctx, index)
        run.generated += 1
        if run.first_token_at is None:
            run.first_token_at = time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return None
        run.ids_pending.append(token)
        if req.logprobs is not None:
            run.logprobs_pending.append(self._logprobs(index, token, req.logprobs))
        text = run.text.push(self.piece(token))
        stop = run.text.stopped_by
        # at most max_tokens, and never past the slot's context
        if stop is not None or run.generated >= req.max_tokens or slot.position >= self.n_ctx:
            self._queue_text(run, text + run.text.finish())
            self._finish(slot, "length" if stop is None else "stop", stop_sequence=stop)
            return None
        # The ids go out with text only when that text is all of theirs (nothing held back, no half
        # character): what the queen continues from then matches what the client saw.
        self._queue_text(run, text, with_ids=run.text.settled)
        slot.next_token = token
        if run.drafter is not None:
            run.drafter.add(token)
        return token

    def _queue_text(self, run: Decoding, text: str, *, with_ids: bool = False) -> None:
        if run.add_text(text, with_ids=with_ids):
            self._deliver_now = True  # a first token goes out at once

    def _logprobs(self, index: int, token: int, top: int) -> dict[str, Any]:
        """The chosen token's log-probability and the `top` most likely, from the model's raw logits (before
        penalties, grammar and temperature), as OpenAI reports them."""
        import llama_cpp
        import numpy as np

        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(n_vocab,))
        shifted = logits - logits.max()
        logsoftmax = shifted - np.log(np.exp(shifted).sum())
        best = np.argpartition(-logsoftmax, top)[:top] if top else np.array([], dtype=int)
        best = best[np.argsort(-logsoftmax[best])]

        def text(t: int) -> str:
            return self.piece(int(t)).decode("utf-8", errors="replace")

        return {"token": text(token), "logprob": float(logsoftmax[token]),
                "top": [{"token": text(t), "logprob": float(logsoftmax[t])} for t in best]}

    def _deliver(self, slots: list[Slot]) -> None:
        """Hand every sequence's new tokens to the loop in one call, at most once per TOKEN_FLUSH_S."""
        now = time.perf_counter()
        if not (self._deliver_now or now - self._delivered_at >= TOKEN_FLUSH_S):
            return
        ready = [s.decoding for s in slots if s.decoding is not None and s.decoding.outbox]
        if ready:
            self._post(_deliver_all, [(run.gen.emit, run.outbox) for run in ready])
            for run in ready:
                run.outbox = []
            self._delivered_at = now
        self._deliver_now = False

    def _finish(self, slot: Slot, outcome: str | BaseException, stop_sequence: str | None = None) -> None:
        """End the slot's generation: the rest of its text, then its stats (or error); the slot keeps its
        cache for the next request that shares the prefix."""
        import llama_cpp

        run = slot.decoding
        assert run is not None  # callers pass active slots only
        if isinstance(outcome, str) and outcome != "cancelled":
            self._queue_text(run, run.text.finish())
        if run.outbox:  # its last tokens before its end
            self._post(_emit_all, run.gen.emit, run.outbox)
            run.outbox = []
        if isinstance(outcome, BaseException):
            self._post(reject, run.gen.done, outcome)
        else:
            self._post(resolve, run.gen.done, run.end_stats(outcome, stop_sequence))
        llama_cpp.llama_sampler_free(run.sampler)
        run.sampler = None
        if self._prompt_cache is not None:  # what a saved copy of this slot is reported as (its hive tells the queen)
            req = run.gen.request
            slot.held_text = with_answer(req.prompt, req.messages, "".join(run.parts))
        slot.release()


def _deliver_all(batch: list[tuple[Callable[[Event], Any], list[Token]]]) -> None:
    for emit, events in batch:
        _emit_all(emit, events)


def _emit_all(emit: Callable[[Event], Any], events: list[Token]) -> None:
    for event in events:
        emit(event)
