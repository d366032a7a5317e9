"""hive/memory_estimate.py without a worker: the formula's parts for the built-in model and small files.
(tests/integration/test_memory_estimate.py checks the total against a real worker's RSS.)"""

from __future__ import annotations

import pytest

from hive.gguf import GGUFError, read_gguf
from hive.memory_estimate import MIB, RUNTIME_BYTES, VOCAB_BYTES_PER_TOKEN, WORKER_UBATCH, estimate_worker_memory
from shared.builtin_model import builtin_model_path
from tests.support.gguf_writer import ARRAY, UINT32, llama_like
from worker.engine import BATCH_TOKENS


def test_the_batch_is_the_workers():
    """The hive may not import the worker, so it repeats its batch size: they must agree."""
    assert WORKER_UBATCH == BATCH_TOKENS


def test_builtin_model_parts():
    est = estimate_worker_memory(builtin_model_path(), ctx_size=512, slots=4)
    assert est.weights == read_gguf(builtin_model_path()).tensor_data_bytes == 96_576_768  # llama.cpp: 92.10 MiB
    # 30 layers × 2048 cells × (3 kv heads × 64) × 2 (K and V) × 2 bytes: llama.cpp says 45.00 MiB
    assert est.kv_cache == 30 * 2048 * 384 * 2 == 45 * MIB
    assert est.overhead == RUNTIME_BYTES + 49152 * VOCAB_BYTES_PER_TOKEN
    assert 10 * MIB < est.compute < 25 * MIB
    assert est.total == est.weights + est.kv_cache + est.compute + est.overhead
    # llama.cpp reserves 98.25 MiB of compute buffer for this context (its log: "CPU compute buffer size")
    assert est.compute_reserved / MIB == pytest.approx(98.25, rel=0.03)
    assert (est.model, est.ctx_size, est.slots, est.cache_type) == (builtin_model_path().name, 512, 4, "f16")


def test_kv_cache_scales_with_context_times_slots_and_type():
    path = builtin_model_path()
    base = estimate_worker_memory(path, ctx_size=512, slots=4)
    assert estimate_worker_memory(path, ctx_size=2048, slots=4).kv_cache == 4 * base.kv_cache == 180 * MIB
    assert estimate_worker_memory(path, ctx_size=2048, slots=1).kv_cache == base.kv_cache
    assert estimate_worker_memory(path, ctx_size=512, slots=4, cache_type="q8_0").kv_cache == \
        pytest.approx(base.kv_cache * 34 / 64, abs=1)


def test_context_is_capped_at_the_trained_context_as_the_worker_does():
    est = estimate_worker_memory(builtin_model_path(), ctx_size=100_000, slots=2)
    assert est.ctx_size == 8192 and est.kv_cache == 30 * 8192 * 2 * 384 * 2


def test_to_dict_and_describe():
    est = estimate_worker_memory(builtin_model_path(), ctx_size=512, slots=4)
    d = est.to_dict()
    assert d["kv_cache_mb"] == 45.0 and d["weights_mb"] == 92.1 and d["total_mb"] == round(est.total / MIB, 1)
    assert set(d) >= {"weights_mb", "kv_cache_mb", "compute_mb", "overhead_mb", "total_mb", "ctx_size", "slots"}
    line = est.describe()
    assert "\n" not in line and line.startswith("SmolLM2-135M-Instruct.Q4_1.gguf needs ")
    assert "KV cache 45 MB (512 tokens × 4 slots, f16)" in line


def test_key_length_falls_back_to_embedding_over_heads(tmp_path):
    """64-wide embedding, 4 heads, 2 kv heads, 2 layers: 16 values per head, K and V."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(llama_like(block_count=2, embd=64, vocab=100))
    assert estimate_worker_memory(path, ctx_size=100, slots=3).kv_cache == 2 * 300 * (16 * 2 + 16 * 2) * 2
    path.write_bytes(llama_like(block_count=2, embd=64, vocab=100, key_length=32))
    assert estimate_worker_memory(path, ctx_size=100, slots=3).kv_cache == 2 * 300 * (32 * 2 + 32 * 2) * 2


def test_per_layer_head_counts(tmp_path):
    """Models whose layers differ list head_count_kv per layer (0: a layer without attention)."""
    path = tmp_path / "hybrid.gguf"
    path.write_bytes(llama_like(block_count=3, embd=64, key_length=16, heads_kv=(ARRAY, (UINT32, [2, 0, 4]))))
    assert estimate_worker_memory(path, ctx_size=10, slots=1).kv_cache == 10 * (16 + 16) * (2 + 0 + 4) * 2
    path.write_bytes(llama_like(block_count=3, heads_kv=(ARRAY, (UINT32, [2, 2]))))
    with pytest.raises(GGUFError, match="head_count_kv lists 2 layers, but the model has 3"):
        estimate_worker_memory(path, ctx_size=10, slots=1)


def test_vocabulary_from_the_tokenizer_when_the_model_does_not_say(tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(llama_like(vocab=2000))
    assert estimate_worker_memory(path, ctx_size=10, slots=1).overhead == RUNTIME_BYTES + 2000 * VOCAB_BYTES_PER_TOKEN


def test_missing_shape_is_named(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(llama_like(leave_out=("llama.block_count",)))
    with pytest.raises(GGUFError, match=r"has no llama.block_count: cannot tell how much memory it needs"):
        estimate_worker_memory(path, ctx_size=10, slots=1)
    path.write_bytes(llama_like(leave_out=("general.architecture",)))
    with pytest.raises(GGUFError, match="has no general.architecture"):
        estimate_worker_memory(path, ctx_size=10, slots=1)


def test_impossible_arguments():
    with pytest.raises(ValueError, match="must be positive"):
        estimate_worker_memory(builtin_model_path(), ctx_size=0, slots=4)
    with pytest.raises(ValueError, match="cache_type must be one of"):
        estimate_worker_memory(builtin_model_path(), ctx_size=512, slots=4, cache_type="f8")
