"""Speculative decoding by n-gram lookup (worker/ngram.py): one stream at temperature 0, on two worker
processes of the built-in model side by side, one guessing (the default) and one with --draft-max 0.
Two prompts: "repeat this passage with one change" (the answer copies its prompt: guesses are kept) and
free text (few are). Each round sends each prompt to one worker, then the other (the order alternates by
round); tokens/s is the answer's tokens over the time from sending the request to its end. The texts of
both sides must be identical. The last line printed is one JSON object.

    .venv/bin/python bench/speculative.py [--rounds 5] [--max-tokens 160]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.events import End, Token  # noqa: E402
from shared.inference import InferenceRequest  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from tests.support.passages import FREE, REPEAT  # noqa: E402
from tests.support.processes import start_worker  # noqa: E402


async def answer(worker, messages, max_tokens: int) -> tuple[float, str, dict]:
    """(tokens/s from sending to the end, text, end stats) of one streamed answer."""
    request = InferenceRequest(messages=[(m["role"], m["content"]) for m in messages], max_tokens=max_tokens,
                               temperature=0)
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        start = time.perf_counter()
        job = await client.submit(request)
        events = [e async for e in client.stream(job.job_id)]
        elapsed = time.perf_counter() - start
    end = events[-1]
    if not isinstance(end, End) or end.state != "completed":
        raise SystemExit(f"a generation failed: {end}")
    return end.stats["tokens_out"] / elapsed, "".join(e.t for e in events if isinstance(e, Token)), dict(end.stats)


async def measure(home: Path, rounds: int, max_tokens: int) -> dict:
    guessing = await asyncio.to_thread(start_worker, home / "guessing")
    plain = await asyncio.to_thread(start_worker, home / "plain", "--draft-max", "0")
    sides = {"guessing": guessing, "plain": plain}
    result: dict = {}
    try:
        for name, messages in (("repeat", REPEAT), ("free", FREE)):
            for worker in sides.values():  # warm: the prompt's cache, the first decode
                await answer(worker, messages, 8)
            runs: dict[str, list[tuple[float, str, dict]]] = {"guessing": [], "plain": []}
            for r in range(rounds):
                for side in (["plain", "guessing"] if r % 2 == 0 else ["guessing", "plain"]):
                    runs[side].append(await answer(sides[side], messages, max_tokens))
                print(f"{name} round {r + 1}: guessing {runs['guessing'][-1][0]:6.1f} tok/s | "
                      f"plain {runs['plain'][-1][0]:6.1f} tok/s", file=sys.stderr)
            last = runs["guessing"][-1][2]
            result[name] = {
                "guessing_tokens_per_s": round(statistics.median(t for t, _, _ in runs["guessing"]), 1),
                "plain_tokens_per_s": round(statistics.median(t for t, _, _ in runs["plain"]), 1),
                "ratio": round(statistics.median(g[0] / p[0] for g, p in zip(runs["guessing"], runs["plain"])), 3),
                "identical_texts": all(g[1] == p[1] for g, p in zip(runs["guessing"], runs["plain"])),
                "tokens": last["tokens_out"],
                "guessed": last.get("draft_tokens", 0), "kept": last.get("draft_tokens_accepted", 0),
            }
    finally:
        for worker in sides.values():
            await asyncio.to_thread(worker.stop)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rbee-bench-") as tmp:
        result = asyncio.run(measure(Path(tmp), args.rounds, args.max_tokens))
    print(f"{'prompt':>7} | {'guessing tok/s':>14} | {'plain tok/s':>11} | {'ratio':>5} | identical | guessed/kept")
    for name, r in result.items():
        print(f"{name:>7} | {r['guessing_tokens_per_s']:>14} | {r['plain_tokens_per_s']:>11} | {r['ratio']:>5} | "
              f"{str(r['identical_texts']):>9} | {r['guessed']}/{r['kept']} of {r['tokens']} tokens")
    print(json.dumps({"bench": "speculative", "rounds": args.rounds, "max_tokens": args.max_tokens, **result}))


if __name__ == "__main__":
    main()
