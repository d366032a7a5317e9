"""Fair share: when every slot is busy, waiting requests get slots round-robin across API keys, first come
first served within a key, so one key's burst cannot starve another (queen/fair_queue.py, in the
scheduler as the queen runs it)."""

from __future__ import annotations

import asyncio

from queen.fair_queue import FairQueue
from queen.worker_registry import WorkerRegistry
from shared.heartbeat import parse_heartbeat
from tests.unit.test_worker_registry import scheduler


def test_turns_go_round_robin_across_owners_and_in_order_within_one():
    queue = FairQueue()
    for k in range(3):
        queue.add(f"a{k}", "A")
    queue.add("b0", "B")
    queue.add("q0", None)  # the queen's own token is an owner too
    order = []
    while queue:
        job = queue.next()
        owner = {"a": "A", "b": "B", "q": None}[job[0]]
        order.append(job)
        queue.served(owner)
        queue.remove(job, owner)
    assert order == ["a0", "b0", "q0", "a1", "a2"]


def test_an_owner_holding_slots_waits_behind_one_holding_none():
    queue = FairQueue()
    for k in range(24):
        queue.add(f"a{k}", "A")
    queue.add("b0", "B")
    assert queue.next(lambda owner: 4 if owner == "A" else 0) == "b0"
    assert queue.next() == "a0"  # with nobody holding anything, the longest waiting goes first
    assert queue.ahead("a3", "A") == 3 + 1 and queue.ahead("b0", "B") == 1 and len(queue) == 25


async def test_with_24_of_key_a_waiting_then_1_of_key_b_b_gets_the_next_free_slot(tmp_path):
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    worker = registry.heartbeat(parse_heartbeat({"worker_id": "w", "hive_id": "localhost", "url": "http://x/w",
                                                 "model": "m", "state": "ready", "slots": 2}))
    sched = scheduler(tmp_path, registry)
    holding = [await sched.acquire("m", None, f"a-run{k}", owner="A") for k in range(2)]  # A's burst fills both
    assert holding == [worker, worker]
    waiting_a = [asyncio.create_task(sched.acquire("m", None, f"a{k}", owner="A")) for k in range(24)]
    await asyncio.sleep(0.01)
    waiting_b = asyncio.create_task(sched.acquire("m", None, "b0", owner="B"))
    await asyncio.sleep(0.01)
    assert sched.queued() == {"m": 25}
    registry.release(worker, "a-run0")
    await asyncio.wait_for(waiting_b, 5)
    assert "b0" in worker.leases and not any(t.done() for t in waiting_a)
    registry.release(worker, "a-run1")  # then A's, oldest first
    done, _ = await asyncio.wait(waiting_a, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert [t for t in waiting_a if t.done()] == [waiting_a[0]] and "a0" in worker.leases
    for task in waiting_a:
        task.cancel()
    await asyncio.gather(*waiting_a, return_exceptions=True)
    assert sched.queued() == {}


async def test_one_key_alone_is_first_come_first_served(tmp_path):
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    worker = registry.heartbeat(parse_heartbeat({"worker_id": "w", "hive_id": "localhost", "url": "http://x/w",
                                                 "model": "m", "state": "ready", "slots": 1}))
    sched = scheduler(tmp_path, registry)
    await sched.acquire("m", None, "first")
    later = [asyncio.create_task(sched.acquire("m", None, f"j{k}")) for k in range(3)]
    await asyncio.sleep(0.01)
    for k in range(3):
        registry.release(worker, next(iter(worker.leases)))
        await asyncio.wait_for(later[k], 5)
        assert worker.leases == {f"j{k}"}
