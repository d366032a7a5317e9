"""GGUF files with the layout of real models, header only: metadata and tensor infos as the real files
have them, no weights. The file is made sparse to its real length (`truncate`), so hive/gguf.py, which
checks every tensor's offset against the file's size, reads it like the real one, in no disk space.

The tensor types follow llama.cpp's Q4_K_M recipe (src/llama-quant.cpp): Q4_K everywhere, Q6_K for the
output and for attn_v and ffn_down of the layers `use_more_bits` picks (the first and last eighth, and
every third one between), F32 for norms and biases. The totals come out at the real files' sizes:
Llama-3.1-8B-Instruct-Q4_K_M.gguf 4,912,898,304 bytes of tensors (4.58 GiB), Qwen2.5-32B-Instruct-Q4_K_M
19,845,357,568 (18.48 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive.gguf import GGML_TYPE_IDS, GGUFTensor
from tests.support.gguf_writer import FLOAT32, STRING, UINT32, GGUFWriter

ALIGNMENT = 32


@dataclass(frozen=True)
class ModelLayout:
    """A decoder's shape as llama.cpp's GGUF metadata gives it."""

    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    context_length: int
    qkv_bias: bool = False  # Qwen2 has biases on Q, K and V
    tied_output: bool = False  # no output.weight: the token embeddings serve
    rope_freqs: bool = False  # Llama 3.1's rope scaling factors

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


LLAMA_31_8B = ModelLayout("Llama-3.1-8B-Instruct-Q4_K_M.gguf", "llama", n_layer=32, n_embd=4096, n_ff=14336,
                          n_head=32, n_head_kv=8, n_vocab=128256, context_length=131072, rope_freqs=True)
QWEN25_32B = ModelLayout("Qwen2.5-32B-Instruct-Q4_K_M.gguf", "qwen2", n_layer=64, n_embd=5120, n_ff=27648,
                         n_head=40, n_head_kv=8, n_vocab=152064, context_length=32768, qkv_bias=True)


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quant.cpp: the layers Q4_K_M gives Q6_K for attn_v and ffn_down."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def q4_k_m_tensors(m: ModelLayout) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape as ggml's ne, type) for every tensor, in the order convert_hf_to_gguf writes them."""
    kv = m.n_head_kv * m.head_dim
    tensors: list[tuple[str, tuple[int, ...], str]] = []
    if m.rope_freqs:
        tensors.append(("rope_freqs.weight", (m.head_dim // 2,), "F32"))
    tensors.append(("token_embd.weight", (m.n_embd, m.n_vocab), "Q6_K" if m.tied_output else "Q4_K"))
    for i in range(m.n_layer):
        more = "Q6_K" if use_more_bits(i, m.n_layer) else "Q4_K"
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (m.n_embd,), "F32"),
            (b + "ffn_down.weight", (m.n_ff, m.n_embd), more),
            (b + "ffn_gate.weight", (m.n_embd, m.n_ff), "Q4_K"),
            (b + "ffn_up.weight", (m.n_embd, m.n_ff), "Q4_K"),
            (b + "ffn_norm.weight", (m.n_embd,), "F32"),
            (b + "attn_k.weight", (m.n_embd, kv), "Q4_K"),
            (b + "attn_output.weight", (m.n_embd, m.n_embd), "Q4_K"),
            (b + "attn_q.weight", (m.n_embd, m.n_embd), "Q4_K"),
            (b + "attn_v.weight", (m.n_embd, kv), more),
        ]
        if m.qkv_bias:
            tensors += [(b + "attn_q.bias", (m.n_embd,), "F32"), (b + "attn_k.bias", (kv,), "F32"),
                        (b + "attn_v.bias", (kv,), "F32")]
    tensors.append(("output_norm.weight", (m.n_embd,), "F32"))
    if not m.tied_output:
        tensors.append(("output.weight", (m.n_embd, m.n_vocab), "Q6_K"))
    return tensors


def write_header_gguf(path: Path, m: ModelLayout) -> Path:
    """Write `m` as a Q4_K_M GGUF of its real length, all of it after the header a hole."""
    kvs: list[tuple[str, int, Any]] = [
        ("general.architecture", STRING, m.arch),
        ("general.name", STRING, m.name.removesuffix(".gguf")),
        ("general.file_type", UINT32, 15),  # LLAMA_FTYPE_MOSTLY_Q4_K_M
        (f"{m.arch}.block_count", UINT32, m.n_layer),
        (f"{m.arch}.context_length", UINT32, m.context_length),
        (f"{m.arch}.embedding_length", UINT32, m.n_embd),
        (f"{m.arch}.feed_forward_length", UINT32, m.n_ff),
        (f"{m.arch}.attention.head_count", UINT32, m.n_head),
        (f"{m.arch}.attention.head_count_kv", UINT32, m.n_head_kv),
        (f"{m.arch}.rope.freq_base", FLOAT32, 500000.0 if m.arch == "llama" else 1000000.0),
        (f"{m.arch}.attention.layer_norm_rms_epsilon", FLOAT32, 1e-5 if m.arch == "llama" else 1e-6),
    ]
    if m.arch == "llama":  # Llama's files say their vocabulary; Qwen2's leave it to token_embd's shape
        kvs.append(("llama.vocab_size", UINT32, m.n_vocab))
    tensors = q4_k_m_tensors(m)
    w = GGUFWriter().header(tensors=len(tensors), kvs=len(kvs))
    for kv in kvs:
        w.kv(*kv)
    offset = 0
    for name, shape, type_name in tensors:
        ggml_type = GGML_TYPE_IDS[type_name]
        w.tensor(name, shape, ggml_type=ggml_type, offset=offset)
        offset += -(-GGUFTensor(name, shape, ggml_type, 0).nbytes // ALIGNMENT) * ALIGNMENT
    w.pad(ALIGNMENT)
    path.write_bytes(w.bytes())
    with open(path, "r+b") as f:
        f.truncate(len(w.bytes()) + offset)  # sparse: the weights' length, no weights
    return path

