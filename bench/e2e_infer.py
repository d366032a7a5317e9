"""The whole stack against llama-cpp-python in-process, side by side, plus a cold start from nothing.

cold: start queen-rbee (nothing else running), submit `infer`: the queen starts the local hive, the hive
spawns a worker, the worker loads the model: seconds until the first token reaches this client.
warm: the same generation (built-in model, 128 tokens, temperature 0, all cores) alternately in this
process through llama-cpp-python and through the queen's job API (keeper -> queen -> worker), medians.
The last line printed is one JSON object.

    .venv/bin/python bench/e2e_infer.py [--rounds 10] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROMPT, Run, paired, run_direct, run_over_http  # noqa: E402
from shared.builtin_model import builtin_model_path  # noqa: E402
from tests.support.processes import BIN, start_daemon  # noqa: E402
from worker.config import all_cores  # noqa: E402


async def run_queen(session, url, auth, max_tokens: int, started: float | None = None) -> Run:
    body = {"operation": "infer", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    return await run_over_http(session, url, "/v1/jobs", body, auth, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rbee-e2e-"))

    cold_start = time.perf_counter()
    queen = start_daemon([str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0"], home)

    async def queen_round(started=None, max_tokens=args.max_tokens):
        async with aiohttp.ClientSession() as session:
            return await run_queen(session, queen.url, queen.auth, max_tokens, started)

    try:
        cold_ttft_ms = asyncio.run(queen_round(cold_start, 16))[0]
        print(f"cold: first token {cold_ttft_ms / 1000:.2f} s after starting the queen", file=sys.stderr)
        from llama_cpp import Llama

        threads = all_cores()
        llm = Llama(model_path=str(builtin_model_path()), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                    verbose=False)
        run_direct(llm, 8)
        asyncio.run(queen_round(max_tokens=8))
        direct, via_queen = [], []
        for r in range(args.rounds):
            if r % 2 == 0:
                d, q = run_direct(llm, args.max_tokens), asyncio.run(queen_round())
            else:
                q, d = asyncio.run(queen_round()), run_direct(llm, args.max_tokens)
            if d.text != q.text:
                raise SystemExit(f"the two paths generated different text:\n{d.text!r}\n{q.text!r}")
            direct.append(d)
            via_queen.append(q)
            print(f"round {r + 1}: direct {d[1]:7.1f} tok/s ttft {d[0]:6.1f} ms | "
                  f"queen {q[1]:7.1f} tok/s ttft {q[0]:6.1f} ms", file=sys.stderr)
        llm.close()
    finally:
        queen.stop(30)

    print(json.dumps({
        "bench": "e2e_infer",
        **paired("direct", direct, "queen", via_queen),
        "cold_first_token_s": round(cold_ttft_ms / 1000, 3),
        "rounds": args.rounds,
    }))


if __name__ == "__main__":
    main()
