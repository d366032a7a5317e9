"""Jobs per second through the real job API vs. a bare aiohttp + aiohttp-sse skeleton, side by side.

Each server runs in its own process; this process is the client: 32 concurrent clients each doing
POST /v1/jobs then GET the stream to `[DONE]`, for a fixed time. Rounds alternate between the two servers
so both see the same machine conditions. The rbee server starts with its registry already holding
`--prefill` finished jobs (each size in turn), as a queen that has been serving for a while does: a
lookup or an eviction that costs in proportion to the jobs kept shows up here.

Then the cost of API keys (#26): the queen's access check (queen/access) on the same job API, one client
at a time, an `infer` key (with limits, so they are counted) against the queen's own token, alternating:
the median time of one job (POST, then its stream to `[DONE]`) each way. The last line printed is one
JSON object.

    .venv/bin/python bench/job_api.py [--seconds 4] [--rounds 5] [--concurrency 32] [--prefill 1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token-" + "x" * 32


# --- the two servers ---------------------------------------------------------------------------------

def rbee_app(prefill: int) -> web.Application:
    from shared import appkeys
    from shared.app import create_base_app
    from shared.events import narrate
    from shared.job_registry import JobLimits
    from shared.job_routes import setup_job_api
    from shared.operations import Status

    async def execute(operation, job):
        narrate("status", "All quiet")
        return None

    async def fill(app: web.Application) -> None:
        registry = app[appkeys.JOB_REGISTRY]
        jobs = [registry.submit(Status()) for _ in range(prefill)]
        await asyncio.gather(*(job.wait() for job in jobs))

    app = create_base_app(TOKEN)
    # Keep exactly `prefill` finished jobs: each new one evicts the oldest, as in a busy queen.
    setup_job_api(app, execute, actor="queen", limits=JobLimits(max_finished=max(prefill, 1)))
    app.on_startup.append(fill)
    return app


def queen_app() -> web.Application:
    """The job API behind the queen's access check and key store, as the queen mounts them; an `infer`
    key with limits is made at start (its secret printed after the port)."""
    from queen.access.keys import key_settings
    from queen.access.middleware import access_middleware, submit_job
    from queen.access.routes import setup_access
    from queen.appkeys import KEYS
    from shared.app import create_base_app
    from shared.events import narrate
    from shared.job_routes import setup_job_api

    async def execute(operation, job):
        narrate("infer", "All quiet")
        return {"text": "", "tokens_out": 1, "prompt_tokens": 1}

    app = create_base_app(TOKEN, auth=access_middleware(TOKEN))
    setup_job_api(app, execute, actor="queen", submit=submit_job)
    setup_access(app, Path(os.environ["RBEE_HOME"]) / f"bench-keys-{os.getpid()}.db")

    async def make_key(app: web.Application) -> None:
        _, secret = await app[KEYS].create(key_settings({
            "name": "bench", "scope": "infer", "tokens_per_day": 10**12, "requests_per_minute": 10**9,
            "max_concurrent": 10**6}))
        app[SECRET] = secret

    app.on_startup.append(make_key)
    return app


SECRET = web.AppKey("bench_secret", str)
INFER = {"operation": "infer", "model": "smollm2-135m", "prompt": "hi", "max_tokens": 1}


def bare_app() -> web.Application:
    """The same two calls with nothing in between: no registry, no validation, no auth."""
    from aiohttp_sse import sse_response

    async def create(request: web.Request) -> web.Response:
        await request.json()
        job_id = f"job-{uuid.uuid4()}"
        return web.json_response({"job_id": job_id, "sse_url": f"/v1/jobs/{job_id}/stream"}, status=201)

    async def stream(request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        async with sse_response(request) as resp:
            narration = {"type": "narration", "actor": "queen", "action": "status", "human": "All quiet",
                         "level": "info", "job_id": job_id, "ts": int(time.time() * 1000)}
            await resp.send(json.dumps(narration, separators=(",", ":")), id="0")
            await resp.send('{"type":"end","state":"completed"}', id="1")
            await resp.send("[DONE]")
        return resp

    app = web.Application()
    app.router.add_post("/v1/jobs", create)
    app.router.add_get("/v1/jobs/{job_id}/stream", stream)
    return app


def serve(kind: str, prefill: int) -> None:
    app = rbee_app(prefill) if kind == "rbee" else queen_app() if kind == "queen" else bare_app()

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        if kind == "queen":
            print(app[SECRET], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the client ---------------------------------------------------------------------------------------

async def one_job(session: aiohttp.ClientSession, base: str, credential: str = TOKEN,
                  operation: dict | None = None) -> None:
    headers = {"Authorization": f"Bearer {credential}"}
    async with session.post(f"{base}/v1/jobs", json=operation or {"operation": "status"}, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        sse_url = (await resp.json())["sse_url"]
    async with session.get(base + sse_url, headers=headers) as resp:
        async for line in resp.content:
            if line.startswith(b"data: [DONE]"):
                return
    raise RuntimeError("stream ended without [DONE]")


async def load(base: str, seconds: float, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(concurrency):  # warm the connection pool
            await one_job(session, base)
        done = 0
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one_job(session, base)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def measure(kind: str, seconds: float, concurrency: int, prefill: int) -> float:
    env = {**os.environ, "RBEE_HOME": os.environ.get("RBEE_HOME", "/tmp/rbee-bench-home")}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--prefill", str(prefill)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(proc.stdout.readline())
        return asyncio.run(load(f"http://127.0.0.1:{port}", seconds, concurrency))
    finally:
        proc.terminate()
        proc.wait(10)


async def latencies(base: str, credential: str, seconds: float) -> list[float]:
    """One client, one job at a time: how long each takes."""
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            await one_job(session, base, credential, INFER)
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await one_job(session, base, credential, INFER)
            times.append(time.perf_counter() - start)
        return times


def measure_keys(seconds: float, rounds: int) -> dict:
    """Median job time with an `infer` key vs the queen's token, on one queen app, alternating."""
    env = {**os.environ, "RBEE_HOME": os.environ.get("RBEE_HOME", "/tmp/rbee-bench-home")}
    Path(env["RBEE_HOME"]).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "queen", "--prefill", "0"], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        port, secret = int(proc.stdout.readline()), proc.stdout.readline().strip()
        base = f"http://127.0.0.1:{port}"
        times: dict[str, list[float]] = {"token": [], "key": []}
        for r in range(rounds):
            for who in (("token", "key") if r % 2 == 0 else ("key", "token")):
                got = asyncio.run(latencies(base, TOKEN if who == "token" else secret, seconds))
                times[who] += got
                print(f"keys, round {r + 1}: {who:5s} p50 {statistics.median(got) * 1000:.3f} ms "
                      f"({len(got)} jobs)", file=sys.stderr)
        token_ms, key_ms = (statistics.median(times[w]) * 1000 for w in ("token", "key"))
        return {"token_p50_ms": round(token_ms, 3), "key_p50_ms": round(key_ms, 3),
                "key_cost_ms": round(key_ms - token_ms, 3)}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server, alternating")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--prefill", default="1000,10000",
                        help="finished jobs the rbee registry holds before measuring, comma-separated sizes")
    parser.add_argument("--serve", choices=("rbee", "bare", "queen"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, int(args.prefill))
        return
    by_prefill = {}
    for prefill in (int(n) for n in args.prefill.split(",")):
        results: dict[str, list[float]] = {"rbee": [], "bare": []}
        for r in range(args.rounds):
            order = ("rbee", "bare") if r % 2 == 0 else ("bare", "rbee")  # drift on the machine hits both alike
            for kind in order:
                rate = measure(kind, args.seconds, args.concurrency, prefill)
                results[kind].append(rate)
                print(f"prefill {prefill}, round {r + 1}: {kind:4s} {rate:8.1f} jobs/s", file=sys.stderr)
        # The ratio is the median of each round's own ratio: the two sides of a round ran back to back.
        ratio = statistics.median(a / b for a, b in zip(results["rbee"], results["bare"]))
        by_prefill[str(prefill)] = {"jobs_per_s": round(statistics.median(results["rbee"]), 1),
                                    "bare_jobs_per_s": round(statistics.median(results["bare"]), 1),
                                    "ratio": round(ratio, 3)}
        print(f"prefill {prefill}: ratio {ratio:.3f}", file=sys.stderr)
    keys = measure_keys(args.seconds / 2, args.rounds)
    print(f"keys: an infer key costs {keys['key_cost_ms']:+.3f} ms a job over the queen's token "
          f"(p50 {keys['key_p50_ms']:.3f} vs {keys['token_p50_ms']:.3f} ms)", file=sys.stderr)
    print(json.dumps({"bench": "job_api", "prefill": by_prefill, "min_ratio": min(v["ratio"] for v in by_prefill.values()),
                      "keys": keys, "concurrency": args.concurrency, "seconds_per_round": args.seconds,
                      "rounds": args.rounds}))


if __name__ == "__main__":
    main()
