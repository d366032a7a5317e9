"""The next turn of a long chat: time to first token of turn 2 (its ~1,500 tokens of history already in
the worker's cache from turn 1) against the same size of prompt sent cold, through rbee's OpenAI
endpoint (queen -> worker). Each round uses two fresh conversations of the same shape: A is sent as
turn 1, then turn 2 (measured, warm); B is sent straight as its turn 2 (measured, cold). Then, with the
worker stopped between the turns (as its idle timeout stops it): C's turn 2 on a new worker that reads C's
history back from the hive's saved prompt cache, against D's on a new worker with nothing saved. The last
line printed is one JSON object.

    .venv/bin/python bench/multiturn.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_run_in_temp_home  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from shared.operations import WorkerDelete  # noqa: E402
from tests.support.processes import start_queen  # noqa: E402

MODEL = "smollm2-135m"


def history(tag: str) -> list[dict]:
    """About 1,500 tokens of earlier conversation, unique to `tag` from its first word (no shared prefix)."""
    facts = " ".join(f"Fact {k} of {tag}: the number {k} squared is {k * k}." for k in range(1, 90))
    return [{"role": "system", "content": f"Conversation {tag}. You are a careful assistant."},
            {"role": "user", "content": f"Remember these facts. {facts}"},
            {"role": "assistant", "content": "I have noted all of them."},
            {"role": "user", "content": "What is 7 squared?"}]


async def ttft(client: AsyncOpenAI, messages: list[dict]) -> tuple[float, str]:
    start = time.perf_counter()
    first, parts = None, []
    stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                                  stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    return ((first or time.perf_counter()) - start) * 1000, "".join(parts)


async def run(rounds: int, home: Path) -> dict:
    queen = await asyncio.to_thread(start_queen, home)
    client = AsyncOpenAI(base_url=queen.url + "/v1", api_key=queen.token, max_retries=0, timeout=600)
    warm, cold, resumed, fresh = [], [], [], []
    try:
        await ttft(client, [{"role": "user", "content": "Hello"}])  # the worker spawned and loaded
        for r in range(rounds):
            turn1 = history(f"A{r}")
            _, answer = await ttft(client, turn1)
            turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And 8 squared?"}]
            warm.append((await ttft(client, turn2))[0])
            b = history(f"B{r}")
            cold.append((await ttft(client, b + [{"role": "assistant", "content": answer},
                                                  {"role": "user", "content": "And 8 squared?"}]))[0])
            print(f"round {r + 1}: turn 2 {warm[-1]:6.1f} ms | cold {cold[-1]:6.1f} ms", file=sys.stderr)
        # The worker stops between the turns (as its idle timeout would stop it): turn 2 on a new worker,
        # its history read back from the hive's saved prompt cache, against a conversation never saved.
        async with JobClient(queen.url, queen.token) as jobs:
            for r in range(rounds):
                turn1 = history(f"C{r}")
                _, answer = await ttft(client, turn1)
                turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And 8 squared?"}]
                await stop_workers(jobs)
                resumed.append((await ttft(client, turn2))[0])
                await stop_workers(jobs)
                d = history(f"D{r}")
                fresh.append((await ttft(client, d + [{"role": "assistant", "content": answer},
                                                      {"role": "user", "content": "And 8 squared?"}]))[0])
                print(f"round {r + 1}: after a stop, turn 2 {resumed[-1]:6.1f} ms | never saved {fresh[-1]:6.1f} ms",
                      file=sys.stderr)
    finally:
        await client.close()
        await asyncio.to_thread(queen.stop, 30)
    return {"bench": "multiturn", "turn2_ttft_ms": round(statistics.median(warm), 1),
            "cold_ttft_ms": round(statistics.median(cold), 1),
            "ratio": round(statistics.median(w / c for w, c in zip(warm, cold)), 3),
            "resumed_ttft_ms": round(statistics.median(resumed), 1),
            "resumed_cold_ttft_ms": round(statistics.median(fresh), 1),
            "resumed_ratio": round(statistics.median(w / c for w, c in zip(resumed, fresh)), 3), "rounds": rounds}


async def stop_workers(jobs: JobClient) -> None:
    """Every worker stopped (and so its slots' caches saved by it), as an idle timeout would."""
    for worker in (await jobs.request("GET", "/v1/workers"))["workers"]:
        job = await jobs.submit(WorkerDelete(hive_id=worker["hive_id"], id=worker["worker_id"]))
        async for _ in jobs.stream(job.job_id):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print_run_in_temp_home(lambda home: run(args.rounds, home))


if __name__ == "__main__":
    main()
