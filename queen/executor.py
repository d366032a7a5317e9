"""The queen's operations: status, hives, forwarding of worker_*/model_* to hives, and infer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from queen.conversations import ConversationStore
from queen.drain import Drainer
from queen.embeddings import run_embed
from queen.errors import QueenError
from queen.hives import HiveRegistry
from queen.hives.remote.hives_conf import import_ssh_config
from queen.inference import InferenceRunner, Progress
from queen.worker_registry import WorkerRegistry, WorkerStatus
from shared.events import Data, emit, narrate
from shared.job_client import Clients
from shared.job_registry import Job, JobRegistry
from shared.operations import (
    ANY_HIVE,
    Embed,
    HiveDrain,
    HiveGet,
    HiveImportSsh,
    HiveInstall,
    HiveList,
    HiveOperation,
    HiveRefreshCapabilities,
    HiveStart,
    HiveStatus,
    HiveStop,
    HiveUninstall,
    HiveUpgrade,
    Infer,
    ModelCopy,
    ModelPush,
    Operation,
    SshTest,
    Status,
    WorkerDelete,
    WorkerDrain,
    WorkerSpawn,
)
from shared.ports import DEFAULT_HIVE_PORT
from shared.version import VERSION, version_fields


class QueenExecutor:
    def __init__(self, hives: HiveRegistry, workers: WorkerRegistry, runner: InferenceRunner, clients: Clients,
                 jobs: JobRegistry, data_dir: Path, conversations: ConversationStore) -> None:
        self.hives = hives
        self.workers = workers
        self.runner = runner
        self._clients = clients
        self._jobs = jobs
        self._data_dir = data_dir
        self.conversations = conversations
        self.drainer = Drainer(hives, workers)
        self.transfers = runner.scheduler.transfers

    async def __call__(self, op: Operation, job: Job) -> dict[str, Any] | None:
        if isinstance(op, Infer):
            if op.conversation_id is None:
                return await self.runner.infer(op, job)
            return await self._infer_in_conversation(op, job)
        if isinstance(op, Embed):
            return await run_embed(self.runner, op, job)
        if isinstance(op, WorkerSpawn) and op.hive_id == ANY_HIVE:
            return await self.runner.scheduler.spawn_placed(op)
        if isinstance(op, ModelPush):
            return await self.transfers.push(op)
        if isinstance(op, ModelCopy):
            return await self.transfers.copy(op)
        if isinstance(op, HiveOperation):
            result = await self.hives.forward(op)
            if isinstance(op, WorkerDelete):
                self.workers.forget(op.id)
            return result or None
        if isinstance(op, Status):
            emit(Data(action="status", payload=await self.status()))
        elif isinstance(op, HiveList):
            emit(Data(action="hive_list", payload={"hives": await self.hives.statuses()}))
        elif isinstance(op, (HiveGet, HiveStatus)):
            info = await self.hives.status(op.alias, inspect=isinstance(op, HiveStatus))
            info["workers"] = [w.to_dict() for w in self.workers.all() if w.hive_id == op.alias]
            emit(Data(action=op.name, payload=info))
        elif isinstance(op, HiveStart):
            emit(Data(action="hive_start", payload=(await self.hives.start(op.alias)).to_dict()))
        elif isinstance(op, HiveStop):
            hive = await self.hives.stop(op.alias)
            self.workers.mark_hive(op.alias, WorkerStatus.STOPPED)
            emit(Data(action="hive_stop", payload=hive.to_dict()))
        elif isinstance(op, HiveDrain):
            emit(Data(action="hive_drain", payload=await self.drainer.drain_hive(op.alias, op.deadline_s)))
        elif isinstance(op, HiveUpgrade):
            await self.upgrade(op)
        elif isinstance(op, WorkerDrain):
            emit(Data(action="worker_drain", payload=await self.drainer.drain_worker(op.id, op.deadline_s)))
        elif isinstance(op, HiveRefreshCapabilities):
            emit(Data(action="hive_refresh_capabilities", payload=await self.hives.refresh_capabilities(op.alias)))
        elif isinstance(op, SshTest):
            emit(Data(action="ssh_test", payload=await self.hives.ssh_test(op.alias)))
        elif isinstance(op, HiveInstall):
            await self.install(op.alias)
        elif isinstance(op, HiveUninstall):
            emit(Data(action="hive_uninstall", payload=await self.hives.uninstall(op.alias)))
        elif isinstance(op, HiveImportSsh):
            await self.import_ssh(op)
        else:
            raise QueenError(f"The queen does not handle '{op.name}'.", code="UNKNOWN_OPERATION")
        return None

    async def upgrade(self, op: HiveUpgrade) -> None:
        """One hive at a time, each drained while the others serve."""
        aliases = self.hives.remote_installed() if op.all else [str(op.alias)]
        if not aliases:
            raise QueenError("No remote hive is installed by this queen: nothing to upgrade (`rbee hive install "
                             "ALIAS` installs one).", code="NOTHING_TO_UPGRADE")
        upgraded = []
        for k, alias in enumerate(aliases, 1):
            narrate("hive_upgrade", f"Upgrading {alias} to rbee {VERSION}" + (f" ({k} of {len(aliases)})" if op.all else "")
                    + ": installing beside the running one, which serves meanwhile", target=alias)

            async def drain(alias: str = alias) -> None:
                await self.drainer.drain_hive(alias, op.deadline_s)

            await self.hives.upgrade(alias, self._data_dir, drain,
                                     installed=lambda payload: emit(Data(action="hive_install", payload=payload)))
            status = await self.hives.status(alias)
            upgraded.append({"alias": alias, "state": status["state"], "version": status["version"],
                             "protocol": status["protocol"]})
            narrate("hive_upgrade", f"{alias} runs rbee {status['version']} (protocol {status['protocol']})",
                    target=alias)
        emit(Data(action="hive_upgrade", payload={"upgraded": upgraded}))

    async def install(self, alias: str) -> None:
        """(Re)install: a running hive is stopped first (its venv is replaced), and started again after."""
        await self.hives.install(alias, self._data_dir,
                                 installed=lambda payload: emit(Data(action="hive_install", payload=payload)))

    async def import_ssh(self, op: HiveImportSsh) -> None:
        path = Path(op.ssh_config_path or "~/.ssh/config").expanduser()
        conf = self.hives.conf_path
        report = await asyncio.to_thread(import_ssh_config, path, conf, op.default_hive_port or DEFAULT_HIVE_PORT)
        for alias in report.added:
            narrate("hive_import_ssh", f"Added {alias} to {conf}", target=alias)
        for pattern, why in report.skipped:
            narrate("hive_import_ssh", f"Skipped {pattern}: {why}", target=pattern)
        emit(Data(action="hive_import_ssh", payload={
            "added": report.added, "skipped": [{"host": p, "reason": why} for p, why in report.skipped],
            "hives_conf": str(conf)}))

    async def _infer_in_conversation(self, op: Infer, job: Job) -> dict[str, Any]:
        """An answer whose exchange (the user's turn and the answer, as far as it got) is stored in the
        conversation when the job ends."""
        # a wrong id (or another key's) fails before any work
        conv_id = await self.conversations.resolve(op.conversation_id or "", owner=job.owner if job.own_only else None)
        turn = [("user", op.prompt)] if op.prompt is not None else [m for m in (op.messages or ())[-1:] if m[0] == "user"]
        progress = Progress()
        try:
            result = await self.runner.infer(op, job, progress)
        except asyncio.CancelledError:
            if partial := "".join(progress.parts):
                self.conversations.add_exchange(conv_id, [*turn, ("assistant", partial)], op.model)
            raise
        self.conversations.add_exchange(conv_id, [*turn, ("assistant", result["text"])], op.model)
        return {**result, "conversation_id": conv_id}

    async def status(self) -> dict[str, Any]:
        jobs = list(self._jobs.jobs())
        return {
            "queen": version_fields(),
            "hives": await self.hives.statuses(),
            "workers": [w.to_dict() for w in self.workers.all()],
            "jobs": {"running": sum(1 for j in jobs if not j.state.finished and not j.operation.read_only),
                     "recent": sum(1 for j in jobs if not j.operation.read_only)},
            "waiting_for_a_worker": self.runner.scheduler.queued(),  # per model
        }
