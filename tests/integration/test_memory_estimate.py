"""The memory estimate against a real worker: its resident memory on the built-in model at two context
sizes (4 slots each), after a short generation and at its peak after a prompt that fills most of a batch,
within 20 % of `estimate_worker_memory`. The model file is mmapped, so RSS counts its pages (all of them:
llama.cpp reads every tensor at load)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from hive.memory_estimate import MIB, MemoryEstimate, estimate_worker_memory
from shared.builtin_model import builtin_model_path
from shared.events import End
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.processes import Daemon, rss_mb, start_worker

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

SIZES = (512, 2048)
SLOTS = 4
TOLERANCE = 0.20
SHORT_PROMPT = "The capital of France is"
LONG_PROMPT = " ".join(f"word{i}" for i in range(135))  # about 430 tokens: one batch, fits a 512-token slot


@dataclass(frozen=True)
class Measured:
    estimate: MemoryEstimate
    loaded_mb: float
    after_short_mb: float  # after 8 tokens from a 5-token prompt
    peak_mb: float  # VmHWM after 8 more tokens from a 430-token prompt

    def __str__(self) -> str:
        return (f"--ctx-size {self.estimate.ctx_size} --parallel {self.estimate.slots}: estimate "
                f"{self.estimate.total / MIB:.1f} MiB ({self.estimate.describe()}); measured RSS loaded "
                f"{self.loaded_mb:.1f}, after a short generation {self.after_short_mb:.1f}, "
                f"peak {self.peak_mb:.1f} MiB")


def vm_mb(pid: int, field: str) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} reports no {field}")


async def generate(worker: Daemon, prompt: str) -> dict:
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        job = await client.submit(InferenceRequest(prompt=prompt, max_tokens=8, temperature=0))
        events = [e async for e in client.stream(job.job_id)]
    end = events[-1]
    assert isinstance(end, End) and end.state == "completed", events[-3:]
    return end.stats


def measure(home, ctx_size: int) -> Measured:
    # one llama.cpp thread: the same memory as more (checked with 2), and it leaves the other core alone
    worker = start_worker(home, "--ctx-size", str(ctx_size), "--parallel", str(SLOTS), "--threads", "1")
    try:
        pid = worker.proc.pid
        loaded = rss_mb(pid)
        stats = asyncio.run(generate(worker, SHORT_PROMPT))
        assert stats["tokens_out"] >= 1
        after_short = rss_mb(pid)
        stats = asyncio.run(generate(worker, LONG_PROMPT))
        assert 256 < stats["prompt_tokens"] < ctx_size - 8
        peak = vm_mb(pid, "VmHWM")
    finally:
        assert worker.stop() == 0
    return Measured(estimate_worker_memory(builtin_model_path(), ctx_size=ctx_size, slots=SLOTS), loaded,
                    after_short, peak)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[int, Measured]:
    home = tmp_path_factory.mktemp("memory-home")
    return {ctx: measure(home, ctx) for ctx in SIZES}


def off_by(estimate_mb: float, measured_mb: float) -> float:
    return abs(estimate_mb - measured_mb) / measured_mb


@pytest.mark.parametrize("ctx_size", SIZES)
def test_estimate_within_20_percent_after_a_short_generation(measured, ctx_size):
    m = measured[ctx_size]
    assert off_by(m.estimate.total / MIB, m.after_short_mb) <= TOLERANCE, str(m)


@pytest.mark.parametrize("ctx_size", SIZES)
def test_estimate_within_20_percent_of_the_peak_after_a_full_batch(measured, ctx_size):
    """Placement needs the peak: a long prompt touches the compute buffer a short one leaves alone."""
    m = measured[ctx_size]
    assert off_by(m.estimate.total / MIB, m.peak_mb) <= TOLERANCE, str(m)
    assert m.peak_mb >= m.after_short_mb


def test_what_a_larger_context_costs_is_its_kv_cache(measured):
    small, large = (measured[ctx] for ctx in SIZES)
    kv_mb = (large.estimate.kv_cache - small.estimate.kv_cache) / MIB  # 135 MiB
    assert off_by(kv_mb, large.loaded_mb - small.loaded_mb) <= 0.10, f"{small}\n{large}"
