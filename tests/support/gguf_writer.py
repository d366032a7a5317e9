"""Write small GGUF files byte by byte, well-formed or deliberately broken, to test hive/gguf.py."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

# gguf_type values
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_CODES = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f", BOOL: "?",
          UINT64: "Q", INT64: "q", FLOAT64: "d"}


class GGUFWriter:
    """Pieces appended in order; `bytes()` is the file. Counts are written as given, true or not."""

    def __init__(self, *, order: str = "<") -> None:
        self.order = order
        self.parts: list[bytes] = []

    def raw(self, data: bytes) -> GGUFWriter:
        self.parts.append(data)
        return self

    def pack(self, code: str, *values: Any) -> GGUFWriter:
        return self.raw(struct.pack(self.order + code, *values))

    def header(self, *, tensors: int, kvs: int, version: int = 3, magic: bytes = b"GGUF") -> GGUFWriter:
        return self.raw(magic).pack("I", version).pack("Q", tensors).pack("Q", kvs)

    def string(self, text: str) -> GGUFWriter:
        data = text.encode()
        return self.pack("Q", len(data)).raw(data)

    def value(self, kind: int, value: Any) -> GGUFWriter:
        if kind == STRING:
            return self.string(value)
        if kind == ARRAY:
            item, items = value
            self.pack("I", item).pack("Q", len(items))
            for v in items:
                self.value(item, v)
            return self
        return self.pack(_CODES[kind], value)

    def kv(self, key: str, kind: int, value: Any) -> GGUFWriter:
        return self.string(key).pack("I", kind).value(kind, value)

    def tensor(self, name: str, shape: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> GGUFWriter:
        self.string(name).pack("I", len(shape))
        for dim in shape:
            self.pack("Q", dim)
        return self.pack("I", ggml_type).pack("Q", offset)

    def pad(self, alignment: int = 32) -> GGUFWriter:
        return self.raw(b"\0" * (-len(self.bytes()) % alignment))

    def bytes(self) -> bytes:
        return b"".join(self.parts)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.bytes())
        return path


def llama_like(*, block_count: int = 2, embd: int = 64, heads: Any = (UINT32, 4), heads_kv: Any = (UINT32, 2),
               key_length: int | None = None, vocab: int = 100, context_length: int = 256,
               data_bytes: int = 4096, extra: list[tuple[str, int, Any]] | None = None,
               leave_out: tuple[str, ...] = ()) -> bytes:
    """A small well-formed llama GGUF: metadata, one tensor, `data_bytes` of tensor data."""
    kvs: list[tuple[str, int, Any]] = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "tiny"),
        ("llama.block_count", UINT32, block_count),
        ("llama.context_length", UINT32, context_length),
        ("llama.embedding_length", UINT32, embd),
        ("llama.feed_forward_length", UINT32, 4 * embd),
        ("llama.attention.head_count", *heads),
        ("llama.attention.head_count_kv", *heads_kv),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, [f"t{i}" for i in range(vocab)])),
    ]
    if key_length is not None:
        kvs.append(("llama.attention.key_length", UINT32, key_length))
        kvs.append(("llama.attention.value_length", UINT32, key_length))
    kvs += extra or []
    kvs = [kv for kv in kvs if kv[0] not in leave_out]
    w = GGUFWriter().header(tensors=1, kvs=len(kvs))
    for key, kind, value in kvs:
        w.kv(key, kind, value)
    w.tensor("token_embd.weight", (embd, vocab), ggml_type=0, offset=0)
    return w.pad().raw(b"\0" * data_bytes).bytes()
