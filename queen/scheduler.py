"""Finding a worker for a model: a warm idle one, else a new one on a hive (downloading the model first
if needed), else wait for one to come free. Each step is narrated."""

from __future__ import annotations

import asyncio

from queen.config import QueenConfig
from queen.hives import HiveRegistry
from queen.worker_registry import WorkerInfo, WorkerRegistry
from shared.events import narrate
from shared.operations import LOCAL_HIVE, WorkerSpawn


class Scheduler:
    def __init__(self, config: QueenConfig, hives: HiveRegistry, workers: WorkerRegistry) -> None:
        self.config = config
        self.hives = hives
        self.workers = workers
        self._spawning: dict[tuple[str, str], asyncio.Lock] = {}

    async def acquire(self, model: str, hive_id: str | None, job_id: str) -> WorkerInfo:
        """Lease a worker for `model` (on `hive_id` if given) to `job_id`."""
        target = hive_id or LOCAL_HIVE
        self.hives.get(target)  # an unknown hive fails before anything starts
        waiting_said = False
        while True:
            worker = self.workers.idle(model, hive_id)
            if worker is not None:
                self.workers.lease(worker, job_id)
                narrate("worker_found", f"Using warm worker {worker.worker_id} on {worker.hive_id}",
                        target=worker.worker_id)
                return worker
            lock = self._spawning.setdefault((target, model), asyncio.Lock())
            if not lock.locked() and self.workers.count_alive(model, target) < self.config.max_workers_per_hive:
                async with lock:
                    worker = await self._spawn(model, target)
                    self.workers.lease(worker, job_id)  # no await between spawn and lease: nobody steals it
                    return worker
            if not waiting_said:
                narrate("worker_wait", f"Every worker for {model} on {target} is busy; waiting for one",
                        target=model)
                waiting_said = True
            await self.workers.wait_for_change(1.0)

    async def _spawn(self, model: str, hive_id: str) -> WorkerInfo:
        narrate("schedule", f"No idle worker has {model}; spawning one on {hive_id}", target=hive_id)
        result = await self.hives.forward(WorkerSpawn(hive_id=hive_id, model=model))
        # Its ready heartbeat may have arrived already; `add` keeps that record then.
        return self.workers.add(str(result["worker_id"]), hive_id, str(result["url"]), model)
