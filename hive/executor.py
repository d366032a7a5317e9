"""The hive's operations: workers and models. Results go out as `data` events."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from hive.capabilities import detect_capabilities
from hive.catalog import CatalogEntry
from hive.config import HiveConfig
from hive.device_plan import GpuState, WorkerPlan, no_gpu_offload, plan_worker
from hive.errors import DeviceNotFound, HiveError, WorkerStartFailed
from hive.gguf import GGUFError, GGUFFile, read_gguf
from hive.memory_estimate import estimate_worker_memory
from hive.models import ModelStore
from hive.workers import WorkerSupervisor
from shared.events import Data, emit, narrate
from shared.job_registry import Job
from shared.models import alias_of
from shared.operations import (
    DEVICE_AUTO,
    HiveOperation,
    ModelAdopt,
    ModelDelete,
    ModelDigest,
    ModelDownload,
    ModelGet,
    ModelList,
    ModelVerify,
    Operation,
    WorkerDelete,
    WorkerGet,
    WorkerList,
    WorkerSpawn,
)

MIB = 1 << 20
EMBEDDING_THREADS = 2  # at most, for an embedding worker on CPU
GPU_WORKER_THREADS = 4  # at most, for a worker on a GPU (see thread_budget)
LLAMA_LOAD_REFUSALS = ("error loading model", "failed to load model")  # llama.cpp's words for a bad file


class HiveExecutor:
    def __init__(self, config: HiveConfig, store: ModelStore, supervisor: WorkerSupervisor,
                 capabilities: dict[str, Any]) -> None:
        self.config = config
        self.store = store
        self.supervisor = supervisor
        self.capabilities = capabilities
        self._spawning = asyncio.Lock()
        self._estimates: dict[tuple, dict[str, Any]] = {}  # by (path, size, ctx, slots): a GGUF does not change
        self._ggufs: dict[tuple[str, int], GGUFFile] = {}  # by (path, size): its tensor table, read once

    async def __call__(self, op: Operation, job: Job) -> dict[str, Any] | None:
        if not isinstance(op, HiveOperation):
            raise HiveError(f"The hive does not handle '{op.name}'.", code="UNKNOWN_OPERATION")
        if op.hive_id != self.config.hive_id:
            raise HiveError(f"This is hive '{self.config.hive_id}', not '{op.hive_id}'.", code="WRONG_HIVE")
        if isinstance(op, WorkerSpawn):
            return await self.spawn_worker(op)
        if isinstance(op, WorkerList):
            workers = [w.to_dict(await self.supervisor.live_state(w)) for w in self.supervisor.all()]
            emit(Data(action="worker_list", payload={"hive_id": self.config.hive_id, "workers": workers}))
            return None
        if isinstance(op, WorkerGet):
            worker = self.supervisor.get(op.id)
            emit(Data(action="worker_get", payload=worker.to_dict(await self.supervisor.live_state(worker))))
            return None
        if isinstance(op, WorkerDelete):
            worker = await self.supervisor.delete(op.id)
            emit(Data(action="worker_delete", payload=worker.to_dict()))
            return None
        if isinstance(op, ModelDownload):
            entry = await self.store.provision(op.model, token=op.token, alias=op.alias)
            emit(Data(action="model_download", payload=entry.to_dict()))
            return {"model": entry.id, "sha256": entry.sha256}
        if isinstance(op, ModelList):
            models = [await self.describe_model(e) for e in await self.store.catalog.list()]
            emit(Data(action="model_list", payload={"hive_id": self.config.hive_id, "models": models}))
            return None
        if isinstance(op, ModelGet):
            emit(Data(action="model_get", payload=await self.describe_model(await self.store.lookup(op.id))))
            return None
        if isinstance(op, ModelDigest):
            digest = await self.store.incoming_digest(op.file)
            emit(Data(action="model_digest", payload={"file": op.file, "sha256": digest}))
            return None
        if isinstance(op, ModelAdopt):
            entry = await self.store.adopt(op)
            self._forget_file(entry.path)
            emit(Data(action="model_adopt", payload=await self.describe_model(entry)))
            return {"model": entry.id, "sha256": entry.sha256}
        if isinstance(op, ModelVerify):
            report = await self.store.verify(op.id)
            emit(Data(action="model_verify", payload={"hive_id": self.config.hive_id, "models": report}))
            bad = [m["id"] for m in report if m["state"] != "ok"]
            return {"checked": len(report), "unusable": bad}
        if isinstance(op, ModelDelete):
            entry = await self.store.lookup(op.id)
            users = [w.id for w in self.supervisor.all() if w.model == entry.id and w.alive]
            if users:
                raise HiveError(f"Model {entry.id} is in use by {', '.join(users)}; delete those workers first.",
                                code="MODEL_IN_USE", status=409)
            deleted = await self.store.delete(entry.id)
            # its prompt caches go with it (none of them fits another model)
            await asyncio.to_thread(shutil.rmtree, self.config.prompt_cache_dir(entry.sha256), True)
            emit(Data(action="model_delete", payload=deleted.to_dict()))
            return None
        raise HiveError(f"The hive does not handle '{op.name}'.", code="UNKNOWN_OPERATION")

    async def spawn_worker(self, op: WorkerSpawn) -> dict[str, Any]:
        """Plan where the worker goes (hive/device_plan.py), say so, and start it there."""
        if op.device != DEVICE_AUTO:
            await self.resolve_device(op.device)  # no such GPU, or one taken: refused before a download
        budget = self.embedding_threads if op.embedding else self.thread_budget
        if op.device == "cpu" or (op.device == DEVICE_AUTO and (op.embedding or not self.capabilities.get("gpu_offload")
                                                          or not self.usable_gpus())):
            budget("cpu")  # a CPU worker with no core left: refused early, before a download
        kv_cache_type, flash_attn = self.supervisor.kv_cache_settings(op.kv_cache_type, op.flash_attn)
        entry = await self.store.provision(op.model)
        async with self._spawning:  # two spawns at once must not both count the same free cores or GPU
            try:
                plan = await self.plan(entry, op.device, kv_cache_type=kv_cache_type, flash_attn=flash_attn,
                                       embedding=op.embedding)
                (await self.gguf_of(entry)).check_complete()  # a file cut short never reaches llama.cpp
            except GGUFError as exc:
                await self.store.mark_bad(entry, exc.message)
                raise
            narrate("device_plan", f"{entry.id}: {plan.describe()}", target=self.config.hive_id)
            device = "cpu" if plan.kind == "cpu" else f"cuda:{plan.gpus[0]}"
            try:
                worker = await self.supervisor.spawn(
                    entry, device, budget(device), embedding=op.embedding, kv_cache_type=kv_cache_type,
                    flash_attn=flash_attn, gpu_layers=None if plan.kind == "cpu" else plan.gpu_layers,
                    tensor_split=plan.tensor_split if len(plan.gpus) > 1 else (), visible_gpus=plan.gpus,
                    hide_gpus=bool(self.capabilities.get("gpus")), plan=plan)
            except WorkerStartFailed as exc:
                if not any(words in exc.message for words in LLAMA_LOAD_REFUSALS):
                    raise
                await self.store.mark_bad(entry, f"llama.cpp could not load it: {exc.message.splitlines()[-1]}")
                raise GGUFError(f"{entry.id} is not a model llama.cpp can load; it is marked unusable in the "
                                f"catalog. {exc.message}") from None
        emit(Data(action="worker_spawn", payload=worker.to_dict()))
        return {"worker_id": worker.id, "url": worker.url, "slots": worker.slots, "embedding": worker.embedding,
                "device": worker.device, "plan": plan.to_dict()}

    def gpus_held(self) -> dict[int, str]:
        """The GPUs a live worker runs on (one worker per GPU), by index, with that worker's id."""
        return {index: w.id for w in self.supervisor.all() if w.alive for index in w.gpus}

    def usable_gpus(self, *, freeing: bool = False) -> list[GpuState]:
        """The GPUs a new worker may use now: those whose memory nvidia-smi tells and that no worker holds
        (from the latest reading; refresh_capabilities first; whether llama.cpp can offload to them is the
        plan's to say). `freeing`: as if every worker on a GPU were stopped (its planned VRAM free again)."""
        # what each held GPU's worker was planned to take there, by index
        held = {index: (w.plan.per_device.get(f"cuda:{index}", 0) if w.plan else 0)
                for w in self.supervisor.all() if w.alive for index in w.gpus}
        return [GpuState(int(g["index"]), str(g["name"]), int(g["memory_total_mb"]) * MIB,
                         min(int(g["memory_free_mb"]) * MIB + (held.get(g["index"], 0) if freeing else 0),
                             int(g["memory_total_mb"]) * MIB), g.get("compute_capability") or "")
                for g in self.capabilities.get("gpus") or []
                if (freeing or g["index"] not in held) and g.get("memory_total_mb")
                and g.get("memory_free_mb") is not None]

    async def plan(self, entry: CatalogEntry, device: str, *, kv_cache_type: str, flash_attn: str,
                   embedding: bool = False, freeing: bool = False) -> WorkerPlan:
        """Where a worker of `entry` would go now (`freeing`: were the GPU workers stopped). An embedding
        worker asked for with `auto` stays on the CPU: it works in short bursts, and a GPU is worth more to
        a generating worker (one per GPU)."""
        if not freeing:
            await self.refresh_capabilities()
        gguf = await self.gguf_of(entry)
        wanted = "cpu" if embedding and device == DEVICE_AUTO else device
        return await asyncio.to_thread(
            plan_worker, gguf, gpus=self.usable_gpus(freeing=freeing),
            ram_free_bytes=self.capabilities.get("ram_available_bytes"), ctx_size=self.config.worker_ctx_size,
            slots=1 if embedding else self.config.worker_start_slots, cache_type=kv_cache_type, flash_attn=flash_attn,
            device=wanted, can_offload=bool(self.capabilities.get("gpu_offload")),
            vram_budget_bytes=self.config.vram_budget_bytes)

    async def gguf_of(self, entry: CatalogEntry) -> GGUFFile:
        key = (entry.path, entry.size)
        if key not in self._ggufs:
            self._ggufs[key] = await asyncio.to_thread(read_gguf, entry.path)
        return self._ggufs[key]

    def _forget_file(self, path: str) -> None:
        """A file that was (re)placed: what was read from an earlier file at its path no longer holds."""
        self._ggufs = {k: v for k, v in self._ggufs.items() if k[0] != path}
        self._estimates = {k: v for k, v in self._estimates.items() if k[0] != path}

    async def describe_model(self, entry: CatalogEntry) -> dict[str, Any]:
        """The catalog entry, with what a worker of it would need here (from the GGUF's own metadata)."""
        key = (entry.path, entry.size, self.config.worker_ctx_size, self.config.worker_start_slots,
               self.config.worker_kv_cache_type, self.config.worker_flash_attn)
        if key not in self._estimates:
            try:
                estimate = await asyncio.to_thread(estimate_worker_memory, await self.gguf_of(entry),
                                                   ctx_size=self.config.worker_ctx_size, slots=self.config.worker_start_slots,
                                                   cache_type=self.config.worker_kv_cache_type,
                                                   flash_attn=self.config.worker_flash_attn)
                self._estimates[key] = estimate.to_dict()
            except (GGUFError, OSError, ValueError) as exc:  # listed all the same, without a size
                self._estimates[key] = {"error": str(exc)}
        return {**entry.to_dict(), "alias": entry.alias or alias_of(entry.id), "estimate": self._estimates[key],
                "plan": await self.describe_plan(entry)}

    async def describe_plan(self, entry: CatalogEntry) -> dict[str, Any]:
        """A new worker's plan now, for `rbee model list` and the queen's placement; `if_gpus_freed`: the
        plan's kind were the workers holding GPUs stopped, when that would put more of it on them."""
        kv, fa = self.config.worker_kv_cache_type, self.config.worker_flash_attn
        plan: dict[str, Any]
        now: WorkerPlan | None
        try:
            now = await self.plan(entry, DEVICE_AUTO, kv_cache_type=kv, flash_attn=fa)
            plan = {k: v for k, v in now.to_dict().items() if k != "estimate"}  # the estimate is said beside it
        except (HiveError, OSError, ValueError) as exc:  # NoFit among them: what it needs is in the message
            now, plan = None, {"error": str(exc), "code": getattr(exc, "code", None)}
        if self.gpus_held() and (now is None or now.kind not in ("gpu", "split")):
            try:
                freed = await self.plan(entry, DEVICE_AUTO, kv_cache_type=kv, flash_attn=fa, freeing=True)
                if freed.kind in ("gpu", "split"):
                    plan["if_gpus_freed"] = freed.kind
            except (HiveError, OSError, ValueError):
                pass
        return plan

    def thread_budget(self, device: str) -> int:
        """llama.cpp threads for a new worker: what the running CPU workers leave of this machine's cores
        (more threads than cores only make them fight). A GPU worker's threads only feed its GPU."""
        cores = int(self.capabilities["cpu"]["cores"])
        if device != "cpu":
            # A GPU worker's threads only feed its GPU (and run what stays in RAM of a partial offload): more
            # than a few slow the CPU workers beside it and gain it nothing.
            return min(GPU_WORKER_THREADS, cores)
        used = self.supervisor.threads_in_use()
        free = cores - used
        if free < 1:
            holders = ", ".join(f"{w.id} ({w.model}, {w.threads} threads)" for w in self.supervisor.all()
                                if w.alive and w.device == "cpu")
            raise HiveError(f"Every one of the {cores} cores of hive {self.config.hive_id} runs a worker already: "
                            f"{holders}. Stop one (`rbee worker delete ID`) or wait until it goes idle and is "
                            "stopped.", code="THREAD_BUDGET", status=409)
        if used:
            narrate("thread_budget", f"{used} of {cores} cores run other workers: the new one gets {free} threads",
                    target=self.config.hive_id, level="warn")
        return free

    def embedding_threads(self, device: str) -> int:
        """Threads for an embedding worker: a few, even when generating workers hold every core. It works
        in short bursts (one decode per input), so sharing cores costs them little, and refusing would
        leave /v1/embeddings unusable on a machine whose cores one generating worker already takes."""
        cores = int(self.capabilities["cpu"]["cores"])
        if device != "cpu":
            return min(GPU_WORKER_THREADS, cores)  # as any GPU worker's (thread_budget)
        used = self.supervisor.threads_in_use()
        if used == 0 or used + EMBEDDING_THREADS <= cores:
            return min(EMBEDDING_THREADS, cores)
        threads = max(1, min(EMBEDDING_THREADS, cores - used))
        narrate("thread_budget", f"{used} of {cores} cores run generating workers: the embedding worker gets "
                                 f"{threads} thread{'s' if threads != 1 else ''}, sharing cores with them",
                target=self.config.hive_id)
        return threads

    async def refresh_capabilities(self) -> dict[str, Any]:
        """Detect again (nvidia-smi blocks for a while: in a thread), and remember the answer."""
        self.capabilities = await asyncio.to_thread(detect_capabilities)
        return self.capabilities

    async def resolve_device(self, device: str) -> str:
        """`device` when a worker may start there now (cpu, or a cuda:N that exists, this hive's llama.cpp
        can use, and no worker holds); else the refusal that says so."""
        if device in ("cpu", "auto"):
            return "cpu"
        await self.refresh_capabilities()  # GPUs may have changed since start-up
        if device in self.capabilities["devices"]:
            if self.capabilities.get("gpu_offload") is False:
                raise no_gpu_offload(device)
            index = int(device.split(":", 1)[1])
            if (holder := self.gpus_held().get(index)) is not None:
                raise HiveError(f"{device} of hive {self.config.hive_id} runs {holder} already (one worker per GPU). "
                                f"Stop it (`rbee worker delete {holder}`), or use --device auto.",
                                code="GPU_IN_USE", status=409)
            return device
        have = ", ".join(self.capabilities["devices"])
        raise DeviceNotFound(f"Device {device} does not exist on hive {self.config.hive_id} "
                             f"({self.capabilities['gpu_note']}; devices here: {have}).")
