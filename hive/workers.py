"""The hive's worker processes: spawn with a fixed, validated command line (no shell), wait for ready,
notice every exit at once, stop gracefully then by force. Workers also die with the hive by themselves
(PR_SET_PDEATHSIG), so a SIGKILLed hive leaves none behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from hive.catalog import CatalogEntry
from hive.config import HiveConfig
from hive.device_plan import WorkerPlan
from hive.errors import HiveError, WorkerNotFound, WorkerStartFailed
from hive.queen_link import QueenLink
from shared.client import DaemonClient
from shared.errors import RbeeError
from shared.events import detached_task, narrate
from shared.handshake import listening_url
from shared.heartbeat import EngineState, Heartbeat
from shared.kv_cache import FLASH_ATTN_DEFAULT, KV_CACHE_DEFAULT, kv_cache_problem
from shared.process import CHILD_CWD
from shared.wire import WireEnum

log = logging.getLogger("rbee.hive.workers")

STDERR_LINES_KEPT = 20


class ProcessState(WireEnum):
    """A worker process as its hive sees it: starting -> loading -> ready; stopping -> stopped; crashed
    (exited by itself) or failed (never became ready)."""

    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    FAILED = "failed"

    @property
    def running(self) -> bool:
        return self in (ProcessState.STARTING, ProcessState.LOADING, ProcessState.READY)


@dataclass(eq=False)
class WorkerProcess:
    id: str
    model: str
    model_path: str
    device: str
    proc: asyncio.subprocess.Process
    threads: int = 1
    slots: int = 1
    url: str | None = None
    embedding: bool = False  # started with --embedding: computes embeddings, never generates
    kv_cache_type: str = KV_CACHE_DEFAULT
    flash_attn: str = FLASH_ATTN_DEFAULT
    gpu_layers: int = 0  # layers offloaded (-1: every one)
    gpus: tuple[int, ...] = ()  # the machine's GPUs it is pinned to (CUDA_VISIBLE_DEVICES), as nvidia-smi numbers them
    plan: WorkerPlan | None = None  # where the hive planned it (hive/device_plan.py)
    state: ProcessState = ProcessState.STARTING
    exit_code: int | None = None
    started_at: float = field(default_factory=time.time)
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=STDERR_LINES_KEPT))
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    _watcher: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def to_dict(self, live_state: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id, "model": self.model, "device": self.device, "pid": self.proc.pid, "url": self.url,
            "state": live_state or self.state.value, "threads": self.threads, "slots": self.slots, "exit_code": self.exit_code, "started_at": self.started_at,
            "embedding": self.embedding, "kv_cache_type": self.kv_cache_type, "flash_attn": self.flash_attn,
            "gpu_layers": self.gpu_layers, "gpus": list(self.gpus),
            "plan": None if self.plan is None else {k: v for k, v in self.plan.to_dict().items() if k != "estimate"},
        }


@dataclass(frozen=True)
class WorkerLaunch:
    """Where and how a worker's llama.cpp runs, as its command line and environment say it. `device` is
    cpu or cuda:N as this machine (nvidia-smi) numbers its GPUs; `visible_gpus` pins the worker to those
    GPUs (CUDA_VISIBLE_DEVICES, in nvidia-smi's PCI order: CUDA's own is fastest first), inside which they
    are cuda:0, cuda:1, ...; `gpu_layers` None offloads every layer; `tensor_split` is a share per GPU."""

    device: str
    kv_cache_type: str = KV_CACHE_DEFAULT
    flash_attn: str = FLASH_ATTN_DEFAULT
    gpu_layers: int | None = None
    tensor_split: tuple[float, ...] = ()
    visible_gpus: tuple[int, ...] = ()
    hide_gpus: bool = False  # a CPU worker on a machine with GPUs: CUDA_VISIBLE_DEVICES="" keeps it off them

    def __post_init__(self) -> None:
        """The planner's mistakes, not a user's: said as plainly, but as ValueError."""
        if self.device == "cpu" and (self.gpu_layers or self.tensor_split or self.visible_gpus):
            raise ValueError(f"a CPU worker offloads nothing, yet gpu_layers={self.gpu_layers}, "
                             f"tensor_split={self.tensor_split}, visible_gpus={self.visible_gpus}")
        if self.gpu_layers is not None and self.gpu_layers < 0:
            raise ValueError(f"gpu_layers must be None (every layer) or 0 or more, not {self.gpu_layers}")
        if self.tensor_split and self.visible_gpus and len(self.tensor_split) != len(self.visible_gpus):
            raise ValueError(f"tensor_split {self.tensor_split} needs one share per GPU of {self.visible_gpus}")

    def args(self) -> list[str]:
        """The worker's command-line arguments for these."""
        args = ["--device", "cuda:0" if self.visible_gpus else self.device,
                "--kv-cache-type", self.kv_cache_type, "--flash-attn", self.flash_attn]
        if self.device != "cpu" and self.gpu_layers is not None:
            args += ["--gpu-layers", str(self.gpu_layers)]
        if self.tensor_split:
            args += ["--tensor-split", ",".join(f"{share:.6g}" for share in self.tensor_split)]
        return args

    def env(self, base: Mapping[str, str]) -> dict[str, str] | None:
        """The worker's environment: `base` pinned to its GPUs; None (inherit) when not pinned: a CPU
        worker needs no CUDA_VISIBLE_DEVICES, its llama.cpp offloads nothing."""
        if not self.visible_gpus:
            # A CUDA build's llama.cpp would still use a GPU it sees for large batches (and take CUDA's
            # overhead there) with no layer offloaded.
            return {**base, "CUDA_VISIBLE_DEVICES": ""} if self.device == "cpu" and self.hide_gpus else None
        return {**base, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES": ",".join(str(index) for index in self.visible_gpus)}

    @property
    def offloaded_layers(self) -> int:
        """As listed: 0 on the CPU, -1 for every layer."""
        if self.device == "cpu":
            return 0
        return -1 if self.gpu_layers is None else self.gpu_layers

    @property
    def gpus(self) -> tuple[int, ...]:
        """The machine's GPUs the worker uses, as nvidia-smi numbers them."""
        if self.visible_gpus:
            return self.visible_gpus
        return (int(self.device.split(":", 1)[1]),) if self.device.startswith("cuda:") else ()


class WorkerSupervisor:
    def __init__(self, config: HiveConfig, token: str, queen: QueenLink,
                 heartbeat_url: Callable[[], str | None]) -> None:
        self.config = config
        self._token = token
        self._queen = queen
        self._heartbeat_url = heartbeat_url  # this hive's own URL: it relays heartbeats to the queen
        self._workers: dict[str, WorkerProcess] = {}
        self._session: aiohttp.ClientSession | None = None  # opened on first use, inside the hive's context

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Stop every worker (gracefully, then by force) and the client session."""
        try:
            await asyncio.gather(*(self.stop(w) for w in self._workers.values() if w.alive), return_exceptions=True)
        finally:
            if self._session is not None:
                await self._session.close()

    def get(self, worker_id: str) -> WorkerProcess:
        worker = self._workers.get(worker_id)
        if worker is None:
            known = ", ".join(self._workers) or "none"
            raise WorkerNotFound(f"No worker '{worker_id}' on hive {self.config.hive_id} (workers: {known}).")
        return worker

    def all(self) -> list[WorkerProcess]:
        return list(self._workers.values())

    def threads_in_use(self) -> int:
        """llama.cpp threads of the CPU workers still running (the hive's thread budget spends these); a
        worker being stopped has stopped generating, so its threads are free already. Embedding workers
        are left out: they work in short bursts and share cores with the rest (see HiveExecutor)."""
        return sum(w.threads for w in self._workers.values()
                   if w.alive and w.device == "cpu" and w.state is not ProcessState.STOPPING and not w.embedding)

    def kv_cache_settings(self, kv_cache_type: str | None, flash_attn: str | None) -> tuple[str, str]:
        """A spawn's KV cache type and flash attention, the hive's where it names none; refused when llama.cpp
        could not make a context with them (call it before a download, to refuse early)."""
        kv_cache_type = kv_cache_type or self.config.worker_kv_cache_type
        flash_attn = flash_attn or self.config.worker_flash_attn
        if (problem := kv_cache_problem(kv_cache_type, flash_attn)) is not None:
            raise HiveError(problem[0].upper() + problem[1:] + ".", code="KV_CACHE_NEEDS_FLASH_ATTN")
        return kv_cache_type, flash_attn

    async def spawn(self, model: CatalogEntry, device: str, threads: int, *, embedding: bool = False,
                    kv_cache_type: str | None = None, flash_attn: str | None = None, gpu_layers: int | None = None,
                    tensor_split: tuple[float, ...] = (), visible_gpus: tuple[int, ...] = (), hide_gpus: bool = False,
                    plan: WorkerPlan | None = None) -> WorkerProcess:
        """Start a worker on `device` (cpu or cuda:N as this machine numbers its GPUs). `kv_cache_type` and
        `flash_attn` default to the hive's; `gpu_layers` (None: every layer) and `tensor_split` (a share per
        GPU of `visible_gpus`) say how it offloads. `visible_gpus` pins it: the child sees only those GPUs
        (CUDA_VISIBLE_DEVICES, in nvidia-smi's PCI order), as cuda:0, cuda:1, ... inside; `hide_gpus` hides
        every GPU from a CPU worker. `plan` is kept to be listed."""
        kv_cache_type, flash_attn = self.kv_cache_settings(kv_cache_type, flash_attn)
        launch = WorkerLaunch(device, kv_cache_type, flash_attn, gpu_layers, tensor_split, visible_gpus, hide_gpus)
        worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        # an embedding worker takes one input at a time; a generating one's slots grow unless fixed
        slots = 1 if embedding else self.config.worker_max_slots
        fixed = 1 if embedding else self.config.worker_slots
        sharing = ["--parallel", str(fixed)] if fixed else []
        argv = [sys.executable, "-m", "worker.main", "--worker-id", worker_id, "--model", model.path,
                "--model-ref", model.id, "--host", self.config.worker_host, "--port", "0",
                "--hive-id", self.config.hive_id, "--threads", str(threads), *sharing,
                "--ctx-size", str(self.config.worker_ctx_size), *launch.args()]
        if embedding:
            argv.append("--embedding")
        elif self.config.prompt_cache_mb > 0:
            argv += ["--prompt-cache-dir", str(self.config.prompt_cache_dir(model.sha256)),
                     "--prompt-cache-mb", str(self.config.prompt_cache_mb)]
        if (heartbeat_url := self._heartbeat_url()) is not None:
            argv += ["--queen-url", heartbeat_url]
        kind = "embedding worker" if embedding else "worker"
        settings = "" if (kv_cache_type, flash_attn) == (KV_CACHE_DEFAULT, FLASH_ATTN_DEFAULT) else \
            f" (KV cache {kv_cache_type}, flash attention {flash_attn})"
        narrate("worker_spawn", f"Starting {kind} {worker_id} for {model.id} on {device}{settings}", target=worker_id)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=CHILD_CWD, env=launch.env(os.environ))
        worker = WorkerProcess(worker_id, model.id, model.path, device, proc, threads=threads, slots=slots,
                               embedding=embedding, kv_cache_type=kv_cache_type, flash_attn=flash_attn,
                               gpu_layers=launch.offloaded_layers, gpus=launch.gpus, plan=plan)
        self._workers[worker_id] = worker
        worker._watcher = detached_task(self._watch(worker), name=f"watch-{worker_id}")
        try:
            await asyncio.wait_for(self._until_ready(worker), self.config.worker_ready_timeout_s)
        except asyncio.TimeoutError:
            await self.stop(worker)
            worker.state = ProcessState.FAILED
            raise WorkerStartFailed(f"{worker_id} was not ready after {self.config.worker_ready_timeout_s:g} s; "
                                    f"stopped it. Last lines:\n{_tail(worker)}") from None
        except BaseException:
            if worker.alive:  # the spawn job was cancelled, or failed: don't leave a half-started worker
                await self.stop(worker)
            raise
        return worker

    async def _until_ready(self, worker: WorkerProcess) -> None:
        url = listening_url(await worker.proc.stdout.readline())  # type: ignore[union-attr]
        if url is None:
            await worker.exited.wait()
            raise WorkerStartFailed(f"{worker.id} exited with code {worker.exit_code} before listening: "
                                    f"{_tail(worker)}")
        worker.url = url
        worker.state = ProcessState.LOADING
        narrate("worker_loading", f"{worker.id} listens on {worker.url}; loading {worker.model}", target=worker.id)
        while True:
            if not worker.alive:
                await worker.exited.wait()
                raise WorkerStartFailed(f"{worker.id} exited with code {worker.exit_code} while loading "
                                        f"{worker.model}: {_tail(worker)}")
            health = await self.health(worker)
            if health and health.get("state") in (EngineState.READY, EngineState.BUSY):
                worker.state = ProcessState.READY
                narrate("worker_ready", f"{worker.id} is ready ({worker.model}, {health.get('threads')} threads)",
                        target=worker.id)
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), 0.05)

    async def health(self, worker: WorkerProcess) -> dict | None:
        if not worker.url or not worker.alive:
            return None
        return await DaemonClient(worker.url, self._token, session=self.session).health_or_none()

    async def live_state(self, worker: WorkerProcess) -> str:
        """ready/busy/loading as the worker itself says, for listings."""
        if worker.state in (ProcessState.READY, ProcessState.LOADING):
            health = await self.health(worker)
            if health and isinstance(health.get("state"), str):
                return health["state"]
        return worker.state.value

    async def _watch(self, worker: WorkerProcess) -> None:
        """Collect stderr and notice the exit the moment it happens."""
        async def drain_stderr() -> None:
            async for raw in worker.proc.stderr:  # type: ignore[union-attr]
                worker.stderr_tail.append(raw.decode(errors="replace").rstrip())

        async def drain_stdout() -> None:
            # Only the first line matters (read by _until_ready); keep the pipe from filling afterwards.
            while worker.url is None and worker.alive:
                await asyncio.sleep(0.05)
            with contextlib.suppress(Exception):
                async for _ in worker.proc.stdout:  # type: ignore[union-attr]
                    pass

        drains = [asyncio.create_task(drain_stderr()), asyncio.create_task(drain_stdout())]
        code = await worker.proc.wait()
        await asyncio.wait(drains, timeout=1.0)
        worker.exit_code = code
        if worker.state is ProcessState.STOPPING:
            worker.state = ProcessState.STOPPED
        elif worker.state.running:
            worker.state = ProcessState.CRASHED
            narrate("worker_crashed", f"{worker.id} ({worker.model}) exited unexpectedly with code {code}",
                    target=worker.id, level="error")
            worker.exited.set()
            await self._tell_queen_it_exited(worker)
        worker.exited.set()

    async def _tell_queen_it_exited(self, worker: WorkerProcess) -> None:
        """The queen hears of a crash at once, not when its heartbeats stop (15 s of failing requests)."""
        if not worker.url:
            return
        beat = Heartbeat(worker_id=worker.id, hive_id=self.config.hive_id, url=worker.url, model=worker.model,
                         state=EngineState.EXITED, device=worker.device, slots=worker.slots,
                         embedding=worker.embedding)
        try:
            await self._queen.send(beat.to_dict())
        except RbeeError as exc:
            log.info("could not tell the queen that %s exited: %s", worker.id, exc.message)

    async def stop(self, worker: WorkerProcess) -> None:
        """SIGTERM (the worker finishes its token and exits), then SIGKILL after the timeout."""
        if not worker.alive:
            return
        worker.state = ProcessState.STOPPING
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.exited.wait(), self.config.worker_stop_timeout_s)
        except asyncio.TimeoutError:
            narrate("worker_kill", f"{worker.id} did not stop within {self.config.worker_stop_timeout_s:g} s; "
                                   "killing it", target=worker.id, level="warn")
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.exited.wait()

    async def delete(self, worker_id: str) -> WorkerProcess:
        worker = self.get(worker_id)
        if worker.alive:
            narrate("worker_stop", f"Stopping {worker.id}", target=worker.id)
            await self.stop(worker)
        del self._workers[worker_id]
        return worker


def _tail(worker: WorkerProcess) -> str:
    return "\n".join(worker.stderr_tail) or "(no output)"
