"""The queen's view of workers (heartbeats, leases, lost) and the scheduler's use of it, without processes."""

from __future__ import annotations

import asyncio
import time

import pytest

from queen.config import QueenConfig
from queen.errors import UnknownHive
from queen.hives import HiveRegistry
from queen.scheduler import Scheduler
from queen.worker_registry import WorkerRegistry, WorkerStatus, on_device
from shared.errors import InvalidRequest
from shared.heartbeat import EngineState, Heartbeat, parse_heartbeat


def beat(worker_id: str = "w1", state: str = "ready", model: str = "smollm2-135m", hive_id: str = "localhost"):
    return parse_heartbeat({"worker_id": worker_id, "hive_id": hive_id, "url": f"http://127.0.0.1:1/{worker_id}",
                            "model": model, "state": state, "pid": 42, "queue_depth": 0})


def test_heartbeat_registers_and_updates():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    worker = registry.heartbeat(beat(state="loading"))
    assert worker.state is WorkerStatus.LOADING and worker.hive_id == "localhost" and worker.pid == 42
    registry.heartbeat(beat(state="busy"))
    assert registry.get("w1").state is WorkerStatus.BUSY and len(registry.all()) == 1


@pytest.mark.parametrize("payload, field", [
    ({"worker_id": "w", "url": "http://x", "model": "m", "state": "ready"}, "hive_id"),
    ({"worker_id": "w", "hive_id": "h", "url": "http://x", "model": "m", "state": "ready", "queue_depth": "abc"},
     "queue_depth"),
    ({"worker_id": "w", "hive_id": "h", "url": "http://x", "model": "m", "state": "sleeping"}, "state"),
    ({"worker_id": "", "hive_id": "h", "url": "http://x", "model": "m", "state": "ready"}, "worker_id"),
])
def test_malformed_heartbeats_are_refused_whole(payload, field):
    with pytest.raises(InvalidRequest) as err:
        parse_heartbeat(payload)
    assert err.value.field == field and err.value.status == 400


def test_a_newer_workers_heartbeat_with_fields_unknown_here_still_registers_it():
    hb = parse_heartbeat({"worker_id": "w", "hive_id": "h", "url": "http://x", "model": "m", "state": "ready",
                          "protocol": 1, "told_by_a_newer_rbee": {"x": 1}})
    assert hb.worker_id == "w" and hb.protocol == 1


def test_heartbeat_round_trips():
    hb = Heartbeat(worker_id="w", hive_id="h", url="http://x", model="m", state=EngineState.BUSY, pid=7,
                   queue_depth=2, device="cuda:0")
    assert parse_heartbeat(hb.to_dict()) == hb and hb.to_dict()["state"] == "busy"


def test_a_silent_worker_reads_as_lost_without_anyone_changing_it():
    registry = WorkerRegistry(heartbeat_timeout_s=0.05)
    worker = registry.heartbeat(beat())
    assert registry.with_free_slot("smollm2-135m", None) is worker
    worker.last_seen = time.monotonic() - 1  # as if its last heartbeat came a second ago
    assert worker.state is WorkerStatus.LOST and worker.reported is WorkerStatus.READY  # read, not written
    assert registry.with_free_slot("smollm2-135m", None) is None
    assert registry.count_alive("smollm2-135m", "localhost") == 0
    registry.heartbeat(beat())  # it speaks again: schedulable again
    assert registry.with_free_slot("smollm2-135m", None) is worker


def test_crashed_workers_come_back_only_when_ready_again():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    registry.heartbeat(beat())
    registry.mark("w1", WorkerStatus.CRASHED)
    registry.heartbeat(beat(state="busy"))
    assert registry.get("w1").state is WorkerStatus.CRASHED
    registry.heartbeat(beat(state="ready"))
    assert registry.get("w1").state is WorkerStatus.READY


def test_a_free_slot_goes_to_the_least_recently_used_and_respects_hive_and_leases():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    a, b = registry.heartbeat(beat("a")), registry.heartbeat(beat("b", hive_id="gpu1"))
    a.last_used, b.last_used = 10.0, 5.0
    assert registry.with_free_slot("smollm2-135m", None) is b
    assert registry.with_free_slot("smollm2-135m", "localhost") is a
    registry.lease(b, "job-1")
    assert registry.with_free_slot("smollm2-135m", None) is a
    registry.lease(a, "job-2")
    assert registry.with_free_slot("smollm2-135m", None) is None
    assert registry.with_free_slot("other-model", None) is None
    registry.release(b, "job-1")
    assert not b.leases and registry.with_free_slot("smollm2-135m", None) is b


def test_marking_a_hive_stops_its_workers_only():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    registry.heartbeat(beat("a"))
    registry.heartbeat(beat("b", hive_id="gpu1"))
    registry.mark_hive("gpu1", WorkerStatus.STOPPED)
    assert registry.get("a").alive and registry.get("b").state is WorkerStatus.STOPPED


def scheduler(tmp_path, registry: WorkerRegistry) -> Scheduler:
    config = QueenConfig(max_workers_per_hive=1)
    hives = HiveRegistry(config, clients=None, queen_url=lambda: "http://127.0.0.1:1", workers=registry)  # type: ignore[arg-type]
    return Scheduler(config, hives, registry)


async def test_scheduler_leases_a_warm_worker_and_the_next_job_waits_for_its_release(tmp_path):
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    worker = registry.heartbeat(beat())
    sched = scheduler(tmp_path, registry)
    first = await sched.acquire("smollm2-135m", None, "job-1")
    assert first is worker and worker.leases == {"job-1"}
    second = asyncio.create_task(sched.acquire("smollm2-135m", None, "job-2"))
    await asyncio.sleep(0)  # one turn of the loop: it finds every worker busy (the limit of 1 forbids a spawn)
    assert not second.done()
    registry.release(worker, "job-1")
    assert await asyncio.wait_for(second, 5) is worker and worker.leases == {"job-2"}


async def test_scheduler_refuses_an_unknown_hive_before_anything_starts(tmp_path):
    sched = scheduler(tmp_path, WorkerRegistry(heartbeat_timeout_s=15))
    with pytest.raises(UnknownHive, match="Unknown hive 'nowhere'"):
        await sched.acquire("smollm2-135m", "nowhere", "job-1")


def test_slots_take_several_leases_and_the_least_loaded_worker_goes_first():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    a = registry.heartbeat(parse_heartbeat({"worker_id": "a", "hive_id": "localhost", "url": "http://x/a",
                                            "model": "m", "state": "ready", "slots": 2}))
    b = registry.heartbeat(parse_heartbeat({"worker_id": "b", "hive_id": "gpu1", "url": "http://x/b",
                                            "model": "m", "state": "ready", "slots": 2}))
    a.last_used, b.last_used = 1.0, 2.0
    for job in ("j1", "j2", "j3", "j4"):
        registry.lease(registry.with_free_slot("m", None), job)
    assert a.leases == {"j1", "j3"} and b.leases == {"j2", "j4"}
    assert registry.with_free_slot("m", None) is None and a.to_dict()["slots_busy"] == 2
    registry.release(b, "j4")
    assert registry.with_free_slot("m", None) is b and not a.idle


def test_embedding_workers_are_told_apart_and_never_given_generation():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    embedder = registry.heartbeat(parse_heartbeat({**beat("e1").to_dict(), "embedding": True}))
    assert embedder.embedding and embedder.to_dict()["embedding"] is True
    assert registry.with_free_slot("smollm2-135m", None) is None  # generation: none of its kind yet
    assert registry.with_free_slot("smollm2-135m", None, embedding=True) is embedder
    generator = registry.heartbeat(beat("g1"))
    assert registry.with_free_slot("smollm2-135m", None) is generator
    assert registry.count_alive("smollm2-135m", "localhost") == 1
    assert registry.count_alive("smollm2-135m", "localhost", embedding=True) == 1
    with pytest.raises(InvalidRequest):
        parse_heartbeat({**beat("e2").to_dict(), "embedding": "yes"})


@pytest.mark.parametrize("worker_device, wanted, serves", [
    ("cpu", "auto", True), ("cuda:0", "auto", True),
    ("cpu", "cpu", True), ("cuda:0", "cpu", False),
    ("cuda:1", "cuda:1", True), ("cuda:1", "cuda:0", False), ("cpu", "cuda:0", False),
    ("cuda:0,1", "cuda:1", True), ("cuda:10", "cuda:1", False),
])
def test_a_request_naming_a_device_uses_only_workers_there(worker_device, wanted, serves):
    assert on_device(worker_device, wanted) is serves
