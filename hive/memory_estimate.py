"""How much memory one rbee worker needs for a GGUF model, from the file's own metadata.

The queen places workers by fit: before starting one, it compares this estimate with a hive's free memory.
The estimate is the resident memory (RSS) of an `llm-worker-rbee` process on the CPU once it has decoded
a full batch, as four parts:

    weights   the file's tensor data (file size − header). llama.cpp maps the file and reads every page at
              load, so all of it is resident (file-backed, but evicting it would thrash).
    kv_cache  n_layer × (ctx_size × slots) × (n_embd_k_gqa + n_embd_v_gqa) × bytes per element (f16: 2),
              with n_embd_k_gqa = key_length × head_count_kv (key_length defaults to embedding_length /
              head_count). The worker gives llama.cpp n_ctx = ctx_size × slots with one KV stream per slot
              (kv_unified = False), and llama.cpp clears the whole cache at start, so all of it is resident.
    compute   what decoding a batch of n_ubatch tokens touches of llama.cpp's compute buffer: per token,
              the live f32 activations of a layer (3 × n_embd + 3 × n_ff floats) and their copy converted
              for the matrix products (≤ 2 bytes a value), the attention mask and scratch per token and KV
              cell of a slot (6 bytes), and the logits of one row per slot (the worker asks for no more).
    overhead  the process itself: Python, aiohttp, the worker and llama.cpp's libraries (a constant), plus
              the tokenizer's tables, which grow with the vocabulary.

The constants were measured on the built-in model (see `RUNTIME_BYTES`, `VOCAB_BYTES_PER_TOKEN`) and checked
against a real worker at two context sizes (tests/integration/test_memory_estimate.py: within 20 %).

`compute_reserved` is what llama.cpp *reserves* for its worst-case graph (every token of a batch giving
logits): mostly untouched on the CPU, so it is not in `total`; on a GPU it is all allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hive.gguf import GGUFArray, GGUFError, GGUFFile, read_gguf

MIB = 1 << 20

# What the worker asks llama.cpp for (worker/engine.py: n_batch = n_ubatch = BATCH_TOKENS); the hive may not
# import the worker, so the number is repeated here and a test checks both agree.
WORKER_UBATCH = 512

# Bytes per cached element for llama.cpp's KV cache types (block size / values per block for quantized
# ones). llama-cpp-python's default, and the worker's, is f16.
KV_CACHE_TYPES: dict[str, float] = {
    "f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32, "q4_1": 20 / 32,
    "q4_0": 18 / 32, "iq4_nl": 18 / 32,
}
F32 = 4
# Live f32 activations per token while a layer runs: the residual stream, its norm and the attention or
# FFN output (n_embd each), the FFN's gate, up and their product (n_ff each).
ACTIVATION_EMBD, ACTIVATION_FF = 3, 3
# Activations are converted to the weights' dot-product type before each matrix product (q8: 1.06 bytes
# a value, f16: 2), in a work buffer as wide as the widest input.
MATMUL_WORK_BYTES_PER_VALUE = 2
# Attention mask (f16) and flash-attention scratch per (batch token, KV cell of its slot): llama.cpp's
# reserved compute buffer grows by 4.26 MiB when 512 tokens see 1,536 more cells: 5.7 bytes.
ATTENTION_BYTES_PER_CELL = 6
# The tokenizer's tables (tokens, scores, the token → id map, BPE merges, the piece cache): loading the
# built-in model's 49,152-token vocabulary (and its 48,900 merges) adds 17.0 MiB of anonymous memory.
VOCAB_BYTES_PER_TOKEN = 360
# The rest of a running worker, model aside: Python with aiohttp, the worker's modules, llama-cpp-python
# and llama.cpp's shared libraries (58.5 MiB measured for the imports alone), threads and their arenas,
# the GGUF header pages, the server. Measured: a worker on the built-in model, less weights, KV cache,
# vocabulary and compute, at --ctx-size 512 and 2048 (--parallel 4) after a full-batch prompt.
RUNTIME_BYTES = 64 * MIB


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one worker needs for a model at a context size and slot count (`total` = the four parts)."""

    weights: int
    kv_cache: int
    compute: int
    overhead: int
    model: str = ""  # the GGUF's file name
    ctx_size: int = 0  # per slot, after the cap at the model's trained context
    slots: int = 1
    cache_type: str = "f16"
    compute_reserved: int = 0  # llama.cpp's worst-case reservation: real memory on a GPU, mostly untouched on a CPU
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", self.weights + self.kv_cache + self.compute + self.overhead)

    def to_dict(self) -> dict[str, Any]:
        """MB here are MiB (2^20 bytes), as nvidia-smi and /proc count them."""
        mb = lambda n: round(n / MIB, 1)  # noqa: E731
        return {
            "model": self.model, "ctx_size": self.ctx_size, "slots": self.slots, "cache_type": self.cache_type,
            "weights_mb": mb(self.weights), "kv_cache_mb": mb(self.kv_cache), "compute_mb": mb(self.compute),
            "overhead_mb": mb(self.overhead), "total_mb": mb(self.total),
            "compute_reserved_mb": mb(self.compute_reserved),
        }

    def describe(self) -> str:
        """One line for people: '… needs 232 MB: weights 92 MB, KV cache 45 MB (512 tokens × 4 slots, f16), …'."""
        mb = lambda n: f"{n / MIB:,.0f} MB"  # noqa: E731
        who = f"{self.model} " if self.model else ""
        return (f"{who}needs {mb(self.total)}: weights {mb(self.weights)}, KV cache {mb(self.kv_cache)} "
                f"({self.ctx_size} tokens × {self.slots} slot{'s' if self.slots != 1 else ''}, {self.cache_type}), "
                f"compute {mb(self.compute)}, runtime {mb(self.overhead)}")


def estimate_worker_memory(path: str | os.PathLike[str] | GGUFFile, *, ctx_size: int, slots: int,
                           n_ubatch: int = WORKER_UBATCH, cache_type: str = "f16") -> MemoryEstimate:
    """The memory a worker started with `--ctx-size ctx_size --parallel slots` needs for this GGUF.

    `path` may be an already read `GGUFFile`. Raises `GGUFError` when the file is unreadable or lacks the
    shape of its model, ValueError for impossible arguments.
    """
    if ctx_size < 1 or slots < 1 or n_ubatch < 1:
        raise ValueError(f"ctx_size, slots and n_ubatch must be positive, not {ctx_size}, {slots}, {n_ubatch}")
    if cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"cache_type must be one of {', '.join(KV_CACHE_TYPES)}, not {cache_type!r}")
    gguf = path if isinstance(path, GGUFFile) else read_gguf(Path(path))
    shape = ModelShape.of(gguf)
    n_ctx_seq = min(ctx_size, shape.context_length) if shape.context_length > 0 else ctx_size  # as the worker caps it
    n_ctx = n_ctx_seq * slots
    n_ubatch = min(n_ubatch, n_ctx)  # llama.cpp: n_batch ≤ n_ctx for causal models
    kv = round(n_ctx * shape.kv_values_per_token * KV_CACHE_TYPES[cache_type])
    per_token = (ACTIVATION_EMBD * shape.n_embd + ACTIVATION_FF * shape.n_ff) * F32 \
        + max(shape.n_embd, shape.n_ff) * MATMUL_WORK_BYTES_PER_VALUE
    attention = n_ubatch * n_ctx_seq * ATTENTION_BYTES_PER_CELL
    logits = 2 * slots * shape.n_vocab * F32  # the output buffer, and the logits tensor it is copied from
    compute = n_ubatch * per_token + attention + logits
    reserved = n_ubatch * max(shape.n_embd + shape.n_vocab, per_token // F32) * F32 + attention
    overhead = RUNTIME_BYTES + shape.n_vocab * VOCAB_BYTES_PER_TOKEN
    return MemoryEstimate(weights=gguf.tensor_data_bytes, kv_cache=kv, compute=compute, overhead=overhead,
                          model=shape.name, ctx_size=n_ctx_seq, slots=slots, cache_type=cache_type,
                          compute_reserved=reserved)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a transformer's GGUF metadata that size its memory."""

    name: str
    n_layer: int
    n_embd: int
    n_ff: int  # the widest layer's
    n_vocab: int
    context_length: int  # trained context; 0 when unknown
    kv_values_per_token: int  # Σ over layers of (key_length + value_length) × head_count_kv

    @classmethod
    def of(cls, gguf: GGUFFile) -> ModelShape:
        arch = gguf.architecture
        where = f"{gguf.path} ({arch})"

        def number(key: str, default: int | None = None) -> int | list[int]:
            value = gguf.arch_value(key, default)
            if value is None:
                raise GGUFError(f"{where} has no {arch}.{key}: cannot tell how much memory it needs.")
            if isinstance(value, list) and value and all(_is_int(v) for v in value):
                return value
            if not _is_int(value) or value < 0:
                raise GGUFError(f"{where}: {arch}.{key} is {value!r}, not a count.")
            return value

        n_layer = number("block_count")
        n_embd = number("embedding_length")
        if not isinstance(n_layer, int) or not isinstance(n_embd, int) or n_layer == 0 or n_embd == 0:
            raise GGUFError(f"{where}: block_count and embedding_length must be positive numbers, not "
                            f"{n_layer!r} and {n_embd!r}.")
        heads = _per_layer(number("attention.head_count"), n_layer, f"{where}: {arch}.attention.head_count")
        heads_kv = _per_layer(number("attention.head_count_kv", default=0) or heads, n_layer,
                              f"{where}: {arch}.attention.head_count_kv")
        n_head = max(heads)
        if n_head == 0:
            raise GGUFError(f"{where}: {arch}.attention.head_count is 0.")
        key_length = number("attention.key_length", default=n_embd // n_head)
        value_length = number("attention.value_length", default=n_embd // n_head)
        if not isinstance(key_length, int) or not isinstance(value_length, int):
            raise GGUFError(f"{where}: the attention key and value lengths must be numbers.")
        n_ff = number("feed_forward_length", default=4 * n_embd)
        n_ff = max(n_ff) if isinstance(n_ff, list) else n_ff
        return cls(
            name=gguf.path.name,
            n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_vocab=_vocab_size(gguf, where),
            context_length=_int_or(gguf.arch_value("context_length"), 0),
            kv_values_per_token=sum((key_length + value_length) * h for h in heads_kv),
        )


def _per_layer(value: int | list[int], n_layer: int, what: str) -> list[int]:
    """One value per layer: llama.cpp allows a list (models whose layers differ) or one for all."""
    if isinstance(value, int):
        return [value] * n_layer
    if len(value) != n_layer:
        raise GGUFError(f"{what} lists {len(value)} layers, but the model has {n_layer}.")
    return list(value)


def _vocab_size(gguf: GGUFFile, where: str) -> int:
    """`<arch>.vocab_size`, else the tokenizer's token count, else the embedding matrix's width."""
    for value in (gguf.arch_value("vocab_size"), gguf.metadata.get("tokenizer.ggml.tokens")):
        if isinstance(value, int) and _is_int(value) and value > 0:
            return value
        if isinstance(value, (list, GGUFArray)) and len(value) > 0:
            return len(value)
    for tensor in gguf.tensors:
        if tensor.name == "token_embd.weight" and len(tensor.shape) == 2:
            return tensor.shape[1]
    raise GGUFError(f"{where} says nothing of its vocabulary size.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or(value: Any, default: int) -> int:
    return value if _is_int(value) and value >= 0 else default
