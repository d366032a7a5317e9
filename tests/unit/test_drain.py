"""Draining (queen/drain.py) on the queen's real registries, without processes: a draining worker takes nothing
new, its answers finish or, past the deadline, are told to move; a generation told so raises WorkerDrained."""

from __future__ import annotations

import asyncio

import pytest

from queen.config import QueenConfig
from queen.drain import Drainer, WorkerNotRunning
from queen.errors import HiveUnavailable, WorkerDrained
from queen.hives import HiveRegistry
from queen.inference import InferenceRunner
from queen.scheduler import Scheduler
from queen.worker_registry import WorkerRegistry
from shared.heartbeat import parse_heartbeat


def beat(worker_id: str, hive_id: str = "localhost") -> dict:
    return {"worker_id": worker_id, "hive_id": hive_id, "url": f"http://127.0.0.1:1/{worker_id}",
            "model": "m", "state": "ready", "slots": 4}


@pytest.fixture
def registries(tmp_path):
    workers = WorkerRegistry(heartbeat_timeout_s=15)
    config = QueenConfig(max_workers_per_hive=1)
    hives = HiveRegistry(config, clients=None, queen_url=lambda: "http://127.0.0.1:1", workers=workers)  # type: ignore[arg-type]
    return workers, hives, Scheduler(config, hives, workers)


async def test_a_draining_worker_takes_nothing_new_and_makes_room_for_another(registries):
    workers, hives, _ = registries
    worker = workers.heartbeat(parse_heartbeat(beat("w1")))
    drainer = Drainer(hives, workers)
    drainer._start(worker, 5)
    assert worker.free_slots == 0 and workers.with_free_slot("m", None) is None
    assert workers.count_alive("m", "localhost") == 0  # another may be started in its place
    assert worker.to_dict()["state"] == "draining"


async def test_answers_that_end_in_time_finish_there(registries):
    workers, hives, _ = registries
    worker = workers.heartbeat(parse_heartbeat(beat("w1")))
    workers.lease(worker, "job-1")
    drainer = Drainer(hives, workers)
    drainer._start(worker, 5)
    asyncio.get_running_loop().call_later(0.05, workers.release, worker, "job-1")
    assert await drainer._until_idle(worker, 5) == {"finished": 1, "moved": 0}
    assert not worker.move_out.is_set()


async def test_past_the_deadline_a_generation_is_told_to_move_on(registries):
    workers, hives, _ = registries
    worker = workers.heartbeat(parse_heartbeat(beat("w1")))
    workers.lease(worker, "job-1")
    cancelled = asyncio.Event()

    async def generating() -> dict:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()  # the generation on the drained worker is cancelled (and with it the worker's job)
        return {}

    async def answer() -> None:
        try:
            await InferenceRunner._unless_moved(worker, generating())
        finally:
            workers.release(worker, "job-1")  # as _infer's finally does

    task = asyncio.create_task(answer())
    drainer = Drainer(hives, workers)
    drainer._start(worker, 0.1)
    assert await drainer._until_idle(worker, 0.1) == {"finished": 0, "moved": 1}
    with pytest.raises(WorkerDrained, match="Worker w1 on hive localhost is being drained and its deadline passed"):
        await task
    assert cancelled.is_set() and not worker.leases


async def test_a_generation_that_ends_first_is_unaffected_and_a_cancel_still_cancels(registries):
    workers, _, _ = registries
    worker = workers.heartbeat(parse_heartbeat(beat("w1")))

    async def quick() -> dict:
        return {"tokens_out": 3}

    assert await InferenceRunner._unless_moved(worker, quick()) == {"tokens_out": 3}
    stopped = asyncio.Event()

    async def slow() -> dict:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()
        return {}

    task = asyncio.create_task(InferenceRunner._unless_moved(worker, slow()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped.is_set()


async def test_draining_an_unknown_worker_or_asking_a_draining_hive_is_refused(registries):
    workers, hives, scheduler = registries
    workers.heartbeat(parse_heartbeat(beat("w1")))
    with pytest.raises(WorkerNotRunning, match=r"No running worker 'w9' \(running: w1"):
        await Drainer(hives, workers).drain_worker("w9", 1)
    hives.get("localhost").draining = True
    assert "localhost" not in hives.schedulable()
    assert hives.get("localhost").to_dict()["state"] == "draining"
    with pytest.raises(HiveUnavailable, match="Hive localhost is draining"):
        await scheduler.acquire("m", "localhost", "job-1")


async def test_room_is_coming_while_a_worker_drains_or_just_stopped(registries):
    workers, hives, scheduler = registries
    worker = workers.heartbeat(parse_heartbeat(beat("w1")))
    assert not scheduler._room_coming(["localhost"])
    Drainer(hives, workers)._start(worker, 5)
    assert scheduler._room_coming(["localhost"]) and not scheduler._room_coming(["gpu1"])
    workers.forget("w1")  # stopped: its hive may count its cores a moment longer
    assert scheduler._room_coming(["localhost"])
    workers.gone_at["localhost"] -= 60
    assert not scheduler._room_coming(["localhost"])
