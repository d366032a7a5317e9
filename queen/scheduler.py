"""Finding a worker for a model: a free slot of a running one, else a new worker on a hive (downloading
the model first if needed), else wait for a slot to come free. Each step is narrated.

One model gets one worker per hive by default (`max_workers_per_hive`): its slots serve concurrent
requests in one batch, which beats two processes fighting over the same cores."""

from __future__ import annotations

import asyncio
from typing import Callable

from queen.config import QueenConfig
from queen.hives import HiveRegistry
from queen.placement import place
from queen.worker_registry import WorkerInfo, WorkerRegistry, WorkerStatus
from shared.events import narrate
from shared.operations import WorkerSpawn

DEAD = (WorkerStatus.LOST, WorkerStatus.CRASHED, WorkerStatus.FAILED, WorkerStatus.STOPPED)


class Scheduler:
    def __init__(self, config: QueenConfig, hives: HiveRegistry, workers: WorkerRegistry) -> None:
        self.config = config
        self.hives = hives
        self.workers = workers
        self._spawning: dict[tuple[str, str], asyncio.Lock] = {}

    async def acquire(self, model: str, hive_id: str | None, job_id: str,
                      waiting: Callable[[bool], None] = lambda _: None) -> WorkerInfo:
        """Lease a worker for `model` (on `hive_id` if given) to `job_id`; `waiting(True)` while every slot
        is busy, `waiting(False)` once one is had."""
        if hive_id is not None and not self.hives.get(hive_id).local:  # an unknown hive fails at once
            # A remote hive being (re)connected: its running workers are adopted first, not duplicated.
            await self.hives.ensure_running(hive_id)
        waiting_said = False
        while True:
            worker = self.workers.with_free_slot(model, hive_id)
            if worker is not None:
                self.workers.lease(worker, job_id)
                waiting(False)
                narrate("worker_found", f"Using warm worker {worker.worker_id} on {worker.hive_id} (slot "
                                        f"{len(worker.leases)} of {worker.slots})", target=worker.worker_id)
                return worker
            room = [h for h in ([hive_id] if hive_id else self.hives.schedulable())
                    if self.workers.count_alive(model, h) < self.config.max_workers_per_hive]
            lock = self._spawning.setdefault((hive_id or "*", model), asyncio.Lock())
            if room and not lock.locked():
                async with lock:
                    waiting(False)
                    target = hive_id or (room[0] if len(room) == 1 else await place(self.hives, self.workers, model, room))
                    worker = await self._spawn(model, target)
                    self.workers.lease(worker, job_id)  # no await between spawn and lease: nobody steals it
                    return worker
            if not waiting_said:
                narrate("worker_wait", f"Every slot for {model} on {hive_id or 'every hive'} is busy; waiting for one",
                        target=model)
                waiting_said = True
                waiting(True)
            await self.workers.wait_for_change(1.0)

    async def _spawn(self, model: str, hive_id: str) -> WorkerInfo:
        narrate("schedule", f"No worker with a free slot has {model}; spawning one on {hive_id}", target=hive_id)
        await self._stop_dead_workers(hive_id)
        result = await self.hives.forward(WorkerSpawn(hive_id=hive_id, model=model))
        # Its ready heartbeat may have arrived already; `add` keeps that record then.
        url = await self.hives.worker_url(hive_id, str(result["url"]))
        return self.workers.add(str(result["worker_id"]), hive_id, url, model,
                                int(result.get("slots") or 1))

    async def _stop_dead_workers(self, hive_id: str) -> None:
        """Workers the queen gave up on (silent, crashed, stopped) are stopped on their hive first."""
        for dead in [w for w in self.workers.all() if w.hive_id == hive_id and w.state in DEAD]:
            narrate("worker_cleanup", f"Stopping {dead.worker_id} ({dead.state}) before starting another",
                    target=dead.worker_id, level="warn")
            self.workers.forget(dead.worker_id)
            await self.hives.ask_to_stop_worker(hive_id, dead.worker_id)
