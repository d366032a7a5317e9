"""What the benchmarks share: the prompt every side generates from, and the in-process baseline."""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, NamedTuple

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # keeps going well past 128 tokens at temperature 0


class Run(NamedTuple):
    ttft_ms: float
    tokens_per_s: float
    tokens: int
    text: str


def run_direct(llm, max_tokens: int) -> Run:
    """The same generation straight through llama-cpp-python in this process: the baseline."""
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    for chunk in llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0, stream=True):
        if text := chunk["choices"][0]["text"]:
            first = first or time.perf_counter()
            parts.append(text)
    total = time.perf_counter() - start
    return Run((first - start) * 1000, len(parts) / total, len(parts), "".join(parts))


async def run_over_http(session, url: str, path: str, body: dict, auth: dict, started: float | None = None) -> Run:
    """One generation through a daemon's dual-call API (POST path, then follow its SSE stream)."""
    start = started or time.perf_counter()
    first, parts = None, []
    async with session.post(url + path, json=body, headers=auth) as resp:
        if resp.status != 201:
            raise SystemExit(f"POST {url}{path} answered {resp.status}: {await resp.text()}")
        sse_url = (await resp.json())["sse_url"]
    async with session.get(url + sse_url, headers=auth) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                break
            event = json.loads(payload)
            if event["type"] == "token":
                first = first or time.perf_counter()
                parts.append(event["t"])
            elif event["type"] == "error":
                raise SystemExit(f"{url} answered an error: {event['message']}")
    total = time.perf_counter() - start
    return Run((first - start) * 1000, len(parts) / total, len(parts), "".join(parts))


def print_run_in_temp_home(run: Callable[[Path], Awaitable[dict]]) -> None:
    """Run a benchmark with its own RBEE_HOME in a temporary directory; print its JSON result line."""
    with tempfile.TemporaryDirectory(prefix="rbee-bench-") as tmp:
        print(json.dumps(asyncio.run(run(Path(tmp)))))


def paired(base_name: str, base: list[Run], other_name: str, other: list[Run]) -> dict[str, Any]:
    """Medians of both sides, and the ratio other/base as the median of each round's own ratio (the two
    sides of a round ran back to back, so drift of the machine's speed cancels out)."""
    return {
        f"{base_name}_tokens_per_s": round(statistics.median(r.tokens_per_s for r in base), 2),
        f"{other_name}_tokens_per_s": round(statistics.median(r.tokens_per_s for r in other), 2),
        "ratio": round(statistics.median(o.tokens_per_s / b.tokens_per_s for o, b in zip(other, base)), 4),
        f"{base_name}_ttft_ms": round(statistics.median(r.ttft_ms for r in base), 2),
        f"{other_name}_ttft_ms": round(statistics.median(r.ttft_ms for r in other), 2),
    }
