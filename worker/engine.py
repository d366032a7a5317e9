"""The one thread that owns the Llama: loads it, runs generations one at a time, and closes it.

llama.cpp is not safe to drive from several threads, and its calls block; so everything touching the
model runs here, and the event loop only ever receives events through `call_soon_threadsafe`.
A generation is cancelled through a threading.Event that the stopping criteria reads on every token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from shared.events import Event, Started, Token
from shared.heartbeat import EngineState
from shared.inference import InferenceRequest
from worker.config import WorkerConfig
from worker.errors import GenerationError

log = logging.getLogger("rbee.worker.engine")

# Tokens reach the event loop in small batches: the first at once (TTFT), then at most one hand-over
# per TOKEN_FLUSH_S. Each hand-over wakes this loop, the queen and the client, and every wake-up steals
# CPU from llama.cpp's threads when they use every core: measured on 2 cores, per-token hand-over cost
# 8-12 % of throughput end to end, 20 ms about 5 %, 50 ms under 3 %. 20 updates a second still reads
# as a smooth stream.
TOKEN_FLUSH_S = 0.05


@dataclass(eq=False)
class Generation:
    """One request on its way through the engine. `done` resolves (on the loop) to the end stats."""

    request: InferenceRequest
    job_id: str
    emit: Callable[[Event], Any]
    done: asyncio.Future
    cancel: threading.Event = field(default_factory=threading.Event)


class LlamaEngine:
    def __init__(self, config: WorkerConfig, on_state_change: Callable[[EngineState], Any] | None = None) -> None:
        self.config = config
        self.state = EngineState.LOADING  # loading -> ready <-> busy; failed if the model does not load
        self.load_error: str | None = None
        self.n_ctx: int = config.ctx_size
        self._on_state_change = on_state_change
        self._requests: queue.SimpleQueue[Generation | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.loaded: asyncio.Future | None = None  # resolves True when ready, False when loading failed
        self._shutdown = threading.Event()

    # -- loop side ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.loaded = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="llama-owner", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the current generation, drain the queue, close the model, join the thread."""
        self._shutdown.set()
        self._requests.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def submit(self, request: InferenceRequest, job_id: str, emit: Callable[[Event], Any]) -> Generation:
        generation = Generation(request, job_id, emit, asyncio.get_running_loop().create_future())
        self._requests.put(generation)
        return generation

    def _set_state(self, state: EngineState) -> None:
        if state != self.state:
            self.state = state
            if self._on_state_change:
                self._on_state_change(state)

    # -- thread side ------------------------------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # the loop is closed: the process is exiting, nobody is listening

    def _run(self) -> None:
        llm = self._load()
        if llm is None:
            return
        try:
            while True:
                generation = self._requests.get()
                if generation is None:
                    break
                if generation.cancel.is_set() or self._shutdown.is_set():
                    self._post(_resolve, generation.done, _stats(0, None, 0.0, "cancelled"))
                    continue
                self._post(self._set_state, EngineState.BUSY)
                outcome = self._generate(llm, generation)
                self._post(self._finished, generation.done, outcome)
        finally:
            # Cancel whatever is still queued, then free the model in the thread that owns it.
            while True:
                try:
                    pending = self._requests.get_nowait()
                except queue.Empty:
                    break
                if pending is not None:
                    self._post(_resolve, pending.done, _stats(0, None, 0.0, "cancelled"))
            llm.close()

    def _load(self):
        cfg = self.config
        try:
            from llama_cpp import Llama  # heavy: imported only in the worker, in this thread

            llm = Llama(
                model_path=str(cfg.model_path),
                n_ctx=cfg.ctx_size,
                n_threads=cfg.threads,
                n_threads_batch=cfg.threads,
                n_gpu_layers=cfg.gpu_layers,
                main_gpu=cfg.gpu_index,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports a bad file as ValueError/RuntimeError
            self.load_error = f"cannot load model {cfg.model_path}: {exc}"
            self._post(self._loaded, False)
            return None
        self.n_ctx = llm.n_ctx()
        self._post(self._loaded, True)
        return llm

    def _finished(self, done: asyncio.Future, outcome: dict[str, Any] | BaseException) -> None:
        self._set_state(EngineState.READY)  # before the result, so whoever sees the end also sees a free worker
        if isinstance(outcome, BaseException):
            _fail(done, outcome)
        else:
            _resolve(done, outcome)

    def _loaded(self, ok: bool) -> None:
        self._set_state(EngineState.READY if ok else EngineState.FAILED)
        if self.loaded is not None and not self.loaded.done():
            self.loaded.set_result(ok)

    @staticmethod
    def _chat_prompt(llm, messages) -> tuple[list[int], list[str]]:
        formatted = _chat_formatter(llm)(messages=[{"role": r, "content": c} for r, c in messages])
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        tokens = llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
        return tokens, stop

    def _generate(self, llm, generation: Generation) -> dict[str, Any] | BaseException:
        """Run one generation, posting its events; return its stats or the error it ended with."""
        from llama_cpp import StoppingCriteriaList

        req = generation.request
        cancel = generation.cancel
        shutdown = self._shutdown
        # Tokens generated and kept, counted from what the stopping criteria is shown: before each sampled
        # token is used, it sees the sequence so far (prompt and earlier tokens); a token it stops on is not
        # used. The end-of-text token counts as generated, as in llama-server.
        n_prompt = 0
        generated = 0

        def stop_when_cancelled(input_ids, logits) -> bool:
            nonlocal generated
            stop = cancel.is_set() or shutdown.is_set()
            generated = len(input_ids) - n_prompt + (0 if stop else 1)
            return stop

        self._post(generation.emit, Started(job_id=generation.job_id, model=self.config.model_ref))
        start = time.perf_counter()
        first_token_at: float | None = None
        finish_reason = None
        index = 0
        parts: list[str] = []
        stream = None
        try:
            if req.messages is not None:
                prompt_tokens, template_stop = self._chat_prompt(llm, req.messages)
            else:
                # what create_completion does with a string, done here so the prompt's size is known
                prompt_tokens, template_stop = llm.tokenize(req.prompt.encode("utf-8"), special=True), []
            n_prompt = len(prompt_tokens)
            stream = llm.create_completion(
                prompt_tokens,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k,
                seed=req.seed,
                stop=list(req.stop or ()) + template_stop,
                stream=True,
                stopping_criteria=StoppingCriteriaList([stop_when_cancelled]),
            )
            pending: list[Token] = []
            last_flush = 0.0
            for chunk in stream:
                choice = chunk["choices"][0]
                text = choice["text"]
                if text:
                    now = time.perf_counter()
                    if first_token_at is None:
                        first_token_at = now
                    parts.append(text)
                    pending.append(Token(t=text, i=index))
                    index += 1
                    if now - last_flush >= TOKEN_FLUSH_S:
                        self._post(_emit_all, generation.emit, pending)
                        pending = []
                        last_flush = now
                finish_reason = choice.get("finish_reason") or finish_reason
            if pending:
                self._post(_emit_all, generation.emit, pending)
        except GenerationError as exc:
            return exc
        except ValueError as exc:  # llama-cpp-python's way of saying the prompt does not fit
            message = str(exc)
            if "exceed context window" in message:
                error = GenerationError(
                    f"The prompt is longer than the worker's context ({self.n_ctx} tokens): {message}. "
                    "Shorten the prompt or start the worker with a larger --ctx-size.",
                    code="PROMPT_TOO_LONG",
                )
            else:
                error = GenerationError(f"Generation failed: {message}")
            return error
        except Exception as exc:
            log.exception("generation %s failed", generation.job_id)
            return GenerationError(f"Generation failed: {type(exc).__name__}: {exc}", status=500)
        finally:
            if stream is not None:
                stream.close()  # in the owner thread, as llama-cpp-python requires
        elapsed = time.perf_counter() - start
        reason = "cancelled" if cancel.is_set() or shutdown.is_set() else (finish_reason or "stop")
        ttft = None if first_token_at is None else (first_token_at - start) * 1000
        stats = _stats(generated, ttft, elapsed, reason)
        stats["prompt_tokens"] = len(prompt_tokens)
        stats["text"] = "".join(parts)
        return stats


_chat_formatters: dict[int, Any] = {}


def _chat_formatter(llm):
    """The model's own chat template (GGUF metadata), as llama-cpp-python builds it."""
    if id(llm) not in _chat_formatters:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise GenerationError("This model has no chat template; send a plain 'prompt' instead of 'messages'.",
                                  code="NO_CHAT_TEMPLATE")
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos = llm.detokenize([eos_id], special=True).decode(errors="replace") if eos_id != -1 else ""
        bos = llm.detokenize([bos_id], special=True).decode(errors="replace") if bos_id != -1 else ""
        _chat_formatters[id(llm)] = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                                        stop_token_ids=[eos_id])
    return _chat_formatters[id(llm)]


def _stats(tokens_out: int, ttft_ms: float | None, elapsed_s: float, stop_reason: str) -> dict[str, Any]:
    return {
        "tokens_out": tokens_out,
        "ttft_ms": None if ttft_ms is None else round(ttft_ms, 2),
        "tokens_per_s": round(tokens_out / elapsed_s, 2) if elapsed_s > 0 and tokens_out else 0.0,
        "stop_reason": stop_reason,
    }


def _emit_all(emit, events) -> None:
    for event in events:
        emit(event)


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
