"""hive/gguf.py: the built-in model's metadata as llama.cpp reads it, and malformed files refused clearly."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from hive.errors import HiveError
from hive.gguf import (
    GGML_TYPE_IDS,
    GGML_TYPES,
    MAX_KEPT_STRING,
    GGUFArray,
    GGUFError,
    GGUFString,
    GGUFTensor,
    read_gguf,
    read_gguf_metadata,
)
from shared.builtin_model import BUILTIN_ARCHITECTURE, builtin_model_path
from tests.support.gguf_writer import (
    ARRAY,
    BOOL,
    FLOAT32,
    FLOAT64,
    INT8,
    INT16,
    INT32,
    INT64,
    STRING,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    GGUFWriter,
    llama_like,
)

# ggml type -> (bytes per block, values per block), for the types the built-in model uses
GGML_BLOCKS = {0: (4, 1), 3: (20, 32), 8: (34, 32)}  # f32, q4_1, q8_0


@pytest.fixture(scope="module")
def builtin():
    return read_gguf(builtin_model_path())


def test_builtin_model_metadata(builtin):
    meta = builtin.metadata
    assert builtin.version == 3 and builtin.byte_order == "little"
    assert builtin.architecture == BUILTIN_ARCHITECTURE == "llama"  # the Ollama API names it without reading
    assert meta["llama.block_count"] == 30
    assert meta["llama.context_length"] == 8192
    assert meta["llama.embedding_length"] == 576
    assert meta["llama.feed_forward_length"] == 1536
    assert meta["llama.attention.head_count"] == 9
    assert meta["llama.attention.head_count_kv"] == 3
    assert meta["llama.vocab_size"] == 49152
    assert meta["general.file_type"] == 3  # MOSTLY_Q4_1
    assert builtin.arch_value("rope.freq_base") == pytest.approx(100000.0)
    assert meta["general.languages"] == ["en"]  # small arrays are kept
    assert "{% for message in messages %}" in meta["tokenizer.chat_template"]
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.add_bos_token"] is False


def test_large_arrays_are_summarised_by_length(builtin):
    meta = builtin.metadata
    assert meta["tokenizer.ggml.tokens"] == GGUFArray("string", 49152) and len(meta["tokenizer.ggml.tokens"]) == 49152
    assert meta["tokenizer.ggml.token_type"] == GGUFArray("int32", 49152)
    assert meta["tokenizer.ggml.merges"] == GGUFArray("string", 48900)
    assert read_gguf_metadata(builtin_model_path()) == meta


def test_tensor_table_and_data_offset(builtin):
    """The header ends where the tensor data begins: the last tensor ends at the file's end (±alignment)."""
    assert len(builtin.tensors) == 272
    embd = builtin.tensors[0]
    assert embd.name == "token_embd.weight" and embd.shape == (576, 49152) and embd.offset == 0
    assert builtin.data_offset % 32 == 0 and 0 < builtin.data_offset < 4 << 20
    last = max(builtin.tensors, key=lambda t: t.offset)
    size, per = GGML_BLOCKS[last.ggml_type]
    values = 1
    for dim in last.shape:
        values *= dim
    end = last.offset + values // per * size
    assert 0 <= builtin.tensor_data_bytes - end < 32
    assert builtin.tensor_data_bytes == builtin_model_path().stat().st_size - builtin.data_offset


def test_reading_the_header_is_quick_and_small():
    """About 0.05 s: 1.8 MB of header and tokenizer skipped through, never the 96 MB of tensors."""
    start = time.perf_counter()
    read_gguf(builtin_model_path())
    assert time.perf_counter() - start < 2.0
    tracemalloc.start()
    try:
        read_gguf(builtin_model_path())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the vocabulary is skipped, not held


def test_every_value_type_and_nested_arrays(tmp_path):
    kvs = [("u8", UINT8, 200), ("i8", INT8, -5), ("u16", UINT16, 60000), ("i16", INT16, -300),
           ("u32", UINT32, 4_000_000_000), ("i32", INT32, -7), ("f32", FLOAT32, 1.5), ("b", BOOL, True),
           ("s", STRING, "héllo"), ("u64", UINT64, 2**63), ("i64", INT64, -(2**40)), ("f64", FLOAT64, 0.1),
           ("nested", ARRAY, (ARRAY, [(UINT32, [1, 2]), (STRING, ["a"])])), ("empty", ARRAY, (INT32, []))]
    w = GGUFWriter().header(tensors=0, kvs=len(kvs))
    for kv in kvs:
        w.kv(*kv)
    meta = read_gguf_metadata(w.write(tmp_path / "all.gguf"))
    assert meta == {"u8": 200, "i8": -5, "u16": 60000, "i16": -300, "u32": 4_000_000_000, "i32": -7, "f32": 1.5,
                    "b": True, "s": "héllo", "u64": 2**63, "i64": -(2**40), "f64": 0.1,
                    "nested": [[1, 2], ["a"]], "empty": []}


def test_big_endian_files_are_read(tmp_path):
    w = GGUFWriter(order=">").header(tensors=0, kvs=2)
    w.kv("general.architecture", STRING, "llama").kv("llama.block_count", UINT32, 30)
    gguf = read_gguf(w.write(tmp_path / "be.gguf"))
    assert gguf.byte_order == "big" and gguf.metadata == {"general.architecture": "llama", "llama.block_count": 30}


def test_long_strings_are_summarised(tmp_path):
    w = GGUFWriter().header(tensors=0, kvs=1).kv("tokenizer.huggingface.json", STRING, "x" * (MAX_KEPT_STRING + 1))
    assert read_gguf_metadata(w.write(tmp_path / "s.gguf")) == {
        "tokenizer.huggingface.json": GGUFString(MAX_KEPT_STRING + 1)}


def bad(tmp_path, data: bytes) -> str:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError) as caught:
        read_gguf(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_the_error_is_a_hive_error_and_a_value_error():
    assert issubclass(GGUFError, HiveError) and issubclass(GGUFError, ValueError)
    assert GGUFError.code == "BAD_GGUF"


def test_wrong_magic(tmp_path):
    assert "starts with b'PK\\x03\\x04', not b'GGUF'" in bad(tmp_path, b"PK\x03\x04" + b"\0" * 100)
    assert "starts with b'', not b'GGUF'" in bad(tmp_path, b"")
    assert "starts with b'GG', not b'GGUF'" in bad(tmp_path, b"GG")


def test_unsupported_version(tmp_path):
    assert "version 1 is not supported" in bad(tmp_path, GGUFWriter().header(tensors=0, kvs=0, version=1).bytes())
    assert "version 99 is not supported" in bad(tmp_path, GGUFWriter().header(tensors=0, kvs=0, version=99).bytes())


@pytest.mark.parametrize("keep", [6, 23, 1000, 200_000, 1_785_000])
def test_truncated_builtin_model(tmp_path, keep):
    with open(builtin_model_path(), "rb") as f:
        head = f.read(keep)
    message = bad(tmp_path, head)
    assert "(truncated or corrupt)" in message


def test_truncated_tensor_data(tmp_path):
    """The header is whole but the tensor data is cut: a tensor starts past the end."""
    w = GGUFWriter().header(tensors=2, kvs=0).tensor("a", (8,), offset=0).tensor("b", (8,), offset=4096)
    message = bad(tmp_path, w.pad().raw(b"\0" * 64).bytes())
    assert "tensor b starts 4096 bytes into the tensor data, which holds only 64 bytes" in message


def test_absurd_array_length_is_refused_without_allocating(tmp_path):
    w = GGUFWriter().header(tensors=0, kvs=1).string("tokenizer.ggml.tokens").pack("I", ARRAY)
    w.pack("I", STRING).pack("Q", 2**62)
    start = time.perf_counter()
    message = bad(tmp_path, w.bytes())
    assert "tokenizer.ggml.tokens claims 4611686018427387904 elements of type string" in message
    assert time.perf_counter() - start < 1.0


def test_absurd_string_length(tmp_path):
    w = GGUFWriter().header(tensors=0, kvs=1).string("general.name").pack("I", STRING).pack("Q", 2**63)
    assert "the value of general.name at byte" in bad(tmp_path, w.bytes())
    w = GGUFWriter().header(tensors=0, kvs=1).pack("Q", 2**64 - 1).raw(b"\0" * 16)
    assert "metadata key #0 at byte 32 needs 18446744073709551615 bytes" in bad(tmp_path, w.bytes())


def test_absurd_counts(tmp_path):
    assert "claims 1000000000000 metadata entries" in bad(tmp_path, GGUFWriter().header(tensors=0, kvs=10**12).bytes())
    assert "claims 99999999 tensors" in bad(tmp_path, GGUFWriter().header(tensors=99_999_999, kvs=0).bytes())


def test_unknown_types(tmp_path):
    w = GGUFWriter().header(tensors=0, kvs=1).string("general.odd").pack("I", 13).pack("I", 0)
    assert "general.odd has value type 13, which GGUF does not define" in bad(tmp_path, w.bytes())
    w = GGUFWriter().header(tensors=0, kvs=1).string("x").pack("I", ARRAY).pack("I", 77).pack("Q", 1)
    assert "x is an array of type 77" in bad(tmp_path, w.bytes())


def test_deeply_nested_arrays(tmp_path):
    w = GGUFWriter().header(tensors=0, kvs=1).string("deep").pack("I", ARRAY)
    for _ in range(6):
        w.pack("I", ARRAY).pack("Q", 1)
    assert "deep[0][0][0][0] nests arrays more than 4 deep" in bad(tmp_path, w.raw(b"\0" * 64).bytes())


def test_bad_tensor_dimensions_and_alignment(tmp_path):
    w = GGUFWriter().header(tensors=1, kvs=0).string("t").pack("I", 9)
    assert "tensor t has 9 dimensions" in bad(tmp_path, w.raw(b"\0" * 64).bytes())
    w = GGUFWriter().header(tensors=0, kvs=1).kv("general.alignment", UINT32, 24)
    assert "general.alignment is 24, not a power of two" in bad(tmp_path, w.bytes())


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="Cannot read .*nothing.gguf: No such file"):
        read_gguf(tmp_path / "nothing.gguf")


def test_synthetic_llama_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(llama_like(vocab=3000, data_bytes=1000))
    gguf = read_gguf(path)
    assert gguf.architecture == "llama" and gguf.arch_value("block_count") == 2
    assert gguf.metadata["tokenizer.ggml.tokens"] == GGUFArray("string", 3000)
    assert gguf.tensor_data_bytes == 1000


def test_ggml_block_sizes_by_hand():
    """Bytes per block from ggml-common.h's structs: d/dmin halves, scales, packed quants."""
    sizes = {t.name: (t.block_size, t.type_size) for t in GGML_TYPES.values()}
    assert sizes["F32"] == (1, 4) and sizes["F16"] == (1, 2) and sizes["BF16"] == (1, 2)
    assert sizes["Q4_0"] == (32, 2 + 16) and sizes["Q4_1"] == (32, 2 + 2 + 16) and sizes["Q8_0"] == (32, 2 + 32)
    assert sizes["Q5_0"] == (32, 2 + 4 + 16) and sizes["Q5_1"] == (32, 2 + 2 + 4 + 16)
    assert sizes["Q2_K"] == (256, 2 * 2 + 16 + 64) and sizes["Q3_K"] == (256, 2 + 64 + 32 + 12)
    assert sizes["Q4_K"] == (256, 2 * 2 + 12 + 128) and sizes["Q5_K"] == (256, 2 * 2 + 12 + 128 + 32)
    assert sizes["Q6_K"] == (256, 2 + 16 + 192) and sizes["Q8_K"] == (256, 4 + 256 + 32)
    assert sizes["IQ4_XS"] == (256, 2 + 2 + 4 + 128) and sizes["IQ4_NL"] == (32, 2 + 16)
    assert sizes["IQ2_XXS"] == (256, 2 + 64) and sizes["IQ1_S"] == (256, 2 + 32 + 16)
    assert GGML_TYPE_IDS["Q4_K"] == 12 and GGML_TYPE_IDS["Q6_K"] == 14 and GGML_TYPE_IDS["BF16"] == 30


def test_tensor_sizes_add_up_to_the_builtin_files_data(builtin):
    """Every tensor's bytes from its type and shape, padded to the alignment, tile the tensor data."""
    ordered = sorted(builtin.tensors, key=lambda t: t.offset)
    for tensor, following in zip(ordered, ordered[1:]):
        assert tensor.offset + builtin.padded_nbytes(tensor) == following.offset, tensor.name
    assert sum(builtin.padded_nbytes(t) for t in ordered) == builtin.tensor_data_bytes == 96_576_768
    embd = ordered[0]
    assert embd.type_name == "Q8_0" and embd.nbytes == 576 // 32 * 34 * 49152 == 30_081_024
    q = next(t for t in ordered if t.name == "blk.0.attn_q.weight")
    assert q.type_name == "Q4_1" and q.nbytes == 576 // 32 * 20 * 576 == 207_360


def test_unknown_tensor_type_and_broken_rows_are_named():
    with pytest.raises(GGUFError, match="Tensor x has ggml type 31, which this rbee does not know"):
        GGUFTensor("x", (256, 4), 31, 0).nbytes  # noqa: B018  (Q4_0_4_4: gone from ggml)
    with pytest.raises(GGUFError, match=r"Tensor y \(Q4_K\) has rows of 100 values, not a whole number of 256"):
        GGUFTensor("y", (100, 4), 12, 0).nbytes  # noqa: B018
