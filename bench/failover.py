"""How long a client waits when a worker dies, with a warm worker of the same model on another hive: from
the SIGKILL to the next token reaching the client, for a request that had not started yet (failover) and
for one 20 tokens into its answer (continuation on the other worker). Two hives: the queen's own and one
over a loopback sshd (tests/support/two_hives.py; needs sshd). Medians of several rounds; the killed
worker is started again between rounds. The last line printed is one JSON object.

    .venv/bin/python bench/failover.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROMPT, print_run_in_temp_home  # noqa: E402
from shared.events import Error, Narration, Token  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from shared.operations import Infer, WorkerSpawn  # noqa: E402
from tests.support.two_hives import SECOND, start_two_hives  # noqa: E402


async def finish(client: JobClient, operation) -> list:
    job = await client.submit(operation)
    events = [e async for e in client.stream(job.job_id)]
    if events[-1].state != "completed":
        raise SystemExit(f"{operation}: " + "; ".join(e.message for e in events if isinstance(e, Error)))
    return events


async def workers(client: JobClient) -> list[dict]:
    return (await client.request("GET", "/v1/workers"))["workers"]


async def respawn(client: JobClient) -> None:
    """One warm worker of the built-in model on each hive again."""
    alive = {w["hive_id"] for w in await workers(client) if w["state"] in ("ready", "busy")}
    for hive_id in {"localhost", SECOND} - alive:
        await finish(client, WorkerSpawn(hive_id=hive_id))


async def failover_round(client: JobClient) -> float:
    victim = min(await workers(client), key=lambda w: w["idle_s"])  # any of the two: both are warm
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.perf_counter()
    job = await client.submit(Infer(prompt=PROMPT, max_tokens=8, temperature=0))
    async for event in client.stream(job.job_id):
        if isinstance(event, Token):
            return time.perf_counter() - killed
        if isinstance(event, Error):
            raise SystemExit(f"the request failed: {event.message}")
    raise SystemExit("no token after the kill")


async def continuation_round(client: JobClient) -> float:
    job = await client.submit(Infer(prompt=PROMPT, max_tokens=120, temperature=0))
    tokens, killed, generating, moved = 0, None, None, False
    async for event in client.stream(job.job_id):
        if isinstance(event, Narration) and event.action == "infer_start" and generating is None:
            generating = event.target
        if isinstance(event, Error):
            raise SystemExit(f"the request failed: {event.message}")
        if isinstance(event, Narration) and event.action == "infer_start" and event.target != generating:
            moved = True  # tokens still in flight from the dead worker do not count: the new one's do
        if isinstance(event, Token):
            if killed is not None and moved:
                waited = time.perf_counter() - killed
                async for _ in client.stream(job.job_id):  # drain: the job goes on to the end
                    pass
                return waited
            tokens += 1
            if tokens == 20:
                pid = next(w["pid"] for w in await workers(client) if w["worker_id"] == generating)
                os.kill(pid, signal.SIGKILL)
                killed = time.perf_counter()
    raise SystemExit("the answer ended before the kill took effect")


async def run(home: Path, rounds: int) -> dict:
    setup = await asyncio.to_thread(start_two_hives, home)
    try:
        async with JobClient(setup.queen.url, setup.queen.token, request_timeout=120) as client:
            await respawn(client)
            failover, continuation = [], []
            for _ in range(rounds):
                failover.append(await failover_round(client))
                await respawn(client)
                continuation.append(await continuation_round(client))
                await respawn(client)
        return {"rounds": rounds,
                "failover_s_median": round(statistics.median(failover), 3),
                "failover_s": [round(x, 3) for x in failover],
                "continuation_s_median": round(statistics.median(continuation), 3),
                "continuation_s": [round(x, 3) for x in continuation]}
    finally:
        await asyncio.to_thread(setup.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print_run_in_temp_home(lambda home: run(home, args.rounds))
