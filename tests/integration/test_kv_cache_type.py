"""The KV cache type, measured on real workers on the built-in model: q8_0 takes about half of f16's
memory, still recalls what the start of a full context said, is refused without flash attention, and
the worker and its hive say which type each worker runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request

import pytest

from hive.memory_estimate import MIB, estimate_worker_memory
from shared.builtin_model import builtin_model_path
from shared.events import Data, End, Error
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.processes import BIN, daemon_env, start_hive, start_worker

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

CTX, SLOTS = 2048, 4  # the measure: ctx 2048 x 4 slots
TINY_CTX = 16  # llama.cpp pads it to 256 cells: a cache of a few MiB, where CTX x SLOTS holds 8192 cells


def resident_anonymous_bytes(pid: int) -> int:
    """RssAnon from /proc: the process's private memory in RAM. The model's weights are a mapped file
    (RssFile), so they stay out of it whatever the kernel keeps cached of the file."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def loaded_worker_memory(home, *args: str) -> int:
    worker = start_worker(home, "--threads", "1", *args)
    try:
        time.sleep(0.3)  # the health answer that said ready came after the load; let the allocator settle
        return resident_anonymous_bytes(worker.proc.pid)
    finally:
        assert worker.stop() == 0


def kv_cache_bytes(home, kv_cache_type: str) -> int:
    """The KV cache's resident memory: a worker at CTX x SLOTS less one with the same everything but a tiny
    context. llama.cpp clears the cache buffer when it makes the context (ggml_backend_buffer_clear), so every
    page of it is resident as soon as the worker is ready; the compute buffer it reserves is not touched
    before the first decode (none has run yet), and weights, tokenizer, Python and the libraries are the
    same in both. What differs is the cache: 8192 cells against 256."""
    full = loaded_worker_memory(home, "--kv-cache-type", kv_cache_type, "--ctx-size", str(CTX), "--parallel", str(SLOTS))
    tiny = loaded_worker_memory(home, "--kv-cache-type", kv_cache_type, "--ctx-size", str(TINY_CTX), "--parallel", "1")
    return full - tiny


def test_a_q8_0_cache_takes_at_most_55_percent_of_f16s_resident_memory(tmp_path):
    f16 = kv_cache_bytes(tmp_path, "f16")
    q8_0 = kv_cache_bytes(tmp_path, "q8_0")
    print(f"KV cache resident at ctx {CTX} x {SLOTS} slots: f16 {f16 / MIB:.1f} MiB, q8_0 {q8_0 / MIB:.1f} MiB "
          f"({q8_0 / f16:.1%})")
    # The hive's estimate of the same caches (what placement counts) is what was measured, within 10 %; the
    # 8192 - 256 cells the subtraction leaves are 97 % of it.
    for cache_type, measured in (("f16", f16), ("q8_0", q8_0)):
        estimate = estimate_worker_memory(builtin_model_path(), ctx_size=CTX, slots=SLOTS, cache_type=cache_type)
        assert measured == pytest.approx(estimate.kv_cache * (CTX * SLOTS - 256) / (CTX * SLOTS), rel=0.10), \
            (cache_type, measured / MIB, estimate.kv_cache / MIB)
    assert q8_0 <= 0.55 * f16  # q8_0 is 34 bytes a block of 32 values, f16 64: 53.1 %


CODES = ("4711", "5823")
FILLER = ("The weather in the valley was mild that day. A farmer walked slowly along the river bank. Birds were "
          "singing in the tall oak trees. The market in town sold apples and bread. Children played games near "
          "the old stone bridge. Clouds drifted over the green hills. ")


async def answer(worker, prompt: str, max_tokens: int) -> str:
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        job = await client.submit(InferenceRequest(prompt=prompt, max_tokens=max_tokens, temperature=0))
        events = [e async for e in client.stream(job.job_id)]
    assert isinstance(events[-1], End) and events[-1].state == "completed", events[-1]
    return events[-1].stats["text"]


def prompt_tokens(prompt: str) -> int:
    import llama_cpp

    vocab = llama_cpp.Llama(str(builtin_model_path()), vocab_only=True, verbose=False)
    return len(vocab.tokenize(prompt.encode()))


def fact_prompt(code: str | None) -> str:
    """A fact first, then filler up to the slot's context (about 2,000 tokens), then the question."""
    fact = f"The secret code is {code}.\n\n" if code else ""
    return f"{fact}{FILLER * 37}\n\nQuestion: What is the secret code?\nAnswer: The secret code is"


@pytest.mark.parametrize("kv_cache_type", ["f16", "q8_0"])
async def test_a_fact_at_the_start_of_a_full_context_is_recalled(tmp_path, kv_cache_type):
    """f16 says which formulation the 135M model can recall at all; q8_0 must recall it as well. Two codes,
    and a prompt without one that names neither: the answer comes from the fact, not from the question.
    (q4_0 does not pass this: it answered 521 for 5823 when tried.)"""
    fills = prompt_tokens(fact_prompt("4711"))
    assert CTX - 64 <= fills <= CTX - 8, f"{fills} tokens: the prompt must fill a slot and leave room for the answer"
    worker = await asyncio.to_thread(start_worker, tmp_path, "--kv-cache-type", kv_cache_type,
                                     "--ctx-size", str(CTX), "--parallel", str(SLOTS))
    try:
        assert worker.health()["kv_cache_type"] == kv_cache_type
        for code in CODES:
            text = await answer(worker, fact_prompt(code), max_tokens=6)
            assert text.strip().startswith(code), (kv_cache_type, code, text)
        if kv_cache_type == "f16":  # the control, once (each full prompt is ~10 s of prefill on 2 cores)
            unknown = await answer(worker, fact_prompt(None), max_tokens=6)
            assert not any(code in unknown for code in CODES), unknown
    finally:
        assert worker.stop() == 0


def test_a_quantized_cache_without_flash_attention_is_refused_at_start(tmp_path):
    with pytest.raises(RuntimeError) as err:
        start_worker(tmp_path, "--kv-cache-type", "q8_0", "--flash-attn", "off", wait_ready=False)
    assert "A q8_0 KV cache needs flash attention" in str(err.value)
    assert "use --flash-attn auto or on with --kv-cache-type q8_0" in str(err.value)
    hive = subprocess.run([str(BIN / "rbee-hive"), "--port", "0", "--kv-cache-type", "q4_0", "--flash-attn", "off"],
                          capture_output=True, text=True, env=daemon_env(tmp_path), timeout=60)
    assert hive.returncode == 2 and "a q4_0 KV cache needs flash attention" in hive.stderr, hive.stderr


async def run(client, operation):
    job = await client.submit(operation)
    return [e async for e in client.stream(job.job_id)]


def data_of(events, action):
    return next(e.payload for e in events if isinstance(e, Data) and e.action == action)


async def test_a_hive_starts_workers_with_its_cache_type_unless_a_spawn_names_one(tmp_path):
    hive = await asyncio.to_thread(start_hive, tmp_path / "home", "--kv-cache-type", "q8_0")
    try:
        async with JobClient(hive.url, hive.token) as client:
            models = data_of(await run(client, {"operation": "model_list"}), "model_list")["models"]
            assert [m["estimate"]["cache_type"] for m in models] == ["q8_0"]  # placement counts the hive's type

            refused = await run(client, {"operation": "worker_spawn", "flash_attn": "off"})
            error = next(e for e in refused if isinstance(e, Error))
            assert error.code == "KV_CACHE_NEEDS_FLASH_ATTN" and "A q8_0 KV cache needs flash attention" in error.message

            # One at a time: the first worker takes every core of this machine's thread budget.
            for spawn, kv, fa in (({}, "q8_0", "auto"), ({"kv_cache_type": "f16", "flash_attn": "off"}, "f16", "off")):
                worker = data_of(await run(client, {"operation": "worker_spawn", **spawn}), "worker_spawn")
                listed = data_of(await run(client, {"operation": "worker_list"}), "worker_list")["workers"]
                assert [(w["id"], w["kv_cache_type"], w["flash_attn"], w["gpu_layers"], w["gpus"]) for w in listed] \
                    == [(worker["id"], kv, fa, 0, [])]
                health = await asyncio.to_thread(worker_health, worker["url"])
                assert (health["kv_cache_type"], health["flash_attn"], health["gpu_layers"]) == (kv, fa, 0)
                await run(client, {"operation": "worker_delete", "id": worker["id"]})
    finally:
        await asyncio.to_thread(hive.stop)


def worker_health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=5) as resp:
        return json.loads(resp.read())


def test_the_worker_reports_its_cache_type_flash_attention_and_offload(tmp_path):
    worker = start_worker(tmp_path, "--kv-cache-type", "q4_0", "--flash-attn", "on", "--ctx-size", "256")
    try:
        health = worker.health()
        assert (health["kv_cache_type"], health["flash_attn"]) == ("q4_0", "on")
        assert (health["device"], health["gpu_layers"], health["tensor_split"]) == ("cpu", 0, [])
        assert health["layers"] == 30  # SmolLM2-135M's
    finally:
        assert worker.stop() == 0
