"""Prompt caches kept on disk, for real (worker/prompt_cache.py): a one-slot worker of the built-in model
saves a long prompt's KV cache before another prompt takes its slot, and reads it back when the first
comes again; caches outlive the worker (saved when it stops, read by the next); a truncated or corrupt
file is found, removed, and the prompt computed instead; and the text is the same every time, at
temperature 0, whether the prompt came from a cache or not."""

from __future__ import annotations

import asyncio
import stat

import pytest

from shared.events import End, Token
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.processes import start_worker

pytestmark = pytest.mark.usefixtures("slow")

LONG_A = "Here is a list of facts to keep in mind. " + " ".join(
    f"Fact {k}: the number {k} doubled is {2 * k}." for k in range(1, 40)) + " Which fact is about 7?"
LONG_B = "A different text about rivers. " + " ".join(
    f"River {k} is {k * 13} kilometres long." for k in range(1, 45)) + " Which river is the longest?"


async def ask(worker, prompt: str) -> tuple[str, dict]:
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        job = await client.submit(InferenceRequest(prompt=prompt, max_tokens=8, temperature=0))
        events = [e async for e in client.stream(job.job_id)]
    end = next(e for e in events if isinstance(e, End))
    return "".join(e.t for e in events if isinstance(e, Token)), dict(end.stats)


def start(home, cache_dir, slots: int = 1):
    return start_worker(home, "--parallel", str(slots), "--prompt-cache-dir", str(cache_dir), "--prompt-cache-mb", "512")


@pytest.fixture
async def cache_dir(tmp_path):
    return tmp_path / "prompt-cache" / "0123456789abcdef"


async def test_a_slot_taken_by_another_prompt_is_saved_and_read_back(tmp_path, slow, cache_dir):
    worker = await asyncio.to_thread(start, tmp_path / "home", cache_dir)
    try:
        text_a, first = await ask(worker, LONG_A)
        assert first["prompt_tokens"] > 400 and first["prompt_tokens_reused"] == 0
        assert list(cache_dir.glob("*.kv")) == []  # nothing lost yet: nothing saved
        text_b, _ = await ask(worker, LONG_B)  # takes the one slot: A's cache is saved first
        saved = list(cache_dir.glob("*.kv"))
        assert len(saved) == 1 and stat.S_IMODE(saved[0].stat().st_mode) == 0o600
        again, stats = await ask(worker, LONG_A)
        assert stats["prompt_tokens_reused"] == stats["prompt_tokens"] - 1  # all of it, but the last token
        assert again == text_a
    finally:
        assert await asyncio.to_thread(worker.stop) == 0
    # B was in the slot when the worker stopped: saved then, and read by the next worker, which has
    # another number of slots (a saved state fits any: worker/seq_state.py)
    assert len(list(cache_dir.glob("*.kv"))) == 2
    worker = await asyncio.to_thread(start, tmp_path / "home2", cache_dir, 3)
    try:
        again_b, stats = await ask(worker, LONG_B)
        assert stats["prompt_tokens_reused"] == stats["prompt_tokens"] - 1 and again_b == text_b
    finally:
        await asyncio.to_thread(worker.stop)


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
async def test_a_damaged_file_is_removed_and_the_prompt_computed_again(tmp_path, slow, cache_dir, damage):
    worker = await asyncio.to_thread(start, tmp_path / "home", cache_dir)
    try:
        text_a, _ = await ask(worker, LONG_A)
    finally:
        await asyncio.to_thread(worker.stop)  # saves A
    (kv,) = cache_dir.glob("*.kv")
    data = bytearray(kv.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    kv.write_bytes(bytes(data))
    worker = await asyncio.to_thread(start, tmp_path / "home2", cache_dir)
    try:
        again, stats = await ask(worker, LONG_A)
        assert stats["prompt_tokens_reused"] == 0 and again == text_a
        assert not kv.exists() and not kv.with_suffix(".json").exists()
    finally:
        await asyncio.to_thread(worker.stop)
