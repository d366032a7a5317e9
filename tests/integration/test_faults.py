"""Faults while several answers stream: SIGKILL, SIGTERM or SIGSTOP of a worker, the hive or the queen,
after a (seeded) random number of streamed tokens.
Every client gets its end or a clear error within 30 s, nothing is left running, and the next request
succeeds (through a new queen where the old one was killed)."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest

from shared.errors import RbeeError
from shared.events import End, Error, Token
from shared.job_client import JobClient
from shared.operations import Infer
from tests.support.processes import children_of, pid_alive, start_queen
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
CLIENTS = 3
SAY_WITHIN_S = 30

# What a client is told, by fault: the error codes a stream may end with (None: it may complete too).
EXPECTED = {
    ("worker", signal.SIGKILL): {None},  # each answer goes on on a new worker from its tokens so far (#16)
    ("worker", signal.SIGTERM): {"WORKER_STOPPED"},
    ("worker", signal.SIGSTOP): {"WORKER_HUNG"},
    ("hive", signal.SIGKILL): {"WORKER_STOPPED", "WORKER_CRASHED", None},  # None: continued on a new hive
    ("hive", signal.SIGTERM): {"WORKER_STOPPED", "WORKER_CRASHED"},
    ("hive", signal.SIGSTOP): {None},  # workers answer the queen directly: the answers complete
    ("queen", signal.SIGKILL): {"SERVER_UNREACHABLE"},
    ("queen", signal.SIGTERM): {"CANCELLED", "SERVER_UNREACHABLE"},
    ("queen", signal.SIGSTOP): {"TIMEOUT"},  # then it is continued, and answers the next request
}


async def follow(client: JobClient, job_id: str, seen: list[int], started: asyncio.Event) -> str | None:
    """The error code the stream ended with (None: completed); `seen` counts every stream's tokens."""
    error = None
    try:
        async for event in client.stream(job_id):
            if isinstance(event, Token):
                seen[0] += 1
                if seen[0] >= seen[1]:
                    started.set()
            elif isinstance(event, Error):
                error = event.code
            elif isinstance(event, End):
                return None if event.state == "completed" else (error or event.state.value.upper())
    except RbeeError as exc:  # the queen itself went away
        return exc.code
    return error or "NO_END"


@pytest.mark.parametrize("target, sig", list(EXPECTED), ids=[f"{t}-{s.name}" for t, s in EXPECTED])
async def test_a_fault_mid_stream_is_told_and_survived(tmp_path, target, sig):
    home = tmp_path / "home"
    queen = await asyncio.to_thread(start_queen, home, "--worker-progress-timeout", "12")
    descendants: set[int] = set()
    stopped: list[int] = []
    try:
        async with JobClient(queen.url, queen.token) as client:  # the keeper's own timeouts
            await client.submit(Infer(prompt="Hello", max_tokens=2))  # warm up while we look
            await until(lambda: len(children_of(queen.proc.pid)) >= 2, timeout=60, what="a hive and a worker")
            jobs = [await client.submit(Infer(prompt=COUNTING, max_tokens=300, temperature=0)) for _ in range(CLIENTS)]
            started = asyncio.Event()
            seen = [0, random.Random(f"{target}-{sig}").randint(1, 60)]  # strike after this many tokens in all
            streams = [asyncio.create_task(follow(client, j.job_id, seen, started)) for j in jobs]
            await asyncio.wait_for(started.wait(), 60)
            hive_pid = next(p for p in children_of(queen.proc.pid) if "hive.main" in _cmdline(p))
            worker_pid = next(p for p in children_of(hive_pid) if "worker.main" in _cmdline(p))
            descendants = set(children_of(queen.proc.pid))
            victim = {"worker": worker_pid, "hive": hive_pid, "queen": queen.proc.pid}[target]
            os.kill(victim, sig)
            if sig == signal.SIGSTOP:
                stopped.append(victim)
            outcomes = await asyncio.wait_for(asyncio.gather(*streams), SAY_WITHIN_S)
            assert set(outcomes) <= EXPECTED[(target, sig)] | {None}, outcomes
            assert any(o is not None for o in outcomes) or None in EXPECTED[(target, sig)]
        if target == "queen" and sig == signal.SIGSTOP:
            os.kill(queen.proc.pid, signal.SIGCONT)
            stopped.clear()
        elif target == "queen":  # the user's next `rbee` wakes a new queen
            await asyncio.to_thread(queen.proc.wait, 30)
            await until(lambda: not any(pid_alive(p) for p in descendants), timeout=30,
                        what="the killed queen's hive and workers to exit")
            queen = await asyncio.to_thread(start_queen, home)
        async with JobClient(queen.url, queen.token) as client:
            job = await client.submit(Infer(prompt="The capital of France is", max_tokens=4, temperature=0))
            events = [e async for e in client.stream(job.job_id)]
            assert events[-1].state == "completed", [e for e in events if isinstance(e, Error)]
    finally:
        for pid in stopped:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
        descendants |= set(children_of(queen.proc.pid))
        await asyncio.to_thread(queen.stop, 30)
    await until(lambda: not any(pid_alive(p) for p in descendants), timeout=30, what="no orphan process left")


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""
