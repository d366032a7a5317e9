"""Taking a worker or a hive out of service without dropping an answer (`rbee worker drain`, `rbee hive drain`).

A draining worker gets no new requests (its hive gets no new workers); the answers it is giving finish, or,
once the deadline passes, continue on another worker from the tokens they have (the continuation built for
failover: queen/inference.py); then it stops. Upgrades drain each hive the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from queen.errors import QueenError
from queen.hives import HiveRegistry
from queen.worker_registry import WorkerInfo, WorkerRegistry, WorkerStatus
from shared.errors import RbeeError
from shared.events import narrate
from shared.operations import WorkerDelete

MOVE_GRACE_S = 30.0  # after the deadline, how long the moved answers may take to leave the worker


class WorkerNotRunning(QueenError):
    title = "Worker not running"
    code = "WORKER_NOT_FOUND"
    status = 404


class Drainer:
    def __init__(self, hives: HiveRegistry, workers: WorkerRegistry) -> None:
        self.hives = hives
        self.workers = workers

    async def drain_worker(self, worker_id: str, deadline_s: float) -> dict[str, Any]:
        worker = self.workers.get(worker_id)
        if worker is None or not worker.alive:
            running = ", ".join(w.worker_id for w in self.workers.all() if w.alive) or "none"
            raise WorkerNotRunning(f"No running worker '{worker_id}' (running: {running}; `rbee status` lists them).")
        self._start(worker, deadline_s)
        done = await self._until_idle(worker, deadline_s)
        await self._stop(worker)
        return {"worker_id": worker.worker_id, "hive_id": worker.hive_id, **done, "state": "stopped"}

    async def drain_hive(self, alias: str, deadline_s: float) -> dict[str, Any]:
        hive = self.hives.get(alias)  # an unknown hive fails here, naming the known ones
        hive.draining = True
        try:
            workers = [w for w in self.workers.all() if w.hive_id == alias and w.alive]
            narrate("hive_drain", f"Draining hive {alias}: nothing new goes there; {len(workers)} worker(s) finish "
                                  f"their answers (at most {deadline_s:g} s, then they continue elsewhere)",
                    target=alias)
            for worker in workers:
                self._start(worker, deadline_s)
            done = await asyncio.gather(*(self._until_idle(w, deadline_s) for w in workers))
            await self.hives.stop(alias)
            self.workers.mark_hive(alias, WorkerStatus.STOPPED)
        finally:
            hive.draining = False  # stopped now (the local hive starts again on demand), or the drain failed
        return {"alias": alias, "workers": len(workers), "finished": sum(d["finished"] for d in done),
                "moved": sum(d["moved"] for d in done), "state": "stopped"}

    def _start(self, worker: WorkerInfo, deadline_s: float) -> None:
        worker.draining = True
        self.workers.notify()  # requests waiting for it look elsewhere
        narrate("worker_drain", f"Draining {worker.worker_id} on {worker.hive_id}: no new requests; "
                                f"{len(worker.leases)} answer(s) running", target=worker.worker_id)

    async def _until_idle(self, worker: WorkerInfo, deadline_s: float) -> dict[str, int]:
        """Wait for the worker's answers to end; past the deadline, have them continue elsewhere."""
        running = len(worker.leases)
        deadline = time.monotonic() + deadline_s
        while worker.leases and worker.alive and (left := deadline - time.monotonic()) > 0:
            await self.workers.wait_for_change(min(left, 1.0))
        moved = len(worker.leases) if worker.alive else 0
        if moved:
            narrate("worker_drain", f"{moved} answer(s) still running on {worker.worker_id} after {deadline_s:g} s: "
                                    "continuing them on another worker", target=worker.worker_id, level="warn")
            worker.move_out.set()
            grace = time.monotonic() + MOVE_GRACE_S
            while worker.leases and time.monotonic() < grace:
                await self.workers.wait_for_change(1.0)
        return {"finished": running - moved, "moved": moved}

    async def _stop(self, worker: WorkerInfo) -> None:
        narrate("worker_drain", f"Stopping {worker.worker_id} on {worker.hive_id}", target=worker.worker_id)
        try:
            await self.hives.forward(WorkerDelete(hive_id=worker.hive_id, id=worker.worker_id))
        except RbeeError as exc:
            if exc.status != 404:  # gone already (the idle reaper, a crash): drained all the same
                raise
        self.workers.forget(worker.worker_id)
