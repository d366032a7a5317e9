"""What the benchmarks share: the prompt every side generates from, and the in-process baseline."""

from __future__ import annotations

import time
from typing import NamedTuple

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
