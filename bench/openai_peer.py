"""rbee's OpenAI endpoint against llama-cpp-python's own OpenAI server, side by side, same model and threads.

Both serve the built-in model with all cores; the same streamed completion (128 tokens, temperature 0)
goes alternately to each, read by the same minimal SSE client. TTFT is from sending the request to the
first text chunk; tokens/s over the whole stream. llama-cpp-python's server needs extra packages
(FastAPI, uvicorn, …): they are installed into this venv on the first run of this benchmark only.
The last line printed is one JSON object.

    .venv/bin/python bench/openai_peer.py [--rounds 10] [--max-tokens 128]
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
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROMPT  # noqa: E402
from shared.builtin_model import builtin_model_path  # noqa: E402
from tests.support.processes import BIN, start_queen  # noqa: E402
from tests.support.sshd import free_port  # noqa: E402
from worker.config import all_cores  # noqa: E402

SERVER_EXTRAS = ["fastapi", "uvicorn", "sse-starlette", "starlette-context", "pydantic-settings"]


def ensure_server_extras() -> None:
    try:
        import fastapi  # noqa: F401  (each import only checks that the extra is installed)
        import pydantic_settings  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("installing llama-cpp-python's server extras for this benchmark: " + ", ".join(SERVER_EXTRAS),
              file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *SERVER_EXTRAS], check=True)


async def stream_once(session, url: str, headers: dict, model: str, max_tokens: int):
    # repeat_penalty 1.0: llama-cpp-python's server defaults to 1.1, the library (and rbee) to 1.0
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "repeat_penalty": 1.0}
    start = time.perf_counter()
    first, parts = None, []
    async with session.post(url + "/v1/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            text = json.loads(data)["choices"][0]["text"]
            if text:
                first = first or time.perf_counter()
                parts.append(text)
    total = time.perf_counter() - start
    text = "".join(parts)
    return (first - start) * 1000, len(parts) / total, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    ensure_server_extras()
    threads = str(all_cores())
    home = Path(tempfile.mkdtemp(prefix="rbee-openai-bench-"))
    queen = start_queen(home)
    peer_port = free_port()
    peer = subprocess.Popen([str(BIN / "python"), "-m", "llama_cpp.server", "--model", str(builtin_model_path()),
                             "--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", "2048",
                             "--host", "127.0.0.1", "--port", str(peer_port), "--model_alias", "smollm2-135m"],
                            stdout=subprocess.DEVNULL, stderr=open(home / "peer.log", "w"))  # noqa: SIM115
    peer_url = f"http://127.0.0.1:{peer_port}"

    async def run_all():
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # the peer loads its model
                try:
                    async with session.get(peer_url + "/v1/models") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if peer.poll() is not None:
                    raise SystemExit(f"llama_cpp.server exited: {(home / 'peer.log').read_text()[-2000:]}")
                await asyncio.sleep(0.1)
            else:
                raise SystemExit(f"llama_cpp.server did not come up: {(home / 'peer.log').read_text()[-2000:]}")
            ours = (session, queen.url, queen.auth, "smollm2-135m", args.max_tokens)
            theirs = (session, peer_url, {}, "smollm2-135m", args.max_tokens)
            await stream_once(*ours[:-1], 8)  # warm: the queen spawns its worker
            await stream_once(*theirs[:-1], 8)
            rows = []
            for r in range(args.rounds):
                pair = [ours, theirs] if r % 2 == 0 else [theirs, ours]
                results = {}
                for side in pair:
                    results[side is ours] = await stream_once(*side)
                rbee, peer_r = results[True], results[False]
                if rbee[2] != peer_r[2]:
                    raise SystemExit(f"the two servers generated different text:\n{rbee[2]!r}\n{peer_r[2]!r}")
                rows.append((rbee, peer_r))
                print(f"round {r + 1}: rbee {rbee[1]:7.1f} tok/s ttft {rbee[0]:6.1f} ms | "
                      f"llama_cpp.server {peer_r[1]:7.1f} tok/s ttft {peer_r[0]:6.1f} ms", file=sys.stderr)
            return rows

    try:
        rows = asyncio.run(run_all())
    finally:
        peer.terminate()
        peer.wait(20)
        queen.stop(30)
    print(json.dumps({
        "bench": "openai_peer",
        "rbee_tokens_per_s": round(statistics.median(r[0][1] for r in rows), 2),
        "peer_tokens_per_s": round(statistics.median(r[1][1] for r in rows), 2),
        # the median of each round's own ratio: the two sides of a round ran back to back
        "ratio": round(statistics.median(r[0][1] / r[1][1] for r in rows), 4),
        "rbee_ttft_ms": round(statistics.median(r[0][0] for r in rows), 2),
        "peer_ttft_ms": round(statistics.median(r[1][0] for r in rows), 2),
        "rounds": len(rows),
    }))


if __name__ == "__main__":
    main()
