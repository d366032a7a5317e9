"""What the worker's HTTP + SSE path costs over calling llama-cpp-python directly, side by side.

The same generation (built-in model, 128 tokens, temperature 0, same threads) runs alternately in this
process through llama-cpp-python and through a real llm-worker-rbee process over its HTTP API. TTFT is
measured from the request (the POST, for the worker) to the first token; tokens/s over the whole
generation. The last line printed is one JSON object.

    .venv/bin/python bench/stream_overhead.py [--rounds 10] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROMPT, Run, paired, run_direct, run_over_http  # noqa: E402
from shared.builtin_model import builtin_model_path  # noqa: E402
from tests.support.processes import start_worker  # noqa: E402
from worker.config import all_cores  # noqa: E402

CTX = 2048


async def run_worker(session: aiohttp.ClientSession, url: str, auth: dict, max_tokens: int) -> Run:
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    return await run_over_http(session, url, "/v1/inference", body, auth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="generations per path, alternating")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    threads = all_cores()

    from llama_cpp import Llama

    llm = Llama(model_path=str(builtin_model_path()), n_ctx=CTX, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    home = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    worker = start_worker(home, "--threads", str(threads), "--ctx-size", str(CTX))

    async def worker_round():
        async with aiohttp.ClientSession() as session:
            return await run_worker(session, worker.url, worker.auth, args.max_tokens)

    try:
        run_direct(llm, 8)  # warm both paths (first-call allocations, page cache)
        asyncio.run(worker_round())
        direct, via_worker = [], []
        for r in range(args.rounds):
            if r % 2 == 0:  # alternate which path goes first, so drift on the machine hits both alike
                d = run_direct(llm, args.max_tokens)
                w = asyncio.run(worker_round())
            else:
                w = asyncio.run(worker_round())
                d = run_direct(llm, args.max_tokens)
            if d[3] != w[3]:
                raise SystemExit(f"the two paths generated different text:\n{d[3]!r}\n{w[3]!r}")
            direct.append(d)
            via_worker.append(w)
            print(f"round {r + 1}: direct {d[1]:7.1f} tok/s ttft {d[0]:6.1f} ms | "
                  f"worker {w[1]:7.1f} tok/s ttft {w[0]:6.1f} ms ({w[2]} tokens)", file=sys.stderr)
    finally:
        worker.stop()
        llm.close()

    result = {
        "bench": "stream_overhead",
        **paired("direct", direct, "worker", via_worker),
        "tokens": via_worker[0][2],
        "threads": threads,
        "rounds": args.rounds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
