"""A small GGUF reader: the header, the metadata and the tensor table, never the tensor data.

The hive needs a model's shape (layers, heads, context, vocabulary) to estimate how much memory a worker
running it takes, before starting one and without importing llama.cpp. GGUF v2/v3 layout (little- or
big-endian; see ggml's docs/gguf.md):

    magic "GGUF" · u32 version · u64 tensor_count · u64 metadata_kv_count
    metadata_kv_count × (string key · u32 type · value)         string: u64 length + UTF-8 bytes
    tensor_count × (string name · u32 n_dims · n_dims × u64 · u32 ggml type · u64 offset)
    padding to `general.alignment` (default 32) · tensor data

Every length read from the file is checked against what is left of the file before anything is allocated
or skipped, so a truncated, malformed or hostile file gives one `GGUFError` naming the problem and where
it is, never a traceback or a huge allocation. Large arrays (the tokenizer's vocabulary and merges) are
skipped and kept as a `GGUFArray` summary holding only their element type and length.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hive.errors import HiveError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KEPT_ARRAY = 1024  # arrays longer than this (vocabularies, merges) are summarised, not kept
MAX_KEPT_STRING = 1 << 20  # longer strings (an embedded tokenizer.json) are summarised too
MAX_ARRAY_DEPTH = 4  # arrays of arrays: the spec allows them; nothing real nests deeper than 2
MAX_DIMS = 4  # GGML_MAX_DIMS

# value types (gguf_type)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALARS: dict[int, tuple[str, str]] = {  # type -> (struct code, name)
    UINT8: ("B", "uint8"), INT8: ("b", "int8"), UINT16: ("H", "uint16"), INT16: ("h", "int16"),
    UINT32: ("I", "uint32"), INT32: ("i", "int32"), FLOAT32: ("f", "float32"), BOOL: ("?", "bool"),
    UINT64: ("Q", "uint64"), INT64: ("q", "int64"), FLOAT64: ("d", "float64"),
}
TYPE_NAMES = {**{t: name for t, (_, name) in _SCALARS.items()}, STRING: "string", ARRAY: "array"}
_MIN_SIZE = {**{t: struct.calcsize(code) for t, (code, _) in _SCALARS.items()}, STRING: 8, ARRAY: 12}


class GGUFError(HiveError, ValueError):
    """The file is not a GGUF model rbee can read; the message says what is wrong and where."""

    title = "Unreadable GGUF file"
    code = "BAD_GGUF"
    status = 422


@dataclass(frozen=True)
class GGUFArray:
    """A large array left out of the metadata: only what it holds and how many."""

    item_type: str
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class GGUFString:
    """A string too long to keep (an embedded tokenizer.json): only its length in bytes."""

    length: int


@dataclass(frozen=True)
class GGMLType:
    """How ggml stores one tensor type: `type_size` bytes for every block of `block_size` values."""

    name: str
    block_size: int
    type_size: int


QK_K = 256  # values per block of the k-quants and most i-quants
# ggml's types as numbered in ggml.h (enum ggml_type) with their block layouts (ggml-common.h's block_*
# structs; each static_assert there gives the size). Numbers ggml removed (4, 5, 31-33, 36-38) are left out.
GGML_TYPES: dict[int, GGMLType] = {
    0: GGMLType("F32", 1, 4), 1: GGMLType("F16", 1, 2),
    2: GGMLType("Q4_0", 32, 18), 3: GGMLType("Q4_1", 32, 20),
    6: GGMLType("Q5_0", 32, 22), 7: GGMLType("Q5_1", 32, 24),
    8: GGMLType("Q8_0", 32, 34), 9: GGMLType("Q8_1", 32, 36),
    10: GGMLType("Q2_K", QK_K, 84), 11: GGMLType("Q3_K", QK_K, 110), 12: GGMLType("Q4_K", QK_K, 144),
    13: GGMLType("Q5_K", QK_K, 176), 14: GGMLType("Q6_K", QK_K, 210), 15: GGMLType("Q8_K", QK_K, 292),
    16: GGMLType("IQ2_XXS", QK_K, 66), 17: GGMLType("IQ2_XS", QK_K, 74), 18: GGMLType("IQ3_XXS", QK_K, 98),
    19: GGMLType("IQ1_S", QK_K, 50), 20: GGMLType("IQ4_NL", 32, 18), 21: GGMLType("IQ3_S", QK_K, 110),
    22: GGMLType("IQ2_S", QK_K, 82), 23: GGMLType("IQ4_XS", QK_K, 136),
    24: GGMLType("I8", 1, 1), 25: GGMLType("I16", 1, 2), 26: GGMLType("I32", 1, 4), 27: GGMLType("I64", 1, 8),
    28: GGMLType("F64", 1, 8), 29: GGMLType("IQ1_M", QK_K, 56), 30: GGMLType("BF16", 1, 2),
    34: GGMLType("TQ1_0", QK_K, 54), 35: GGMLType("TQ2_0", QK_K, 66),
    39: GGMLType("MXFP4", 32, 17), 40: GGMLType("NVFP4", 64, 36), 41: GGMLType("Q1_0", 128, 18),
    42: GGMLType("Q2_0", 64, 18),
}
GGML_TYPE_IDS = {t.name: i for i, t in GGML_TYPES.items()}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the tensor data

    @property
    def type_name(self) -> str:
        known = GGML_TYPES.get(self.ggml_type)
        return known.name if known else f"type {self.ggml_type}"

    @property
    def nbytes(self) -> int:
        """Its size in the file and in memory (ggml_nbytes of a contiguous tensor): rows of whole blocks."""
        kind = GGML_TYPES.get(self.ggml_type)
        if kind is None:
            raise GGUFError(f"Tensor {self.name} has ggml type {self.ggml_type}, which this rbee does not know "
                            "(a newer quantization?): cannot tell how much memory it needs. Update rbee, or use a "
                            "file quantized with a common type (Q4_K_M, Q8_0, F16).")
        if self.shape[0] % kind.block_size:
            raise GGUFError(f"Tensor {self.name} ({kind.name}) has rows of {self.shape[0]} values, not a whole "
                            f"number of {kind.block_size}-value blocks: the file is corrupt.")
        values = 1
        for dim in self.shape[1:]:
            values *= dim
        return self.shape[0] // kind.block_size * kind.type_size * values


@dataclass(frozen=True)
class GGUFFile:
    """What a GGUF file says about itself, up to where its tensor data starts."""

    path: Path
    version: int
    byte_order: str  # "little" | "big"
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensor, ...]
    data_offset: int  # where the tensor data starts (aligned)
    file_size: int

    def check_complete(self) -> None:
        """Raise GGUFError when the file is too short for its tensors (cut short: a transfer that stopped,
        a disk that filled). Kept out of `read_gguf`: a header alone is enough to plan memory with."""
        for t in self.tensors:
            try:
                end = t.offset + t.nbytes
            except GGUFError:
                continue  # a type this rbee does not know: its size is the estimate's problem, said there
            if end > self.tensor_data_bytes:
                raise GGUFError(f"{self.path} is not a valid GGUF file: tensor {t.name} ends {end} bytes into the "
                                f"tensor data, which holds only {self.tensor_data_bytes} bytes (truncated).")

    @property
    def tensor_data_bytes(self) -> int:
        """The weights: everything after the header, alignment padding included."""
        return self.file_size - self.data_offset

    @property
    def alignment(self) -> int:
        return int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))

    def padded_nbytes(self, tensor: GGUFTensor) -> int:
        """What a tensor takes of the file's data: its bytes, padded to the alignment as GGUF writers do."""
        return -(-tensor.nbytes // self.alignment) * self.alignment

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise GGUFError(f"{self.path} has no general.architecture: it does not say what model it holds.")
        return arch

    def arch_value(self, key: str, default: Any = None) -> Any:
        """`<architecture>.<key>` (e.g. "block_count" → "llama.block_count"), or default."""
        return self.metadata.get(f"{self.architecture}.{key}", default)


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a GGUF file as a dict of key -> value (large arrays as `GGUFArray`)."""
    return read_gguf(path).metadata


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Read a GGUF file's header, metadata and tensor table; raise `GGUFError` when it is malformed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _Reader(f, path, size).read()
    except OSError as exc:
        raise GGUFError(f"Cannot read {path}: {exc.strerror or exc}.") from None


class _Reader:
    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size
        self.pos = 0
        self.order = "<"

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path} is not a valid GGUF file: {problem}.")

    # -- primitives ------------------------------------------------------------------------------------

    def need(self, n: int, what: str) -> None:
        """Refuse before reading or skipping `n` bytes the file does not have."""
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"{what} at byte {self.pos} needs {n} bytes, but the file ends at byte {self.size} "
                            "(truncated or corrupt)")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while being read
            raise self.fail(f"{what} at byte {self.pos}: the file ends early")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def scalar(self, code: str, what: str) -> Any:
        n = struct.calcsize(code)
        return struct.unpack(self.order + code, self.take(n, what))[0]

    def u32(self, what: str) -> int:
        return self.scalar("I", what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", what)

    def string(self, what: str, *, keep: bool = True) -> str | GGUFString | None:
        length = self.u64(f"the length of {what}")
        if not keep or length > MAX_KEPT_STRING:
            self.skip(length, what)
            return GGUFString(length) if keep else None
        return self.take(length, what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, key: str) -> None:
        """Skip `count` strings (a vocabulary: tens of thousands) with as few calls per string as possible."""
        f, size, pos = self.f, self.size, self.pos
        length = struct.Struct(self.order + "Q").unpack
        for i in range(count):
            if size - pos < 8:
                self.pos = pos
                self.need(8, f"the length of {key}[{i}]")
            raw = f.read(8)
            if len(raw) != 8:  # the file shrank while being read
                raise self.fail(f"the length of {key}[{i}] at byte {pos}: the file ends early")
            n = length(raw)[0]
            pos += 8
            if n > size - pos:
                self.pos = pos
                self.need(n, f"{key}[{i}]")
            if n < 4096:
                f.read(n)
            else:
                f.seek(n, os.SEEK_CUR)
            pos += n
        self.pos = pos

    # -- structure -------------------------------------------------------------------------------------

    def read(self) -> GGUFFile:
        magic = self.take(min(4, self.size), "the magic bytes")
        if magic != GGUF_MAGIC:
            raise self.fail(f"it starts with {magic!r}, not {GGUF_MAGIC!r}")
        raw = self.take(4, "the version")
        version = struct.unpack("<I", raw)[0]
        if version not in SUPPORTED_VERSIONS and struct.unpack(">I", raw)[0] in SUPPORTED_VERSIONS:
            self.order, version = ">", struct.unpack(">I", raw)[0]
        if version not in SUPPORTED_VERSIONS:
            raise self.fail(f"version {version} is not supported (only versions "
                            f"{' and '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors = self.u64("the tensor count")
        n_kv = self.u64("the metadata count")
        # every KV pair takes at least 8 (key length) + 4 (type) + 1 bytes, every tensor 8 + 4 + 4 + 8
        self.need_items(n_kv, 13, "metadata entries")
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = self.string(f"metadata key #{i}")
            if not isinstance(key, str):
                raise self.fail(f"metadata key #{i} is {key.length if key else '?'} bytes long")
            kind = self.u32(f"the type of {key}")
            metadata[key] = self.value(kind, key, depth=0)
        self.need_items(n_tensors, 24, "tensors")
        tensors = tuple(self.tensor(i) for i in range(n_tensors))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1):
            raise self.fail(f"general.alignment is {alignment!r}, not a power of two")
        data_offset = -(-self.pos // alignment) * alignment
        if data_offset > self.size:
            if tensors:
                raise self.fail(f"the tensor data would start at byte {data_offset}, past the end of the file "
                                f"({self.size} bytes: truncated or corrupt)")
            data_offset = self.size  # metadata only: nothing follows, padding or not
        data_size = self.size - data_offset
        for t in tensors:
            if t.offset > data_size:
                raise self.fail(f"tensor {t.name} starts {t.offset} bytes into the tensor data, which holds only "
                                f"{data_size} bytes (truncated or corrupt)")
        return GGUFFile(self.path, version, "little" if self.order == "<" else "big", metadata, tensors,
                        data_offset, self.size)

    def need_items(self, count: int, min_size: int, what: str) -> None:
        if count * min_size > self.size - self.pos:
            raise self.fail(f"it claims {count} {what}, more than its remaining {self.size - self.pos} bytes "
                            "could hold (truncated or corrupt)")

    def value(self, kind: int, key: str, depth: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind][0], f"the value of {key}")
        if kind == STRING:
            return self.string(f"the value of {key}")
        if kind == ARRAY:
            return self.array(key, depth)
        raise self.fail(f"{key} has value type {kind}, which GGUF does not define")

    def array(self, key: str, depth: int) -> list[Any] | GGUFArray:
        if depth >= MAX_ARRAY_DEPTH:
            raise self.fail(f"{key} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        item = self.u32(f"the element type of {key}")
        count = self.u64(f"the length of {key}")
        if item not in _MIN_SIZE:
            raise self.fail(f"{key} is an array of type {item}, which GGUF does not define")
        if count * _MIN_SIZE[item] > self.size - self.pos:
            raise self.fail(f"{key} claims {count} elements of type {TYPE_NAMES[item]}, more than the remaining "
                            f"{self.size - self.pos} bytes of the file could hold (truncated or corrupt)")
        if count <= MAX_KEPT_ARRAY:
            if item in _SCALARS:  # one read for the whole array
                code = _SCALARS[item][0]
                return list(struct.unpack(f"{self.order}{count}{code}",
                                          self.take(count * _MIN_SIZE[item], f"the elements of {key}")))
            return [self.value(item, f"{key}[{i}]", depth + 1) for i in range(count)]
        if item in _SCALARS:
            self.skip(count * _MIN_SIZE[item], f"the elements of {key}")
        elif item == STRING:
            self.skip_strings(count, key)
        else:
            for i in range(count):
                self.array(f"{key}[{i}]", depth + 1)
        return GGUFArray(TYPE_NAMES[item], count)

    def tensor(self, i: int) -> GGUFTensor:
        name = self.string(f"the name of tensor #{i}")
        if not isinstance(name, str):
            raise self.fail(f"the name of tensor #{i} is {name.length if name else '?'} bytes long")
        n_dims = self.u32(f"the dimension count of tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.fail(f"tensor {name} has {n_dims} dimensions (GGML allows 1 to {MAX_DIMS})")
        shape = tuple(self.u64(f"the shape of tensor {name}") for _ in range(n_dims))
        ggml_type = self.u32(f"the type of tensor {name}")
        offset = self.u64(f"the offset of tensor {name}")
        return GGUFTensor(name, shape, ggml_type, offset)
