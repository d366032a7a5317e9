"""Where a new worker goes when the request names no hive. Each hive plans a worker of the model on its own
devices (hive/device_plan.py: a whole GPU, a split over several, a partial offload, or the CPU) and the
queen ranks the hives with room (`rank`): the plan that puts most on GPUs first, then free VRAM, then
whether the hive has the file already, then free RAM. Room is the worker's memory estimate (from the
GGUF, computed by each hive for its own context and slots) against the hive's available memory, and a
free core for a CPU worker.

When no hive has room for a model that has no worker yet, the least recently used idle worker of another
model is stopped to make some (never one with requests in flight); when none is idle either, the error
names every hive and why. Likewise, when the model would only get the CPU (or part of a GPU) but would
have a whole GPU were an idle worker of another model not holding it, that worker is stopped: VRAM goes
to the model that needs it, as Ollama unloads its least recently used model."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from queen.errors import QueenError
from queen.hives import HiveRegistry
from queen.model_names import hive_models
from queen.worker_registry import WorkerInfo, WorkerRegistry, WorkerStatus
from shared.errors import RbeeError
from shared.events import narrate
from shared.operations import WorkerDelete

MIB = 1024 * 1024
# How much of a worker a hive's plan puts on GPUs: a whole GPU or a split over several beat part of one,
# which beats the CPU alone.
PLAN_RANK = {"gpu": 3, "split": 3, "partial": 2, "cpu": 1}


class NoRoom(QueenError):
    title = "No hive has room"
    code = "NO_ROOM"
    status = 503


@dataclass
class HiveFit:
    alias: str
    has_model: bool = False
    needs_mb: float | None = None
    free_mb: float | None = None
    cores_free: int | None = None
    problem: str | None = None  # why it cannot take the worker
    answered: bool = False  # its capabilities and catalog were had
    plan_kind: str | None = None  # the hive's plan for the worker (gpu, split, partial, cpu); None: not known
    vram_free_mb: float = 0.0  # free memory of the GPUs its llama.cpp can use
    gpu_if_freed: bool = False  # the plan would be a whole GPU (or a split) were its GPU workers stopped
    saved_chunks: int = 0  # chunks of the request's prompt it keeps on disk (a prompt cache: queen/prefix_index.py)

    @property
    def fits(self) -> bool:
        return self.problem is None


async def survey(hives: HiveRegistry, alias: str, model: str) -> HiveFit:
    """What one hive has and has room for (its capabilities and catalog, asked now)."""
    fit = HiveFit(alias)
    try:
        url = await hives.ensure_running(alias)
        caps = await hives.clients_for(alias).daemon(url).request("GET", "/v1/capabilities", timeout=10)
        listed = await hive_models(hives, alias)
    except RbeeError as exc:
        fit.problem = exc.message
        return fit
    fit.answered = True
    entry = next((m for m in listed if m.get("id") == model), None)
    fit.has_model = entry is not None
    if entry is not None:
        fit.needs_mb = (entry.get("estimate") or {}).get("total_mb")
        plan = entry.get("plan") or {}
        fit.plan_kind = plan.get("kind")
        fit.gpu_if_freed = plan.get("if_gpus_freed") in ("gpu", "split")
        if plan.get("code") == "NO_FIT":
            fit.problem = plan.get("error") or "the model does not fit"
    if caps.get("gpu_offload"):
        fit.vram_free_mb = float(sum(g.get("memory_free_mb") or 0 for g in caps.get("gpus") or []))
    if caps.get("ram_available_bytes"):
        fit.free_mb = caps["ram_available_bytes"] / MIB
    fit.cores_free = caps.get("cores_free")
    return fit


async def place(hives: HiveRegistry, workers: WorkerRegistry, model: str, allowed: list[str], *,
                evict: bool = True, needs_core: bool = True, device: str = "auto",
                saved_chunks: dict[str, int] | None = None) -> str:
    """The hive to start a worker of `model` on, among `allowed` (the hives under their worker cap);
    `evict`: whether another model's idle worker may be stopped to make room; `needs_core`: False for a
    worker that shares cores (an embedding worker, which stays off GPUs), so only memory counts;
    `device`: the spawn's (only auto weighs GPUs); `saved_chunks`: how much of the request's prompt each
    hive keeps on disk (among equal plans, the hive that keeps more of it)."""
    fits = list(await asyncio.gather(*(survey(hives, alias, model) for alias in allowed)))
    for fit in fits:
        fit.saved_chunks = (saved_chunks or {}).get(fit.alias, 0)
    if len(fits) == 1 and not fits[0].answered:
        return fits[0].alias  # the one hive it may go to: starting the worker there says best what is wrong
    known_need = next((f.needs_mb for f in fits if f.needs_mb is not None), None)
    for fit in fits:
        if fit.problem is not None:
            continue
        need = fit.needs_mb if fit.needs_mb is not None else known_need
        fit.needs_mb = need
        on_cpu = fit.plan_kind in (None, "cpu") or device == "cpu" or not needs_core
        if needs_core and on_cpu and fit.cores_free is not None and fit.cores_free < 1:
            fit.problem = "every core runs a worker already"
        elif on_cpu and need is not None and fit.free_mb is not None and need > fit.free_mb:
            fit.problem = f"needs {need:.0f} MiB, has {fit.free_mb:.0f} MiB free"
    usable = rank([f for f in fits if f.fits], known_need) if device == "auto" and needs_core else \
        sorted((f for f in fits if f.fits), key=lambda f: (f.saved_chunks, f.has_model, f.free_mb or 0.0), reverse=True)
    on_gpu = bool(usable) and PLAN_RANK.get(usable[0].plan_kind or "", 0) == PLAN_RANK["gpu"]
    if evict and device == "auto" and needs_core and not on_gpu \
            and (freed := await _free_gpu(hives, workers, model, fits)) is not None:
        return freed
    if not usable and evict and (made := await _make_room(hives, workers, model, fits)) is not None:
        return made
    if not usable:
        raise NoRoom(f"No hive has room for a worker of {model}: "
                     + "; ".join(f"{f.alias}: {f.problem}" for f in fits)
                     + ". Stop a worker (`rbee worker delete ID`), or add a hive.")
    best = usable[0]
    need_text = f"{best.needs_mb:.0f} MiB" if best.needs_mb is not None else "an unknown amount until it is downloaded"
    if len(fits) == 1:
        return best.alias  # no choice to explain
    others = [f"{f.alias} ({f.problem})" for f in fits if f is not best and f.problem]
    where = {"gpu": "on a GPU", "split": "split over GPUs", "partial": "partly on a GPU", "cpu": "on the CPU"}
    gpus = any(f.vram_free_mb or f.plan_kind not in (None, "cpu") for f in fits)  # else say it as before GPUs
    room = (f"{best.vram_free_mb:.0f} MiB of VRAM and {best.free_mb or 0:.0f} MiB of RAM free" if gpus
            else f"{best.free_mb or 0:.0f} MiB free")
    narrate("placement", f"Placing {model} on {best.alias}"
                         + (f" ({where[best.plan_kind]})" if gpus and best.plan_kind in where else "")
                         + f": {'has the model' if best.has_model else 'will fetch it'}, needs {need_text}, {room}"
                         + (f"; not on {', '.join(others)}" if others else ""), target=best.alias)
    return best.alias


def rank(usable: list[HiveFit], known_need_mb: float | None = None) -> list[HiveFit]:
    """Hives with room, best first: the most of the worker on GPUs, then the most of the prompt kept on
    disk, then the most free VRAM, then the model's file already there, then the most free RAM. A hive without the file has no plan yet: it is
    counted as a whole GPU when its free VRAM holds the model's estimate elsewhere, part of one when it
    has any, else the CPU."""
    def plan_rank(fit: HiveFit) -> int:
        if fit.plan_kind is not None:
            return PLAN_RANK.get(fit.plan_kind, 0)
        if fit.vram_free_mb and known_need_mb is not None and fit.vram_free_mb >= known_need_mb:
            return PLAN_RANK["gpu"]
        return PLAN_RANK["partial"] if fit.vram_free_mb else PLAN_RANK["cpu"]
    return sorted(usable, key=lambda f: (plan_rank(f), f.saved_chunks, f.vram_free_mb, f.has_model, f.free_mb or 0.0),
                  reverse=True)


def gpu_victim(workers: WorkerRegistry, model: str, fits: list[HiveFit]) -> tuple[WorkerInfo, HiveFit] | None:
    """The least recently used idle GPU worker of another model on a hive whose plan for `model` would be
    a whole GPU (or a split) without its GPU workers, and that hive; None when there is none."""
    idle = [(w, f) for f in fits if f.gpu_if_freed for w in workers.all()
            if w.hive_id == f.alias and w.alive and w.idle and w.model != model and w.device != "cpu"]
    return min(idle, key=lambda pair: pair[0].last_used) if idle else None


async def _free_gpu(hives: HiveRegistry, workers: WorkerRegistry, model: str, fits: list[HiveFit]) -> str | None:
    """Stop the least recently used idle GPU worker of another model on a hive where `model` would then
    have a whole GPU (or a split); the hive, or None when there is no such worker."""
    chosen = gpu_victim(workers, model, fits)
    if chosen is None:
        return None
    victim, fit = chosen
    idle = f"{time.monotonic() - victim.last_used:.0f}"
    return await _evict(hives, workers, victim, fit, f"{model} would run on a GPU of {fit.alias} that "
                        f"{victim.worker_id} holds ({victim.model}, idle for {idle} s, the least recently used): "
                        "stopping it to free its VRAM")


async def _make_room(hives: HiveRegistry, workers: WorkerRegistry, model: str, fits: list[HiveFit]) -> str | None:
    """Stop the least recently used idle worker of another model on a reachable hive that lacks room (one
    with the model's file first); the hive it ran on, or None when every worker there is busy."""
    full = [f for f in fits if f.free_mb is not None or f.cores_free is not None]  # answered, but no room
    idle = [(w, f) for f in full for w in workers.all()
            if w.hive_id == f.alias and w.alive and w.idle and w.model != model]
    if not idle:
        return None
    victim, fit = min(idle, key=lambda pair: (not pair[1].has_model, pair[0].last_used))
    idle_s = f"{time.monotonic() - victim.last_used:.0f}"
    return await _evict(hives, workers, victim, fit, f"No hive has room for {model}: stopping {victim.worker_id} "
                        f"({victim.model}, idle for {idle_s} s, the least recently used) on {fit.alias} to make room")


async def _evict(hives: HiveRegistry, workers: WorkerRegistry, victim: WorkerInfo, fit: HiveFit, story: str) -> str:
    """Stop `victim` on its hive, telling `story`; the hive it ran on."""
    workers.mark(victim.worker_id, WorkerStatus.STOPPED)  # before any await: nobody leases it meanwhile
    narrate("evict", story, target=victim.worker_id, level="warn")
    await hives.forward(WorkerDelete(hive_id=fit.alias, id=victim.worker_id))
    workers.forget(victim.worker_id)
    return fit.alias
