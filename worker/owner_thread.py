"""`LlamaOwner`: the one dedicated thread that owns a worker's llama.cpp model and context.

llama.cpp is not safe to drive from several threads and its calls block, so everything touching the
context runs in this thread; the event loop only receives results through `call_soon_threadsafe`.
The loading, the state the heartbeat and /health report (loading -> ready <-> busy, or failed), the
request queue and the shutdown story are the same whatever the context is for; the generation engine
(worker/engine.py) and the embedding engine (worker/embedder.py) are its two kinds, each with its own
context parameters and owner loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
from typing import Any, Callable, Generic, TypeVar

from shared.heartbeat import EngineState
from worker.config import WorkerConfig
from worker.errors import NotReady

log = logging.getLogger("rbee.worker.engine")

# --kv-cache-type and --flash-attn: the names of llama.cpp's own constants (in llama_cpp, imported late).
KV_GGML_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}
FLASH_ATTN_TYPES = {"auto": "LLAMA_FLASH_ATTN_TYPE_AUTO", "on": "LLAMA_FLASH_ATTN_TYPE_ENABLED",
                    "off": "LLAMA_FLASH_ATTN_TYPE_DISABLED"}

Work = TypeVar("Work")  # what the loop hands the owner thread: a generation, an embedding task


class LlamaOwner(Generic[Work]):
    """The model, its context and the thread that drives them. A kind sets its context up
    (`_context_params`, `_context_ready`), serves its queue (`_serve`) and answers what is left when the
    thread ends (`_abandon`)."""

    def __init__(self, config: WorkerConfig, on_state_change: Callable[[EngineState], Any] | None = None) -> None:
        self.config = config
        self.state = EngineState.LOADING  # loading -> ready <-> busy (every slot taken); failed if it does not load
        self.load_error: str | None = None
        self.n_ctx: int = config.ctx_size  # per slot
        self.slots_total = config.slots_at_most  # what the queen sees: the most this worker may run at once
        self.slots_open = config.slots_at_start  # those its context has now (a growing worker's grow)
        self.slots_busy = 0
        self._on_state_change = on_state_change
        self._requests: queue.SimpleQueue[Work | None] = queue.SimpleQueue()  # None: stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.loaded: asyncio.Future[bool] | None = None  # resolves True when ready, False when loading failed
        self.died: asyncio.Future[str] | None = None
        self._shutdown = threading.Event()
        self._stopped = threading.Event()  # the owner thread has ended
        self._vocab_lock = threading.Lock()  # tokenizing (any thread) never meets the model being freed
        self.layers = 0  # the model's repeating layers, once loaded
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._cparams: Any = None  # what the context was made with

    @property
    def gpu_layers(self) -> int:
        """Layers on the GPU as llama.cpp counts them: the model's layers + 1 (the output layer) is all."""
        wanted = self.config.n_gpu_layers
        if not self.layers:  # not loaded yet
            return wanted
        return self.layers + 1 if wanted < 0 else min(wanted, self.layers + 1)

    # -- loop side ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.loaded = self._loop.create_future()
        self.died = self._loop.create_future()  # resolves (to why) if the owner thread fails after loading
        self._thread = threading.Thread(target=self._run, name="llama-owner", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop every request, close the model, join the thread."""
        self._shutdown.set()
        self._requests.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _enqueue(self, work: Work) -> None:
        if self._stopped.is_set():
            raise NotReady("The worker's engine has stopped; ask again: another worker will answer.")
        self._requests.put(work)

    def _check_ready(self) -> None:
        """Callers hold `_vocab_lock`."""
        if self._vocab is None or self.state in (EngineState.LOADING, EngineState.FAILED):
            raise NotReady(f"The model is {self.state}; wait for GET /health to say ready.")

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

    def _meta(self, key: bytes, size: int = 256) -> str | None:
        """A GGUF metadata value as text (None when the model does not have it)."""
        import llama_cpp

        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self._model, key, buf, len(buf))
        if n <= 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self._model, key, buf, len(buf))
        return buf.value.decode(errors="replace")

    # -- thread side ------------------------------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:  # never started: nobody is listening
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: the process is exiting, nobody is listening

    def _context_params(self, llama_cpp: Any, cparams: Any) -> str:
        """Set what this kind's context needs; says what it is, for errors."""
        raise NotImplementedError

    def _context_ready(self, llama_cpp: Any) -> None:
        """Read what this kind needs from the loaded model and context."""

    def _serve(self) -> None:
        """The owner loop, once loaded: returns when told to stop; raises when it cannot go on."""
        raise NotImplementedError

    def _abandon(self, left: list[Work], broke: BaseException | None) -> None:
        """The loop has ended (`broke`: why, if it failed): answer every request it still holds and `left`,
        those still queued."""
        raise NotImplementedError

    def _run(self) -> None:
        if not self._load():
            return
        broke: BaseException | None = None
        try:
            self._serve()
        except Exception as exc:  # a bug or llama.cpp failing: say so to every request, and die loudly
            log.exception("the llama owner thread failed")
            broke = exc
            self.load_error = f"the engine failed: {type(exc).__name__}: {exc}"
            self._post(self._died)
        finally:
            self._stopped.set()  # from now on submitting refuses
            left: list[Work] = []
            while True:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    left.append(item)
            self._abandon(left, broke)
            self._free()

    def _load(self) -> bool:
        cfg = self.config
        try:
            import llama_cpp

            quiet_llama_logs()
            llama_cpp.llama_backend_init()
            mparams = llama_cpp.llama_model_default_params()
            mparams.n_gpu_layers = cfg.n_gpu_layers
            mparams.main_gpu = cfg.gpu_index
            # One GPU: everything on main_gpu (llama.cpp's default, LAYER, would spread over every visible one).
            mparams.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
            split = _tensor_split(llama_cpp, cfg.tensor_split)  # kept referenced until the model is loaded
            if split is not None:
                mparams.split_mode = llama_cpp.LLAMA_SPLIT_MODE_LAYER
                mparams.tensor_split = split
            model = llama_cpp.llama_model_load_from_file(str(cfg.model_path).encode(), mparams)
            if not model:
                raise ValueError("llama.cpp could not load it (see the lines above in this log)")
            self._model = model
            self._vocab = llama_cpp.llama_model_get_vocab(model)
            self.layers = llama_cpp.llama_model_n_layer(model)
            trained = llama_cpp.llama_model_n_ctx_train(model)
            self.n_ctx = min(cfg.ctx_size, trained) if trained > 0 else cfg.ctx_size
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_threads = cparams.n_threads_batch = cfg.threads
            cparams.no_perf = True
            cparams.type_k = cparams.type_v = getattr(llama_cpp, KV_GGML_TYPES[cfg.kv_cache_type])
            cparams.flash_attn_type = getattr(llama_cpp, FLASH_ATTN_TYPES[cfg.flash_attn])
            what = self._context_params(llama_cpp, cparams)
            self._cparams = cparams  # a kind may make a larger context later (the generation engine's slots)
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if not ctx:
                hint = ""
                if cfg.kv_cache_type != "f16" and cfg.flash_attn == "auto":
                    hint = (f" (a {cfg.kv_cache_type} KV cache needs flash attention, which this device may lack: "
                            "try --flash-attn on, or --kv-cache-type f16)")
                raise ValueError(f"llama.cpp could not make {what}{hint}")
            self._ctx = ctx
            self._context_ready(llama_cpp)
        except Exception as exc:  # a bad file, too little memory
            self.load_error = f"cannot load model {cfg.model_path}: {exc}"
            self._free()
            self._post(self._loaded, False)
            return False
        self._post(self._loaded, True)
        return True

    def _free(self) -> None:
        import llama_cpp

        with self._vocab_lock:
            self._vocab = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
        if self._model:
            llama_cpp.llama_model_free(self._model)
        self._ctx = self._model = None


def _tensor_split(llama_cpp: Any, shares: tuple[float, ...]) -> Any:
    """--tensor-split as llama.cpp reads it: a float per device, llama_max_devices() of them (None: one GPU)."""
    if len(shares) < 2:
        return None
    array = (ctypes.c_float * llama_cpp.llama_max_devices())(*shares)
    return ctypes.cast(array, ctypes.POINTER(ctypes.c_float))


def resolve(future: asyncio.Future[Any], value: Any) -> None:
    """On the loop: give a request its answer (unless it already has one)."""
    if not future.done():
        future.set_result(value)


def reject(future: asyncio.Future[Any], error: BaseException) -> None:
    """On the loop: give a request its error (unless it already has an answer)."""
    if not future.done():
        future.set_exception(error)


_log_callback: Any = None  # kept referenced: llama.cpp calls it from C


def quiet_llama_logs() -> None:
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
