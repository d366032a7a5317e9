"""The engine of a worker started with --embedding: the owner thread (worker/owner_thread.py) of a
llama.cpp context made for embeddings, which turns texts into vectors.

It is the generation engine's sibling (the same loading, state, heartbeat and shutdown story, from their
common base), with its own owner loop. Each input is decoded on its own, in a batch of one sequence: a
vector then depends only on its text, so identical input gives identical vectors whatever else was asked
with it. Vectors are pooled as the GGUF says (mean when it says nothing or asks for per-token output) and
scaled to unit length, as OpenAI's are.
"""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from shared.errors import InvalidRequest
from shared.heartbeat import EngineState
from worker.config import WorkerConfig
from worker.errors import GenerationError
from worker.owner_thread import LlamaOwner, reject, resolve

Vectors = tuple[list[list[float]], int]  # one unit vector per input, and the tokens they took


@dataclass(eq=False)
class EmbedTask:
    """One request's inputs, tokenized; `done` resolves (on the loop) to (vectors, prompt tokens), or None
    when it was cancelled."""

    inputs: list[list[int]]
    done: asyncio.Future[Vectors | None]
    cancel: threading.Event = field(default_factory=threading.Event)


class EmbeddingEngine(LlamaOwner[EmbedTask]):
    def __init__(self, config: WorkerConfig, on_state_change: Callable[[EngineState], Any] | None = None) -> None:
        super().__init__(config, on_state_change)
        self.slots_total = self.slots_open = 1
        self.dimensions = 0  # known once loaded
        self.pooling = "mean"
        self._task: EmbedTask | None = None  # owner thread: the one being embedded
        self._batch: Any = None
        self._memory: Any = None

    # -- loop side ------------------------------------------------------------------------------------

    def tokenize_inputs(self, texts: tuple[str, ...]) -> list[list[int]]:
        """Tokenize every input and check each fits the context. Runs in any thread."""
        with self._vocab_lock:
            self._check_ready()
            inputs = [self.tokenize(text, add_special=True) for text in texts]
        for k, tokens in enumerate(inputs):
            if not tokens:
                raise InvalidRequest(f"Field 'input': item {k} holds no token to embed.", field="input",
                                     problem=f"item {k} holds no token")
            if len(tokens) > self.n_ctx:
                problem = f"item {k} is {len(tokens)} tokens long; this model embeds at most {self.n_ctx}"
                raise InvalidRequest(f"Field 'input': {problem}. Shorten it or split it.", field="input",
                                     problem=problem, code="INPUT_TOO_LONG")
        return inputs

    def submit_embedding(self, inputs: list[list[int]]) -> EmbedTask:
        task = EmbedTask(inputs, asyncio.get_running_loop().create_future())
        self._enqueue(task)
        return task

    # -- thread side ------------------------------------------------------------------------------------

    def _context_params(self, llama_cpp: Any, cparams: Any) -> str:
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = cparams.n_ubatch = self.n_ctx  # a whole input in one decode: pooling needs it
        cparams.n_seq_max = 1
        cparams.embeddings = True
        cparams.pooling_type = self._pooling_type(llama_cpp)
        return f"an embedding context of {self.n_ctx} tokens"

    def _context_ready(self, llama_cpp: Any) -> None:
        self.dimensions = llama_cpp.llama_model_n_embd_out(self._model) or llama_cpp.llama_model_n_embd(self._model)

    def _pooling_type(self, llama_cpp: Any) -> int:
        """The GGUF's `<arch>.pooling_type` when it names one vector per input (mean, cls, last); mean
        otherwise (a generative model says nothing, and per-token or rank output is no embedding)."""
        named = {llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean", llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
                 llama_cpp.LLAMA_POOLING_TYPE_LAST: "last"}
        arch = self._meta(b"general.architecture")
        value = self._meta(f"{arch}.pooling_type".encode()) if arch else None
        pooling = int(value) if value and value.isdigit() and int(value) in named else llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self.pooling = named[pooling]
        return pooling

    def _serve(self) -> None:
        import llama_cpp

        self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        try:
            while not self._shutdown.is_set():
                task = self._task = self._requests.get()
                if task is None:
                    break
                self._post(self._set_busy, 1)
                try:
                    result = self._embed(task)
                finally:
                    self._post(self._set_busy, 0)
                self._post(resolve, task.done, result)
                self._task = None
        finally:
            llama_cpp.llama_batch_free(self._batch)

    def _abandon(self, left: list[EmbedTask], broke: BaseException | None) -> None:
        pending = ([self._task] if self._task is not None else []) + left
        self._task = None
        ending = GenerationError(f"The worker's engine {'failed (' + str(broke) + ')' if broke else 'stopped'}; "
                                 "ask again: another worker will answer.", status=500 if broke else 503)
        for task in pending:
            self._post(reject, task.done, ending)

    def _embed(self, task: EmbedTask) -> Vectors | None:
        """Vectors of every input of a task (None: cancelled)."""
        import llama_cpp

        vectors = []
        for tokens in task.inputs:
            if task.cancel.is_set() or self._shutdown.is_set():
                return None
            if self._memory:
                llama_cpp.llama_memory_clear(self._memory, True)
            batch = self._batch
            for n, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, n, 1
                batch.seq_id[n][0] = 0
                batch.logits[n] = True  # pooling reads every token's output
            batch.n_tokens = len(tokens)
            if (rc := llama_cpp.llama_decode(self._ctx, batch)) != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
            if not ptr:
                raise RuntimeError("llama.cpp gave no pooled embedding")
            vectors.append(_unit(ptr[:self.dimensions]))
        return vectors, sum(len(t) for t in task.inputs)


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else list(vector)
