"""The queen's operations: status, hives, forwarding of worker_*/model_* to hives, and infer."""

from __future__ import annotations

from typing import Any

import aiohttp

from pathlib import Path

from queen import remote_hives
from queen.errors import QueenError
from queen.forwarding import forward
from queen.hives_conf import DEFAULT_HIVE_PORT, import_ssh_config
from queen.hives import HiveRegistry
from queen.inference import InferenceRunner
from queen.worker_registry import WorkerRegistry
from shared.events import Data, emit, narrate
from shared.job_registry import Job, JobRegistry
from shared.operations import (
    HIVE_OPERATIONS, HiveGet, HiveImportSsh, HiveInstall, HiveList, HiveRefreshCapabilities, HiveStart, HiveStatus,
    HiveStop, HiveUninstall, Infer, Operation, SshTest, Status, WorkerDelete,
)


class QueenExecutor:
    def __init__(self, hives: HiveRegistry, workers: WorkerRegistry, runner: InferenceRunner,
                 session: aiohttp.ClientSession, token: str, jobs: JobRegistry, data_dir: Path) -> None:
        self.hives = hives
        self._data_dir = data_dir
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
            self._forget_workers_of(op.alias)
            emit(Data(action="hive_stop", payload=hive.to_dict()))
            return None
        if isinstance(op, HiveRefreshCapabilities):
            emit(Data(action="hive_refresh_capabilities", payload=await self.hives.refresh_capabilities(op.alias)))
            return None
        if isinstance(op, SshTest):
            emit(Data(action="ssh_test", payload=await remote_hives.ssh_test(self.hives.remote(op.alias))))
            return None
        if isinstance(op, HiveInstall):
            result = await remote_hives.install(self.hives.remote(op.alias), self._token, self._data_dir)
            emit(Data(action="hive_install", payload=result))
            return None
        if isinstance(op, HiveUninstall):
            host = self.hives.remote(op.alias)
            result = await remote_hives.uninstall(host, self._token, self._session)
            self._forget_workers_of(op.alias)
            emit(Data(action="hive_uninstall", payload=result))
            return None
        if isinstance(op, HiveImportSsh):
            path = Path(op.ssh_config_path or "~/.ssh/config").expanduser()
            report = import_ssh_config(path, self.hives.conf_path, op.default_hive_port or DEFAULT_HIVE_PORT)
            for alias in report.added:
                narrate("hive_import_ssh", f"Added {alias} to {self.hives.conf_path}", target=alias)
            for pattern, why in report.skipped:
                narrate("hive_import_ssh", f"Skipped {pattern}: {why}", target=pattern)
            emit(Data(action="hive_import_ssh", payload={"added": report.added, "skipped": [
                {"host": p, "reason": why} for p, why in report.skipped], "hives_conf": str(self.hives.conf_path)}))
            return None
        raise QueenError(f"The queen does not handle '{op.name}'.", code="UNKNOWN_OPERATION")

    def _forget_workers_of(self, alias: str) -> None:
        for worker in self.workers.all():
            if worker.hive_id == alias:
                self.workers.mark(worker.worker_id, "stopped")

    async def status(self) -> dict[str, Any]:
        jobs = list(self._jobs.jobs())
        return {
            "hives": [await self.hives.status(h.alias) for h in self.hives.all()],
            "workers": [w.to_dict() for w in self.workers.all()],
            "jobs": {"running": sum(1 for j in jobs if not j.state.finished), "recent": len(jobs)},
        }
