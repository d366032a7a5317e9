"""A real model made bigger: the built-in GGUF with one extra metadata entry (an array of bytes nobody reads)
right after its header, so tests move hundreds of MB that llama.cpp still loads and answers with.

The entry's length is a multiple of the file's alignment, so everything after it (the other metadata, the
tensor table, the tensor data) moves by whole alignment units and stays valid byte for byte.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from hive.gguf import DEFAULT_ALIGNMENT, read_gguf
from shared.builtin_model import builtin_model_path

HEADER = 24  # magic, version, tensor count, metadata count
ARRAY, UINT8 = 9, 0


def padded_model(dest: Path, size: int, *, seed: int = 0, source: Path | None = None) -> Path:
    """Write a GGUF of about `size` bytes (at least the source's) that loads as the source model does;
    `seed` makes the padding's bytes (and so the file's sha256) differ between two files of one size."""
    source = source or builtin_model_path()
    info = read_gguf(source)
    alignment = int(info.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    key = f"rbee.test.padding.{seed}".encode()
    fixed = 8 + len(key) + 4 + 4 + 8  # key length, key, value type, item type, count
    pad = max(0, size - info.file_size - fixed)
    pad += -(fixed + pad) % alignment
    with open(source, "rb") as src, open(dest, "wb") as out:
        header = src.read(HEADER)
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", header)
        out.write(struct.pack("<4sIQQ", magic, version, n_tensors, n_kv + 1))
        out.write(struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", ARRAY, UINT8, pad))
        pattern = bytes((seed + i) % 251 for i in range(1 << 16))
        left = pad
        while left:
            chunk = pattern[:min(left, len(pattern))]
            out.write(chunk)
            left -= len(chunk)
        shutil.copyfileobj(src, out, 1 << 20)
    return dest
