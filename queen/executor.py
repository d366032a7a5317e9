"""The queen's operations: status, hives, forwarding of worker_*/model_* to hives, and infer."""

from __future__ import annotations

from typing import Any

import aiohttp

from queen.errors import QueenError
from queen.forwarding import forward
from queen.hives import HiveRegistry
from queen.inference import InferenceRunner
from queen.worker_registry import WorkerRegistry
from shared.events import Data, emit
from shared.job_registry import Job, JobRegistry
from shared.operations import (
    HIVE_OPERATIONS, HiveGet, HiveList, HiveRefreshCapabilities, HiveStart, HiveStatus, HiveStop, Infer,
    Operation, Status, WorkerDelete,
)


class QueenExecutor:
    def __init__(self, hives: HiveRegistry, workers: WorkerRegistry, runner: InferenceRunner,
                 session: aiohttp.ClientSession, token: str, jobs: JobRegistry) -> None:
        self.hives = hives
        self.workers = workers
        self.runner = runner
        self._session = session
        self._token = token
        self._jobs = jobs

    async def __call__(self, op: Operation, job: Job) -> dict[str, Any] | None:
        if isinstance(op, Infer):
            return await self.runner.infer(op, job)
        if op.name in HIVE_OPERATIONS:
            hive_id = op.hive_id  # type: ignore[attr-defined]
            url = await self.hives.ensure_running(hive_id)
            result = await forward(self._session, url, self._token, op)
            if isinstance(op, WorkerDelete):
                self.workers.forget(op.id)
            return result or None
        if isinstance(op, Status):
            emit(Data(action="status", payload=await self.status()))
            return None
        if isinstance(op, HiveList):
            emit(Data(action="hive_list", payload={"hives": [await self.hives.status(h.alias)
                                                             for h in self.hives.all()]}))
            return None
        if isinstance(op, (HiveGet, HiveStatus)):
            info = await self.hives.status(op.alias)
            info["workers"] = [w.to_dict() for w in self.workers.all() if w.hive_id == op.alias]
            emit(Data(action=op.name, payload=info))
            return None
        if isinstance(op, HiveStart):
            hive = await self.hives.start(op.alias)
            emit(Data(action="hive_start", payload=hive.to_dict()))
            return None
        if isinstance(op, HiveStop):
            hive = await self.hives.stop(op.alias)
            for worker in self.workers.all():
                if worker.hive_id == op.alias:
                    self.workers.mark(worker.worker_id, "stopped")
            emit(Data(action="hive_stop", payload=hive.to_dict()))
            return None
        if isinstance(op, HiveRefreshCapabilities):
            emit(Data(action="hive_refresh_capabilities", payload=await self.hives.refresh_capabilities(op.alias)))
            return None
        self.hives.get(getattr(op, "alias", "localhost"))  # unknown alias first: the clearer error
        raise QueenError(f"'{op.name}' needs remote hives over SSH, which are not available yet.",
                         code="NOT_AVAILABLE", status=501)

    async def status(self) -> dict[str, Any]:
        jobs = list(self._jobs.jobs())
        return {
            "hives": [await self.hives.status(h.alias) for h in self.hives.all()],
            "workers": [w.to_dict() for w in self.workers.all()],
            "jobs": {"running": sum(1 for j in jobs if not j.state.finished), "recent": len(jobs)},
        }
