"""A queen holding 1,000 jobs of 1 MB prompts: its memory, the size and time of `GET /v1/jobs`, and how
long `/health` takes while the jobs pour in (a health probe every 20 ms, alongside). The jobs name a hive
that does not exist, so each fails at once after it is registered and recorded: what is measured is
the bookkeeping, not generation. The last line printed is one JSON object.

    .venv/bin/python bench/history_load.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_run_in_temp_home  # noqa: E402
from tests.support.processes import rss_mb, start_queen  # noqa: E402


async def run(jobs: int, home: Path) -> dict:
    queen = await asyncio.to_thread(start_queen, home)
    headers = {"Authorization": f"Bearer {queen.token}"}
    health_ms: list[float] = []
    done = asyncio.Event()

    async def probe(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            start = time.perf_counter()
            async with session.get(queen.url + "/health") as resp:
                await resp.read()
            health_ms.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.02)  # the probe's period

    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            prober = asyncio.create_task(probe(session))
            started = time.perf_counter()
            for k in range(jobs):
                body = {"operation": "infer", "prompt": "a" * 1_000_000 + str(k), "hive_id": "nowhere"}
                async with session.post(queen.url + "/v1/jobs", json=body) as resp:
                    assert resp.status == 201, await resp.text()
            submit_s = time.perf_counter() - started
            await asyncio.sleep(1.0)  # let the last jobs finish and be recorded
            lists = []
            for _ in range(5):
                start = time.perf_counter()
                async with session.get(queen.url + "/v1/jobs") as resp:
                    body = await resp.read()
                lists.append(((time.perf_counter() - start) * 1000, len(body)))
            done.set()
            await prober
        rss = rss_mb(queen.proc.pid)
        db_mb = (home / "data" / "queen.db").stat().st_size / 1e6
    finally:
        await asyncio.to_thread(queen.stop, 30)
    return {"bench": "history_load", "jobs": jobs, "submit_s": round(submit_s, 1), "queen_rss_mb": round(rss, 1),
            "queen_db_mb": round(db_mb, 1), "list_ms": round(min(t for t, _ in lists), 1),
            "list_bytes": lists[0][1], "health_max_ms": round(max(health_ms), 1),
            "health_probes": len(health_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    print_run_in_temp_home(lambda home: run(args.jobs, home))


if __name__ == "__main__":
    main()
