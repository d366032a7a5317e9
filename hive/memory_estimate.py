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

On devices (`estimate_devices`, then `DeviceEstimate.place(gpu_layers, split)`), as llama.cpp's
`load_tensors` (src/llama-model.cpp) places things. llama.cpp counts n_layer + 1 offloadable layers, the
output layer being the last: with n_gpu_layers = g the layers il >= n_layer + 1 - g go to the GPUs, so the
FIRST one offloaded is the output layer (output.weight, output_norm; when the output is tied to the token
embeddings, token_embd is loaded a second time on that GPU), then the last g - 1 repeating layers. The
input embedding token_embd always stays in host memory. Over several GPUs, layer il goes to the first GPU
whose cumulative share of the split exceeds (il - first)/g, so the output layer lands on the last GPU. KV
for a layer lives where the layer is (offload_kqv, llama-kv-cache.cpp). A GPU's compute buffer is all it
reserves for llama.cpp's worst-case graph (n_ubatch tokens, n_ubatch outputs: llama-context.cpp
sched_reserve), and each GPU the worker uses carries CUDA's own overhead. Host RAM holds the rest.
"""

from __future__ import annotations

import os
import re
import struct
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hive.gguf import GGUFArray, GGUFError, GGUFFile, read_gguf
from shared.kv_cache import KV_ELEMENT_BYTES

MIB = 1 << 20

# What the worker asks llama.cpp for (worker/engine.py: n_batch = n_ubatch = BATCH_TOKENS); the hive may not
# import the worker, so the number is repeated here and a test checks both agree.
WORKER_UBATCH = 512

KV_CACHE_TYPES = KV_ELEMENT_BYTES  # bytes per cached element (shared/kv_cache.py); the worker's default is f16
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
# flash_attn: llama.cpp's "auto" turns it on wherever the backend runs the op (the CPU always; CUDA for
# every common head size: ggml-cuda/fattn.cu), so auto is counted as on. Off, attention materialises the
# f32 scores of every head for every (batch token, KV cell) pair: n_head x 4 bytes a cell.
FLASH_ATTN_MODES = ("auto", "on", "off")
QUANTIZED_KV = {"q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"}
# What a process pays on each GPU it uses before any tensor: the CUDA context (kernels of ggml-cuda,
# loaded lazily), cuBLAS's handle and workspace, ggml-cuda's memory pool for temporaries. The figure is
# Ollama's (discover/gpu.go: cudaMinimumMemory = 457 MiB), which it reserves per GPU for the same;
# bench/gpu_check.sh compares the whole prediction with nvidia-smi's.
CUDA_OVERHEAD_BYTES = 457 * MIB
# What the CUDA runtime adds to the host process once it offloads: libcudart, cuBLAS and the driver mapped
# and partly touched, pinned staging buffers. A typical CUDA 12 process's growth, not measured here (no
# GPU on this machine): to check on one.
CUDA_HOST_BYTES = 256 * MIB


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
                           n_ubatch: int = WORKER_UBATCH, cache_type: str = "f16",
                           flash_attn: str = "auto") -> MemoryEstimate:
    """The memory a worker started with `--ctx-size ctx_size --parallel slots` needs for this GGUF on the CPU.

    `path` may be an already read `GGUFFile`. Raises `GGUFError` when the file is unreadable or lacks the
    shape of its model, ValueError for impossible arguments.
    """
    return estimate_devices(path, ctx_size=ctx_size, slots=slots, n_ubatch=n_ubatch, cache_type=cache_type,
                            flash_attn=flash_attn).cpu


def estimate_devices(path: str | os.PathLike[str] | GGUFFile, *, ctx_size: int, slots: int,
                     n_ubatch: int = WORKER_UBATCH, cache_type: str = "f16",
                     flash_attn: str = "auto") -> DeviceEstimate:
    """The parts of a worker's memory that llama.cpp places per layer, to place them on devices (`place`)."""
    if ctx_size < 1 or slots < 1 or n_ubatch < 1:
        raise ValueError(f"ctx_size, slots and n_ubatch must be positive, not {ctx_size}, {slots}, {n_ubatch}")
    if cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"cache_type must be one of {', '.join(KV_CACHE_TYPES)}, not {cache_type!r}")
    if flash_attn not in FLASH_ATTN_MODES:
        raise ValueError(f"flash_attn must be one of {', '.join(FLASH_ATTN_MODES)}, not {flash_attn!r}")
    if flash_attn == "off" and cache_type in QUANTIZED_KV:  # llama.cpp refuses the context (llama-context.cpp)
        raise ValueError(f"A {cache_type} KV cache needs flash attention in llama.cpp: use --flash-attn auto or "
                         "on, or the f16 KV cache.")
    gguf = path if isinstance(path, GGUFFile) else read_gguf(Path(path))
    shape = ModelShape.of(gguf)
    layout = WeightLayout.of(gguf, shape.n_layer)
    n_ctx_seq = min(ctx_size, shape.context_length) if shape.context_length > 0 else ctx_size  # as the worker caps it
    n_ctx = n_ctx_seq * slots
    n_ubatch = min(n_ubatch, n_ctx)  # llama.cpp: n_batch ≤ n_ctx for causal models
    kv_bytes = KV_CACHE_TYPES[cache_type]
    kv = round(n_ctx * shape.kv_values_per_token * kv_bytes)
    kv_layers = tuple(round(n_ctx * values * kv_bytes) for values in shape.kv_values_per_layer)
    per_token = (ACTIVATION_EMBD * shape.n_embd + ACTIVATION_FF * shape.n_ff) * F32 \
        + max(shape.n_embd, shape.n_ff) * MATMUL_WORK_BYTES_PER_VALUE
    attention = n_ubatch * n_ctx_seq * ATTENTION_BYTES_PER_CELL
    # without flash attention: the scores of every head (f32; the softmax runs in place on them)
    scores = 0 if flash_attn != "off" else n_ubatch * n_ctx_seq * shape.n_head * F32
    logits = 2 * slots * shape.n_vocab * F32  # the output buffer, and the logits tensor it is copied from
    compute = n_ubatch * per_token + attention + scores + logits
    # the worst-case graph's peaks: a layer's FFN, a layer's attention scores (with the residual stream,
    # Q and the output alive), the output layer's logits for every token of the batch
    layer_peak = max(n_ubatch * per_token, scores + 3 * n_ubatch * shape.n_embd * F32 if scores else 0) + attention
    output_peak = n_ubatch * (shape.n_embd + shape.n_vocab) * F32 + attention
    overhead = RUNTIME_BYTES + shape.n_vocab * VOCAB_BYTES_PER_TOKEN
    cpu = MemoryEstimate(weights=gguf.tensor_data_bytes, kv_cache=kv, compute=compute, overhead=overhead,
                         model=shape.name, ctx_size=n_ctx_seq, slots=slots, cache_type=cache_type,
                         compute_reserved=max(layer_peak, output_peak))
    # host side of an offloading worker: the input embeddings of a batch (and their copy to the GPU) and
    # the attention mask (f16) it uploads: llama.cpp's "CUDA_Host compute buffer"
    input_compute = n_ubatch * (2 * shape.n_embd * F32 + n_ctx_seq * 2)
    host_layer_compute = n_ubatch * per_token + attention + scores  # touched, as on the CPU
    return DeviceEstimate(cpu=cpu, weights=layout, kv_layers=kv_layers, gpu_layer_compute=layer_peak,
                          gpu_output_compute=output_peak, host_input_compute=input_compute,
                          host_layer_compute=host_layer_compute, host_runtime=overhead + logits,
                          flash_attn=flash_attn != "off")


def _f32(value: float) -> float:
    """`value` rounded to a C float, as llama.cpp computes its split points."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


@dataclass(frozen=True)
class WeightLayout:
    """A GGUF's weights in llama.cpp's groups, in bytes (from the tensor infos: types and shapes)."""

    layers: tuple[int, ...]  # blk.N.* for each repeating layer N
    input: int  # token_embd.*: always in host memory
    output: int  # the output layer: output.*, output_norm.*, and token_embd again when the output is tied
    other: int  # anything else (rope_freqs, blocks past block_count): counted in host memory
    duplicate: int  # no output.weight: the bytes of token_embd.weight llama.cpp loads again for the output

    @property
    def tied_output(self) -> bool:
        return self.duplicate > 0

    @property
    def total(self) -> int:
        """Every tensor of the file once (what the tensor data holds, less alignment padding)."""
        return sum(self.layers) + self.input + self.other + self.output - self.duplicate

    @classmethod
    def of(cls, gguf: GGUFFile, n_layer: int) -> WeightLayout:
        layers = [0] * n_layer
        input_ = output = other = 0
        tied, token_embd = True, 0
        for tensor in gguf.tensors:
            size = tensor.nbytes
            block = _BLOCK.match(tensor.name)
            if block and int(block.group(1)) < n_layer:
                layers[int(block.group(1))] += size
            elif tensor.name.startswith("token_embd."):
                input_ += size
                if tensor.name == "token_embd.weight":
                    token_embd = size
            elif tensor.name.startswith(("output.", "output_norm.")):
                output += size
                tied = tied and tensor.name != "output.weight"
            else:
                other += size
        duplicate = token_embd if tied else 0
        return cls(tuple(layers), input_, output + duplicate, other, duplicate)


_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class Placement:
    """Where a worker's memory goes for one n_gpu_layers and tensor split: bytes in host RAM and on each
    GPU, in the worker's order (cuda:0, cuda:1, … as CUDA_VISIBLE_DEVICES numbers them)."""

    gpu_layers: int
    host: int
    gpus: tuple[int, ...]
    layers_on: tuple[int, ...]  # repeating layers on each GPU
    output_on: int | None  # the GPU holding the output layer; None: the host


@dataclass(frozen=True)
class DeviceEstimate:
    """A model's memory in the pieces llama.cpp places separately; `cpu` is all of it on the CPU."""

    cpu: MemoryEstimate
    weights: WeightLayout
    kv_layers: tuple[int, ...]  # KV cache bytes of each repeating layer (ctx x slots cells)
    gpu_layer_compute: int  # compute buffer of a GPU running repeating layers
    gpu_output_compute: int  # compute buffer of the GPU running the output layer (logits of a whole batch)
    host_input_compute: int  # host compute buffer of an offloading worker
    host_layer_compute: int  # host compute for repeating layers left on the CPU
    host_runtime: int  # the process, the tokenizer and the logits it reads back
    flash_attn: bool
    cuda_overhead: int = CUDA_OVERHEAD_BYTES
    cuda_host: int = CUDA_HOST_BYTES

    @property
    def n_layer(self) -> int:
        return len(self.weights.layers)

    def place(self, gpu_layers: int, split: Sequence[float] = (1.0,)) -> Placement:
        """As llama.cpp's load_tensors: the last `gpu_layers` of its n_layer + 1 (output first), over GPUs
        in proportion to `split` (one share per GPU the worker sees; () or gpu_layers 0: the CPU only)."""
        n = self.n_layer
        g = max(0, min(gpu_layers, n + 1))
        if g == 0 or not split:
            return Placement(0, self.cpu.total, tuple(0 for _ in split), tuple(0 for _ in split), None)
        if any(share < 0 for share in split) or sum(split) <= 0:
            raise ValueError(f"A tensor split needs positive shares, not {list(split)}.")
        cumulative, running = [], 0.0
        for share in split:
            running = _f32(running + share)
            cumulative.append(running)
        cumulative = [_f32(c / running) for c in cumulative]
        first = n + 1 - g

        def gpu_of(il: int) -> int:
            return min(bisect_right(cumulative, _f32((il - first) / g)), len(split) - 1)

        gpus, layers_on = [0] * len(split), [0] * len(split)
        for il in range(first, n):
            gpus[gpu_of(il)] += self.weights.layers[il] + self.kv_layers[il]
            layers_on[gpu_of(il)] += 1
        output_on = gpu_of(n)
        gpus[output_on] += self.weights.output
        for i in range(len(split)):
            compute = max(self.gpu_layer_compute if layers_on[i] else 0,
                          self.gpu_output_compute if i == output_on else 0)
            gpus[i] += compute + self.cuda_overhead
        host_layers = sum(self.weights.layers[:first]) + sum(self.kv_layers[:first])
        host = (self.weights.input + self.weights.other + host_layers + self.host_input_compute
                + (self.host_layer_compute if first > 0 else 0) + self.host_runtime + self.cuda_host)
        return Placement(g, host, tuple(gpus), tuple(layers_on), output_on)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a transformer's GGUF metadata that size its memory."""

    name: str
    n_layer: int
    n_embd: int
    n_ff: int  # the widest layer's
    n_vocab: int
    context_length: int  # trained context; 0 when unknown
    kv_values_per_layer: tuple[int, ...]  # (key_length + value_length) × head_count_kv of each layer
    n_head: int = 0  # the most of any layer

    @property
    def kv_values_per_token(self) -> int:
        return sum(self.kv_values_per_layer)

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
            kv_values_per_layer=tuple((key_length + value_length) * h for h in heads_kv),
            n_head=n_head,
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
