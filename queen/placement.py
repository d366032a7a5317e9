"""Where a new worker goes when the request names no hive: a hive that has the model and room for it,
else one with room that can fetch it. Room is the worker's memory estimate (from the GGUF's metadata,
computed by each hive for its own context and slots) against the hive's available memory, and a free
core. When no hive has room for a model that has no worker yet, the least recently used idle worker of
another model is stopped to make some (never one with requests in flight); when none is idle either, the
error names every hive and why."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from queen.errors import QueenError
from queen.hives import HiveRegistry
from queen.model_names import hive_models
from queen.worker_registry import WorkerRegistry, WorkerStatus
from shared.errors import RbeeError
from shared.events import narrate
from shared.operations import WorkerDelete

MIB = 1024 * 1024


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
    if caps.get("ram_available_bytes"):
        fit.free_mb = caps["ram_available_bytes"] / MIB
    fit.cores_free = caps.get("cores_free")
    return fit


async def place(hives: HiveRegistry, workers: WorkerRegistry, model: str, allowed: list[str], *,
                evict: bool = True, needs_core: bool = True) -> str:
    """The hive to start a worker of `model` on, among `allowed` (the hives under their worker cap);
    `evict`: whether another model's idle worker may be stopped to make room; `needs_core`: False for a
    worker that shares cores (an embedding worker), so only memory counts."""
    fits = list(await asyncio.gather(*(survey(hives, alias, model) for alias in allowed)))
    if len(fits) == 1 and not fits[0].answered:
        return fits[0].alias  # the one hive it may go to: starting the worker there says best what is wrong
    known_need = next((f.needs_mb for f in fits if f.needs_mb is not None), None)
    for fit in fits:
        if fit.problem is not None:
            continue
        need = fit.needs_mb if fit.needs_mb is not None else known_need
        fit.needs_mb = need
        if needs_core and fit.cores_free is not None and fit.cores_free < 1:
            fit.problem = "every core runs a worker already"
        elif need is not None and fit.free_mb is not None and need > fit.free_mb:
            fit.problem = f"needs {need:.0f} MiB, has {fit.free_mb:.0f} MiB free"
    usable = [f for f in fits if f.fits]
    if not usable and evict and (made := await _make_room(hives, workers, model, fits)) is not None:
        return made
    if not usable:
        raise NoRoom(f"No hive has room for a worker of {model}: "
                     + "; ".join(f"{f.alias}: {f.problem}" for f in fits)
                     + ". Stop a worker (`rbee worker delete ID`), or add a hive.")
    best = max(usable, key=lambda f: (f.has_model, f.free_mb or 0.0))  # the file there, then the most room
    need = f"{best.needs_mb:.0f} MiB" if best.needs_mb is not None else "an unknown amount until it is downloaded"
    if len(fits) == 1:
        return best.alias  # no choice to explain
    others = [f"{f.alias} ({f.problem})" for f in fits if f is not best and f.problem]
    narrate("placement", f"Placing {model} on {best.alias}: {'has the model' if best.has_model else 'will fetch it'}, "
                         f"needs {need}, {best.free_mb or 0:.0f} MiB free"
                         + (f"; not on {', '.join(others)}" if others else ""), target=best.alias)
    return best.alias


async def _make_room(hives: HiveRegistry, workers: WorkerRegistry, model: str, fits: list[HiveFit]) -> str | None:
    """Stop the least recently used idle worker of another model on a reachable hive that lacks room (one
    with the model's file first); the hive it ran on, or None when every worker there is busy."""
    full = [f for f in fits if f.free_mb is not None or f.cores_free is not None]  # answered, but no room
    idle = [(w, f) for f in full for w in workers.all()
            if w.hive_id == f.alias and w.alive and w.idle and w.model != model]
    if not idle:
        return None
    victim, fit = min(idle, key=lambda pair: (not pair[1].has_model, pair[0].last_used))
    workers.mark(victim.worker_id, WorkerStatus.STOPPED)  # before any await: nobody leases it meanwhile
    narrate("evict", f"No hive has room for {model}: stopping {victim.worker_id} ({victim.model}, idle for "
                     f"{time.monotonic() - victim.last_used:.0f} s, the least recently used) on {fit.alias} "
                     "to make room", target=victim.worker_id, level="warn")
    await hives.forward(WorkerDelete(hive_id=fit.alias, id=victim.worker_id))
    workers.forget(victim.worker_id)
    return fit.alias
