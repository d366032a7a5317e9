"""Cache-aware routing against prefix-blind routing, in one run: two warm workers of the built-in model on
two hives (the queen's own and one over a loopback sshd: tests/support/two_hives.py; needs sshd), and 8
conversations of 6 turns each about a document of ~1,150 tokens given in turn 1 (each turn then a short
question; the history grows to ~1,400 tokens), the 8 next turns sent at once each time (interleaved). The same conversations go through a queen that routes by cache and one
started with --no-cache-routing (load alone), alternating by round. Reported per mode: the cache hit rate
of turns 2-6 (a worker reused 32 or more prompt tokens), median and p90 time to first token of turns 2-6,
and tokens/s over the whole workload. The last line printed is one JSON object.

    .venv/bin/python bench/multiturn_cluster.py [--rounds 1] [--conversations 8] [--turns 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_run_in_temp_home  # noqa: E402
from shared.events import Error, Token  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from shared.operations import Infer, WorkerSpawn  # noqa: E402
from tests.support.two_hives import SECOND, start_two_hives  # noqa: E402

HIT_TOKENS = 32
MAX_TOKENS = 16


def document(conversation: int) -> str:
    """About 1,150 tokens of facts, unique to the conversation from its first words: what turn 1 asks the
    model to remember, and what every later turn carries as history."""
    return " ".join(f"In conversation {conversation}, fact {k}: {k} times {conversation + 3} is "
                    f"{k * (conversation + 3)}." for k in range(1, 61))


QUESTIONS = ["What is fact 7?", "And fact 12?", "And fact 30?", "And fact 45?", "And fact 58?"]


async def one_turn(client: JobClient, history: tuple) -> dict:
    started = time.perf_counter()
    job = await client.submit(Infer(messages=history, max_tokens=MAX_TOKENS, temperature=0))
    first = None
    async for event in client.stream(job.job_id):
        if isinstance(event, Token) and first is None:
            first = time.perf_counter()
        if isinstance(event, Error):
            raise SystemExit(f"a turn failed: {event.message}")
    stats = dict(event.stats)  # the End event's
    return {"ttft_ms": ((first or time.perf_counter()) - started) * 1000, "reused": stats.get("prompt_tokens_reused")
            or 0, "prompt": stats.get("prompt_tokens") or 0, "tokens": stats.get("tokens_out") or 0,
            "text": stats.get("text") or "", "worker": stats.get("worker_id")}


def machine_cores(shared: bool) -> tuple[set[int], set[int]] | None:
    """This machine's cores split in two, one half per hive, as two machines have theirs (None: shared, or
    fewer than two cores): otherwise both hives' llama.cpp thread pools, each as wide as the machine, fight
    over the same cores, and every figure measures that fight (turns of 70 s) rather than the routing."""
    cores = sorted(os.sched_getaffinity(0))
    if shared or len(cores) < 2:
        return None
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


async def workload(home: Path, routing: bool, conversations: int, turns: int, tag: str,
                   cpus: tuple[set[int], set[int]] | None) -> dict:
    setup = await asyncio.to_thread(start_two_hives, home, *(() if routing else ("--no-cache-routing",)), cpus=cpus)
    try:
        async with JobClient(setup.queen.url, setup.queen.token, request_timeout=600) as client:
            for hive_id in ("localhost", SECOND):
                job = await client.submit(WorkerSpawn(hive_id=hive_id))
                async for _ in client.stream(job.job_id):
                    pass
            histories = [(("system", f"Conversation {tag}-{c}. You are a careful assistant who remembers facts."),
                          ("user", f"Remember these facts. {document(c)}"), ("assistant", "I have noted them."))
                         for c in range(conversations)]
            later: list[dict] = []
            tokens, began = 0, time.perf_counter()
            for turn in range(turns):
                histories = [h + (("user", QUESTIONS[(turn - 1) % len(QUESTIONS)] if turn else "Ready?"),)
                             for h in histories]
                answers = await asyncio.gather(*(one_turn(client, h) for h in histories))
                histories = [h + (("assistant", a["text"]),) for h, a in zip(histories, answers)]
                tokens += sum(a["tokens"] for a in answers)
                if turn:
                    later += answers
                print(f"  {'cache' if routing else 'blind'} turn {turn + 1}: prompts ~{answers[0]['prompt']} tokens, "
                      f"hits {sum(a['reused'] >= HIT_TOKENS for a in answers)}/{len(answers)}, median reused "
                      f"{statistics.median(a['reused'] for a in answers):.0f}, median TTFT "
                      f"{statistics.median(a['ttft_ms'] for a in answers):.0f} ms", file=sys.stderr)
            elapsed = time.perf_counter() - began
        ttfts = sorted(a["ttft_ms"] for a in later)
        return {"hit_rate": round(sum(a["reused"] >= HIT_TOKENS for a in later) / len(later), 3),
                "ttft_ms_median": round(statistics.median(ttfts), 1),
                "ttft_ms_p90": round(ttfts[int(0.9 * (len(ttfts) - 1))], 1),
                "tokens_per_s": round(tokens / elapsed, 2), "last_prompt_tokens": later[-1]["prompt"]}
    finally:
        await asyncio.to_thread(setup.stop)


async def run(home: Path, rounds: int, conversations: int, turns: int, shared: bool) -> dict:
    cpus = machine_cores(shared)
    results: dict[str, list[dict]] = {"cache": [], "blind": []}
    for r in range(rounds):
        for mode in (("cache", "blind") if r % 2 == 0 else ("blind", "cache")):  # alternating: drift cancels out
            sub = home / f"{mode}-{r}"
            sub.mkdir()
            results[mode].append(await workload(sub, mode == "cache", conversations, turns, f"{mode}{r}", cpus))

    def med(mode: str, key: str) -> float:
        return round(statistics.median(x[key] for x in results[mode]), 3)

    out: dict = {"bench": "multiturn_cluster", "rounds": rounds, "conversations": conversations, "turns": turns,
                 "cores_per_hive": "shared" if cpus is None else [len(c) for c in cpus]}
    for mode in results:
        out.update({f"{mode}_{key}": med(mode, key) for key in ("hit_rate", "ttft_ms_median", "ttft_ms_p90",
                                                                  "tokens_per_s", "last_prompt_tokens")})
    out["ttft_median_blind_over_cache"] = round(out["blind_ttft_ms_median"] / out["cache_ttft_ms_median"], 2)
    out["tokens_per_s_cache_over_blind"] = round(out["cache_tokens_per_s"] / out["blind_tokens_per_s"], 3)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--shared-cores", action="store_true",
                        help="let both hives use every core (by default each gets half, as two machines would)")
    args = parser.parse_args()
    print_run_in_temp_home(lambda home: run(home, args.rounds, args.conversations, args.turns, args.shared_cores))
