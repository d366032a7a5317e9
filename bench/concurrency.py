"""N chat clients at once: rbee's OpenAI endpoint (queen -> worker, as a user's client reaches it) with
its default settings against llama.cpp's own `llama-server` tuned for N, same GGUF and threads.

For N in 1, 4, 8, 16: rbee runs as a user starts it (one KV cache shared by as many requests as fit;
`--slots N` gives it N fixed slots instead), llama-server with `-np N -c N*CTX` (N slots of CTX tokens,
what a user would tune it to for N clients), and each round sends N streamed chat requests at
once (96 tokens, temperature 0, a different prompt per client) to one side, then the other (the order
alternates by round). Aggregate tokens/s is every client's tokens over the round's wall time; TTFT is
from sending a request to its first content chunk. llama-server is built once from the llama.cpp that
llama-cpp-python vendors (bench/llama_server.py). The last line printed is one JSON object.

    .venv/bin/python bench/concurrency.py [--rounds 3] [--clients 1,4,8,16] [--max-tokens 96] [--slots N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.llama_server import llama_server_binary  # noqa: E402
from shared.builtin_model import builtin_model_path  # noqa: E402
from tests.support.processes import start_queen  # noqa: E402
from tests.support.sshd import free_port  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402
from worker.config import all_cores  # noqa: E402

CTX = 2048  # per slot, on both sides


def prompt(k: int) -> list[dict]:
    return [{"role": "user", "content": f"Write the numbers from {10 * k + 1} to {10 * k + 200}, separated by commas."}]


async def one_client(client: AsyncOpenAI, model: str, k: int, max_tokens: int) -> tuple[float, int]:
    """(TTFT in ms, tokens) of one streamed chat answer."""
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    stream = await client.chat.completions.create(model=model, messages=prompt(k), max_tokens=max_tokens,
                                                  temperature=0, stream=True,
                                                  stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            chunks += 1
    return ((first or time.perf_counter()) - start) * 1000, usage or chunks


async def one_round(client: AsyncOpenAI, model: str, n: int, max_tokens: int) -> tuple[float, list[float]]:
    """(aggregate tokens/s, TTFTs) of n clients at once."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one_client(client, model, k, max_tokens) for k in range(n)))
    elapsed = time.perf_counter() - start
    return sum(tokens for _, tokens in results) / elapsed, [ttft for ttft, _ in results]


def start_llama_server(binary: Path, n: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(binary), "-m", str(builtin_model_path()), "--host", "127.0.0.1", "--port", str(port),
                             "-np", str(n), "-c", str(CTX * n), "-t", str(threads), "-tb", str(threads),
                             "--no-webui", "-lv", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_until(healthy, timeout=120, interval=0.2, what="llama-server to load the model")
    return proc, url


async def measure(n: int, rounds: int, max_tokens: int, binary: Path, threads: int, home: Path,
                  slots: int | None) -> dict:
    queen = await asyncio.to_thread(start_queen, home / f"rbee-{n}",
                                    *(["--worker-slots", str(slots)] if slots else []))
    server, server_url = await asyncio.to_thread(start_llama_server, binary, n, threads)
    rbee = AsyncOpenAI(base_url=queen.url + "/v1", api_key=queen.token, max_retries=0, timeout=600)
    peer = AsyncOpenAI(base_url=server_url + "/v1", api_key="none", max_retries=0, timeout=600)
    sides = {"rbee": (rbee, "smollm2-135m"), "llama_server": (peer, "smollm2")}
    try:
        for client, model in sides.values():  # warm: the worker spawned and loaded, caches touched
            await one_round(client, model, n, 8)
        got: dict[str, list[tuple[float, list[float]]]] = {"rbee": [], "llama_server": []}
        for r in range(rounds):
            order = ["rbee", "llama_server"] if r % 2 == 0 else ["llama_server", "rbee"]
            for side in order:
                client, model = sides[side]
                got[side].append(await one_round(client, model, n, max_tokens))
            print(f"n={n} round {r + 1}: rbee {got['rbee'][-1][0]:6.1f} tok/s | "
                  f"llama-server {got['llama_server'][-1][0]:6.1f} tok/s", file=sys.stderr)
    finally:
        await rbee.close()
        await peer.close()
        server.terminate()
        server.wait(30)
        await asyncio.to_thread(queen.stop, 30)

    def ttft_p50(side: str) -> float:
        return statistics.median(t for _, ttfts in got[side] for t in ttfts)

    return {
        "rbee_tokens_per_s": round(statistics.median(tps for tps, _ in got["rbee"]), 1),
        "llama_server_tokens_per_s": round(statistics.median(tps for tps, _ in got["llama_server"]), 1),
        # the median of each round's own ratio: the two sides of a round ran back to back
        "ratio": round(statistics.median(a[0] / b[0] for a, b in zip(got["rbee"], got["llama_server"])), 3),
        "rbee_ttft_p50_ms": round(ttft_p50("rbee"), 1),
        "llama_server_ttft_p50_ms": round(ttft_p50("llama_server"), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated client counts")
    parser.add_argument("--slots", type=int, help="give rbee's workers this many fixed slots (default: rbee's default)")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    binary = llama_server_binary()
    threads = all_cores()
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rbee-bench-") as tmp:
        for n in (int(c) for c in args.clients.split(",")):
            results[n] = asyncio.run(measure(n, args.rounds, args.max_tokens, binary, threads, Path(tmp), args.slots))
    print(f"{'clients':>7} | {'rbee tok/s':>10} | {'llama-server':>12} | {'ratio':>5} | {'rbee TTFT p50':>13} | "
          f"{'llama-server TTFT p50':>21}")
    for n, r in results.items():
        print(f"{n:>7} | {r['rbee_tokens_per_s']:>10} | {r['llama_server_tokens_per_s']:>12} | {r['ratio']:>5} | "
              f"{r['rbee_ttft_p50_ms']:>10} ms | {r['llama_server_ttft_p50_ms']:>18} ms")
    summary: dict = {"bench": "concurrency", "threads": threads, "rounds": args.rounds, "max_tokens": args.max_tokens,
                     "rbee_slots": args.slots or "default"}
    for n, r in results.items():
        summary[f"ratio_{n}"] = r["ratio"]
        summary[f"ttft_delta_ms_{n}"] = round(r["rbee_ttft_p50_ms"] - r["llama_server_ttft_p50_ms"], 1)
        summary[f"clients_{n}"] = r
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
