"""The one thread that owns the llama.cpp context and decodes every active request together.

llama.cpp is not safe to drive from several threads and its calls block, so everything touching the
context runs in this thread; the event loop only receives events through `call_soon_threadsafe`.

Continuous batching, as llama-server does it: the context has `parallel` slots (llama.cpp sequences,
each with its own share of the KV cache). Each step admits waiting requests into free slots, then
decodes one batch holding the next token of every generating sequence plus a chunk of each new prompt,
and samples each sequence with its own sampler chain. A request whose prompt starts with what a slot
already holds (the next turn of a chat, a shared system prompt) reuses those KV cells. Cancelling sets
an Event that the loop reads every step.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import dataclasses
import json
import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from shared.errors import InvalidRequest
from shared.events import Event, Started, Token
from shared.heartbeat import EngineState
from shared.inference import InferenceRequest, schema_for_grammar
from worker.config import WorkerConfig
from worker.errors import GenerationError, NotReady

log = logging.getLogger("rbee.worker.engine")

# Tokens reach the event loop in small batches: a request's first at once (TTFT), then every sequence's
# new tokens together in one hand-over per TOKEN_FLUSH_S. Each hand-over wakes this loop, the queen and
# the client, and every wake-up steals CPU from llama.cpp's threads when they use every core: measured
# on 2 cores, per-token hand-over cost 8-12 % of throughput end to end, 20 ms about 5 %, 50 ms under 3 %.
TOKEN_FLUSH_S = 0.05
BATCH_TOKENS = 512  # tokens decoded per step at most: every generating sequence's next one, then prompts
# While other sequences are generating, a new prompt goes in by chunks of this many tokens, so a long one
# delays their next token by a fraction of a second per step rather than by seconds (on 2 cores a
# 512-token chunk of the built-in model takes about 1.3 s, 128 tokens about 0.3 s).
PROMPT_CHUNK_WHILE_GENERATING = 128
MIN_SHARED_PREFIX = 32  # tokens: below this, computing a prefix again is cheaper than copying a cache
MIN_P = 0.05  # llama-cpp-python's default, kept so answers match what it gives


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
    """One request on its way through the engine. `done` resolves (on the loop) to the end stats."""

    request: PreparedRequest
    job_id: str
    emit: Callable[[Event], Any]
    done: asyncio.Future
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class Slot:
    """A llama.cpp sequence: what its KV cells hold, and the generation using it, if any."""

    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells are in the cache, in order
    last_used: float = 0.0
    gen: Generation | None = None
    sampler: Any = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to decode
    next_token: int | None = None  # sampled, to be decoded in the next step
    batch_index: int = -1  # where its logits are in this step's batch (-1: none)
    reused: int = 0
    generated: int = 0
    started: float = 0.0
    first_token_at: float | None = None
    decoder: Any = None
    held: str = ""  # decoded text not yet emitted (it may be the start of a stop string)
    parts: list[str] = field(default_factory=list)
    outbox: list[Token] = field(default_factory=list)  # tokens for the loop's next hand-over
    ids_pending: list[int] = field(default_factory=list)  # generated ids whose text is not all out yet
    logprobs_pending: list[dict[str, Any]] = field(default_factory=list)  # one per id whose text is not out yet


class LlamaEngine:
    def __init__(self, config: WorkerConfig, on_state_change: Callable[[EngineState], Any] | None = None) -> None:
        self.config = config
        self.state = EngineState.LOADING  # loading -> ready <-> busy (every slot taken); failed if it does not load
        self.load_error: str | None = None
        self.n_ctx: int = config.ctx_size  # per slot
        self.slots_total = config.parallel
        self.slots_busy = 0
        self._on_state_change = on_state_change
        self._requests: queue.SimpleQueue[Generation | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.loaded: asyncio.Future | None = None  # resolves True when ready, False when loading failed
        self.died: asyncio.Future | None = None
        self._shutdown = threading.Event()
        self._stopped = threading.Event()  # the owner thread has ended
        self._vocab_lock = threading.Lock()  # tokenizing (any thread) never meets the model being freed
        self._model = self._ctx = self._vocab = None
        self._chat_formatter: Any = None
        self._busy_told = 0  # owner thread: the busy-slot count last handed to the loop
        self._deliver_now = False  # owner thread: a first token waits for its hand-over
        self._delivered_at = 0.0

    # -- loop side ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.loaded = self._loop.create_future()
        self.died = self._loop.create_future()  # resolves (to why) if the owner thread fails after loading
        self._thread = threading.Thread(target=self._run, name="llama-owner", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop every generation, close the model, join the thread."""
        self._shutdown.set()
        self._requests.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def prepare(self, request: InferenceRequest) -> PreparedRequest:
        """Tokenize (and chat-format) a request and check it fits a slot. Runs in any thread: the
        vocabulary is read-only once loaded."""
        with self._vocab_lock:
            if self._vocab is None or self.state in (EngineState.LOADING, EngineState.FAILED):
                raise NotReady(f"The model is {self.state}; wait for GET /health to say ready.")
            return self._prepare(request)

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
        if len(tokens) >= self.n_ctx:
            problem = (f"is {len(tokens)} tokens long; a slot of this worker holds {self.n_ctx} "
                       f"(--ctx-size), the answer included")
            raise InvalidRequest(f"The prompt {problem}. Shorten it, or start the worker with a larger --ctx-size.",
                                 field="prompt", problem=problem, code="PROMPT_TOO_LONG")
        gbnf = self._grammar_of(request)
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
                gbnf = json_schema_to_gbnf(json.dumps(schema_for_grammar(request.json_schema)))
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

    def submit(self, request: PreparedRequest, job_id: str, emit: Callable[[Event], Any]) -> Generation:
        if self._stopped.is_set():
            raise NotReady("The worker's engine has stopped; ask again: another worker will answer.")
        generation = Generation(request, job_id, emit, asyncio.get_running_loop().create_future())
        self._requests.put(generation)
        return generation

    def _set_busy(self, busy: int) -> None:
        self.slots_busy = busy
        state = EngineState.BUSY if busy >= self.slots_total else EngineState.READY
        if self.state in (EngineState.READY, EngineState.BUSY) and state != self.state:
            self._set_state(state)

    def _set_state(self, state: EngineState) -> None:
        if state != self.state:
            self.state = state
            if self._on_state_change:
                self._on_state_change(state)

    def _died(self) -> None:
        self._set_state(EngineState.FAILED)
        if self.died is not None and not self.died.done():
            self.died.set_result(self.load_error or "the engine failed")

    def _loaded(self, ok: bool) -> None:
        self._set_state(EngineState.READY if ok else EngineState.FAILED)
        if self.loaded is not None and not self.loaded.done():
            self.loaded.set_result(ok)

    # -- text (any thread) ------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        import llama_cpp

        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:  # the buffer was too small: -n is what it needs
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

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

    # -- thread side ------------------------------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # the loop is closed: the process is exiting, nobody is listening

    def _load(self) -> bool:
        cfg = self.config
        try:
            import llama_cpp

            _quiet_llama_logs()
            llama_cpp.llama_backend_init()
            mparams = llama_cpp.llama_model_default_params()
            mparams.n_gpu_layers = cfg.gpu_layers
            mparams.main_gpu = cfg.gpu_index
            model = llama_cpp.llama_model_load_from_file(str(cfg.model_path).encode(), mparams)
            if not model:
                raise ValueError("llama.cpp could not load it (see the lines above in this log)")
            self._model = model
            self._vocab = llama_cpp.llama_model_get_vocab(model)
            trained = llama_cpp.llama_model_n_ctx_train(model)
            self.n_ctx = min(cfg.ctx_size, trained) if trained > 0 else cfg.ctx_size
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_threads = cparams.n_threads_batch = cfg.threads
            cparams.no_perf = True
            what = self._context_params(llama_cpp, cparams)
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if not ctx:
                raise ValueError(f"llama.cpp could not make {what}")
            self._ctx = ctx
            self._context_ready(llama_cpp)
        except Exception as exc:  # a bad file, too little memory
            self.load_error = f"cannot load model {cfg.model_path}: {exc}"
            self._free()
            self._post(self._loaded, False)
            return False
        self._post(self._loaded, True)
        return True

    def _context_params(self, llama_cpp: Any, cparams: Any) -> str:
        """Set what this engine's context needs (slots for continuous batching); says what it is, for errors."""
        cparams.n_ctx = self.n_ctx * self.config.parallel
        cparams.n_batch = cparams.n_ubatch = BATCH_TOKENS
        cparams.n_seq_max = self.config.parallel
        cparams.kv_unified = False  # each slot its own share of the cache, as llama-server -np N
        return f"a context of {self.n_ctx} tokens x {self.config.parallel} slots"

    def _context_ready(self, llama_cpp: Any) -> None:
        self._chat_formatter = self._make_chat_formatter()

    def _make_chat_formatter(self):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self._model, b"tokenizer.chat_template", buf, len(buf))
        if n <= 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self._model, b"tokenizer.chat_template", buf, len(buf))
        eos_id, bos_id = llama_cpp.llama_vocab_eos(self._vocab), llama_cpp.llama_vocab_bos(self._vocab)
        eos = self.piece(eos_id, special=True).decode(errors="replace") if eos_id != -1 else ""
        bos = self.piece(bos_id, special=True).decode(errors="replace") if bos_id != -1 else ""
        return Jinja2ChatFormatter(template=buf.value.decode(errors="replace"), eos_token=eos, bos_token=bos,
                                   stop_token_ids=[eos_id])

    def _free(self) -> None:
        import llama_cpp

        with self._vocab_lock:
            self._vocab = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
        if self._model:
            llama_cpp.llama_model_free(self._model)
        self._ctx = self._model = None

    def _run(self) -> None:
        if not self._load():
            return
        import llama_cpp

        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        slots = [Slot(seq) for seq in range(self.config.parallel)]
        waiting: deque[Generation] = deque()
        broke: BaseException | None = None
        try:
            while self._step(slots, waiting):
                pass
        except Exception as exc:  # a bug or llama.cpp failing: say so to every request, and die loudly
            log.exception("the llama owner thread failed")
            broke = exc
            self.load_error = f"the engine failed: {type(exc).__name__}: {exc}"
            self._post(self._died)
        finally:
            self._stopped.set()  # from now on submit() refuses
            ending: Any = GenerationError(f"The worker's engine failed ({broke}); ask again: another worker will "
                                          "answer.", status=500) if broke else "cancelled"
            for slot in slots:
                if slot.gen is not None:
                    self._finish(slot, ending)
            while True:
                try:
                    pending = self._requests.get_nowait()
                except queue.Empty:
                    break
                if pending is not None:
                    waiting.append(pending)
            for gen in waiting:
                if broke:
                    self._post(_fail, gen.done, ending)
                else:
                    self._post(_resolve, gen.done, _stats(0, None, 0.0, "cancelled"))
            llama_cpp.llama_batch_free(self._batch)
            self._free()

    def _step(self, slots: list[Slot], waiting: deque[Generation]) -> bool:
        """One step: take new requests, drop cancelled ones, admit, decode one batch, sample. False: stop."""
        idle = not waiting and all(s.gen is None for s in slots)
        try:
            item = self._requests.get(block=idle)
            while True:
                if item is None:
                    return False
                waiting.append(item)
                item = self._requests.get_nowait()
        except queue.Empty:
            pass
        if self._shutdown.is_set():
            return False
        for slot in slots:
            if slot.gen is not None and slot.gen.cancel.is_set():
                self._finish(slot, "cancelled")
        for gen in [g for g in waiting if g.cancel.is_set()]:
            waiting.remove(gen)
            self._post(_resolve, gen.done, _stats(0, None, 0.0, "cancelled"))
        while waiting and any(s.gen is None for s in slots):
            self._admit(waiting.popleft(), slots)
        self._tell_busy(slots)
        if any(s.gen is not None for s in slots):
            self._decode_and_sample([s for s in slots if s.gen is not None])
            self._deliver(slots)
            self._tell_busy(slots)  # a slot that just finished is free now, not after the next request
        return True

    def _tell_busy(self, slots: list[Slot]) -> None:
        busy = sum(1 for s in slots if s.gen is not None)
        if busy != self._busy_told:  # only changes cross to the loop: each hand-over costs a wake-up
            self._busy_told = busy
            self._post(self._set_busy, busy)

    def _admit(self, gen: Generation, slots: list[Slot]) -> None:
        """Into the free slot whose cache shares the longest prefix with the prompt (the least recently
        used among equals, so other cached conversations survive longer). When a busy slot shares a
        clearly longer prefix (a system prompt the running requests have too), its cache is copied into
        the stalest free slot instead of computing that prefix again."""
        import llama_cpp

        tokens = list(gen.request.prompt_tokens)
        free = [s for s in slots if s.gen is None]
        own = {s.seq: _common_prefix(s.cached, tokens) for s in free}
        slot = max(free, key=lambda s: (own[s.seq], -s.last_used))
        common = own[slot.seq]
        busy = [s for s in slots if s.gen is not None]
        source = max(busy, key=lambda s: _common_prefix(s.cached, tokens), default=None)
        if source is not None and _common_prefix(source.cached, tokens) >= common + MIN_SHARED_PREFIX:
            slot = min(free, key=lambda s: s.last_used)
            llama_cpp.llama_memory_seq_cp(self._memory, source.seq, slot.seq, -1, -1)  # the whole sequence
            slot.cached = list(source.cached)
            common = _common_prefix(slot.cached, tokens)
        keep = min(common, len(tokens) - 1)  # the last prompt token gives the logits to sample from
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, keep, -1)
        req = gen.request
        slot.cached, slot.pending, slot.reused = tokens[:keep], tokens[keep:], keep
        slot.gen, slot.next_token, slot.generated = gen, None, 0
        slot.started, slot.first_token_at = time.perf_counter(), None
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.held, slot.parts, slot.outbox, slot.ids_pending, slot.logprobs_pending = "", [], [], [], []
        first = []
        if req.gbnf is not None:  # first: what follows only ever sees tokens the grammar allows
            first.append(llama_cpp.llama_sampler_init_grammar(self._vocab, req.gbnf.encode(), b"root"))
        if req.presence_penalty or req.frequency_penalty:  # llama.cpp's order: penalties before top-k
            first.append(llama_cpp.llama_sampler_init_penalties(
                llama_cpp.llama_vocab_n_tokens(self._vocab), self.n_ctx, 1.0, req.frequency_penalty,
                req.presence_penalty))
        slot.sampler = _sampler_chain(req.temperature, req.top_k, req.top_p, req.seed, first=first)
        for token in (req.continue_ids or ()) if first else ():  # an answer moved here: its grammar state
            llama_cpp.llama_sampler_accept(slot.sampler, token)   # and counts go on from its tokens so far
        self._post(gen.emit, Started(job_id=gen.job_id, model=self.config.model_ref))

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
        for slot in generating:
            slot.batch_index = n
            add(slot.next_token, len(slot.cached), slot.seq, True)
        chunks: list[tuple[Slot, int]] = []
        budget = len(generating) + PROMPT_CHUNK_WHILE_GENERATING if generating else BATCH_TOKENS
        for slot in (s for s in active if s.pending):  # prompts share what is left of the batch
            take = min(len(slot.pending), budget - n)
            if take <= 0:
                break
            start = len(slot.cached)
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
            slot.cached.append(slot.next_token)  # type: ignore[arg-type]
            slot.next_token = None
        for slot, take in chunks:
            slot.cached.extend(slot.pending[:take])
            del slot.pending[:take]
        for slot in generating + [s for s, _ in chunks if not s.pending]:
            if slot.gen is not None and slot.batch_index >= 0:
                self._sample(slot)

    def _sample(self, slot: Slot) -> None:
        import llama_cpp

        gen = slot.gen
        assert gen is not None  # callers pass active slots only
        req = gen.request
        token = llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, slot.batch_index)
        slot.generated += 1
        now = time.perf_counter()
        if slot.first_token_at is None:
            slot.first_token_at = now
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        slot.ids_pending.append(token)
        if req.logprobs is not None:
            slot.logprobs_pending.append(self._logprobs(slot.batch_index, token, req.logprobs))
        slot.held += slot.decoder.decode(self.piece(token))
        stops = req.stop_strings
        hit = min((i for i in (slot.held.find(s) for s in stops) if i >= 0), default=-1)
        if hit >= 0:
            matched = next(s for s in stops if slot.held.find(s) == hit)
            slot.held = slot.held[:hit]
            self._finish(slot, "stop", stop_sequence=matched)
            return
        if slot.generated >= req.max_tokens or len(slot.cached) >= self.n_ctx:
            self._finish(slot, "length")  # at most max_tokens, and never past the slot's context
            return
        keep = _stop_prefix_len(slot.held, stops)
        # The ids go out with text only when that text is all of theirs (nothing held back, no half
        # character): what the queen continues from then matches what the client saw.
        clean = keep == 0 and not slot.decoder.getstate()[0]
        self._queue_text(slot, slot.held[:len(slot.held) - keep], with_ids=clean)
        slot.held = slot.held[len(slot.held) - keep:]
        slot.next_token = token

    def _queue_text(self, slot: Slot, text: str, *, with_ids: bool = False) -> None:
        if text:
            slot.parts.append(text)
            ids = tuple(slot.ids_pending) if with_ids else None
            if with_ids:
                slot.ids_pending = []
            logprobs = None
            if slot.gen is not None and slot.gen.request.logprobs is not None:
                logprobs, slot.logprobs_pending = slot.logprobs_pending, []
            slot.outbox.append(Token(t=text, i=len(slot.parts) - 1, ids=ids, logprobs=logprobs))
            if len(slot.parts) == 1:
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
        ready = [s for s in slots if s.gen is not None and s.outbox]
        if ready:
            self._post(_deliver_all, [(s.gen.emit, s.outbox) for s in ready])  # type: ignore[union-attr]
            for slot in ready:
                slot.outbox = []
            self._delivered_at = now
        self._deliver_now = False

    def _finish(self, slot: Slot, outcome: str | BaseException, stop_sequence: str | None = None) -> None:
        """End the slot's generation: the rest of its text, then its stats (or error); the slot keeps its
        cache for the next request that shares the prefix."""
        import llama_cpp

        gen = slot.gen
        assert gen is not None
        if isinstance(outcome, str) and outcome != "cancelled":
            slot.held += slot.decoder.decode(b"", final=True)
            self._queue_text(slot, slot.held)
        if slot.outbox:  # its last tokens before its end
            self._post(_emit_all, gen.emit, slot.outbox)
        if isinstance(outcome, BaseException):
            self._post(_fail, gen.done, outcome)
        else:
            ttft = None if slot.first_token_at is None else (slot.first_token_at - slot.started) * 1000
            stats = _stats(slot.generated, ttft, time.perf_counter() - slot.started, outcome)
            stats.update(prompt_tokens=len(gen.request.prompt_tokens), prompt_tokens_reused=slot.reused,
                         text="".join(slot.parts))
            if stop_sequence is not None:  # which stop string ended it (Anthropic's API names it)
                stats["stop_sequence"] = stop_sequence
            self._post(_resolve, gen.done, stats)
        if slot.pending:  # cancelled mid-prompt: what was decoded stays cached
            slot.pending = []
        llama_cpp.llama_sampler_free(slot.sampler)
        slot.sampler, slot.gen, slot.next_token, slot.outbox = None, None, None, []
        slot.last_used = time.monotonic()


_log_callback: Any = None  # kept referenced: llama.cpp calls it from C


def _quiet_llama_logs() -> None:
    """llama.cpp narrates every load at length on stderr; keep only its warnings and errors, in our log."""
    global _log_callback
    import llama_cpp

    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level in (2, 3):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            log.warning("llama.cpp: %s", text.decode(errors="replace").rstrip())

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _sampler_chain(temperature: float, top_k: int, top_p: float, seed: int | None, first=()):
    """The sampler chain llama-cpp-python builds for the same parameters (so answers match it), after
    the samplers in `first` (grammar, penalties), which it takes over."""
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in first:
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    if temperature == 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    for sampler in (llama_cpp.llama_sampler_init_top_k(top_k), llama_cpp.llama_sampler_init_top_p(top_p, 1),
                    llama_cpp.llama_sampler_init_min_p(MIN_P, 1), llama_cpp.llama_sampler_init_temp(temperature),
                    # llama.cpp seeds are 32-bit and 0xFFFFFFFF means "random": fold bigger seeds below it
            llama_cpp.llama_sampler_init_dist(random.getrandbits(31) if seed is None else seed % 0xFFFFFFFF)):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """How much of the end of `text` could be the start of a stop string (held back until it is not)."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:length]):
                best = length
                break
    return best


def _stats(tokens_out: int, ttft_ms: float | None, elapsed_s: float, stop_reason: str) -> dict[str, Any]:
    return {
        "tokens_out": tokens_out,
        "ttft_ms": None if ttft_ms is None else round(ttft_ms, 2),
        "tokens_per_s": round(tokens_out / elapsed_s, 2) if elapsed_s > 0 and tokens_out else 0.0,
        "stop_reason": stop_reason,
    }


def _deliver_all(batch) -> None:
    for emit, events in batch:
        _emit_all(emit, events)


def _emit_all(emit, events) -> None:
    for event in events:
        emit(event)


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
