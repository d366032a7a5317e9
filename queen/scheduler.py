"""Finding a worker for a model: a free slot of a running one, else a new worker on a hive (downloading
the model first if needed), else wait for a slot to come free. Each step is narrated.

One model gets one worker per hive by default (`max_workers_per_hive`): its slots serve concurrent
requests in one batch, which beats two processes fighting over the same cores.

Requests wait in one queue per model (and hive, when they name one), so a burst for one model never delays
another model's requests; within a queue, turns go round-robin across API keys, first come first served
within a key (queen/fair_queue.py). Eviction (placement.py) only makes room for a model
that has no worker yet: more workers for a busy model go only where there is free room, otherwise its
requests wait for its own slots. So a burst for one model does not stop other models' workers."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, Callable

from queen.config import QueenConfig
from queen.errors import HiveUnavailable
from queen.fair_queue import FairQueue
from queen.hives import HiveRegistry
from queen.model_names import resolve_model
from queen.model_transfer import ModelTransfers
from queen.placement import NoRoom, place
from queen.prefix_index import DEFAULT_CHARS_PER_TOKEN, MIN_ROUTED_TOKENS, SavedPrefixes
from queen.worker_registry import WorkerInfo, WorkerRegistry, WorkerStatus
from shared.errors import RbeeError
from shared.events import narrate
from shared.models import BUILTIN_MODEL
from shared.operations import DEVICE_AUTO, WorkerSpawn
from shared.prefix_chain import CHUNK_CHARS

DEAD = (WorkerStatus.LOST, WorkerStatus.CRASHED, WorkerStatus.FAILED, WorkerStatus.STOPPED)
ROOM_COMING_S = 5.0  # a worker stopped this recently may still hold its cores in its hive's count
FULL_RECHECK_S = 5.0  # how long "no hive has room for another worker of this model" is believed


SAVED_REPORT_TIMEOUT_S = 1.0  # a hive slower than this to tell its prompt caches is routed without them
log = logging.getLogger("rbee.queen.scheduler")


class Scheduler:
    def __init__(self, config: QueenConfig, hives: HiveRegistry, workers: WorkerRegistry) -> None:
        self.config = config
        self.hives = hives
        self.workers = workers
        self._spawning: dict[tuple[str, str], asyncio.Lock] = {}
        # job ids waiting, per model, hive and kind of worker (embedding or not)
        self._queues: dict[tuple[str, str | None, bool], FairQueue] = {}
        self._owner_of: dict[str, str | None] = {}  # job id -> the API key that made it, while it waits or runs
        self._full_until: dict[tuple[str, str | None, bool], float] = {}  # no room to scale out until then
        self.saved = SavedPrefixes()  # the prompt caches each hive keeps on disk, as it last reported them
        self.transfers = ModelTransfers(hives)

    def queued(self) -> dict[str, int]:
        """Requests waiting for a worker, per model."""
        counts: dict[str, int] = {}
        for (model, _, _), queue in self._queues.items():
            counts[model] = counts.get(model, 0) + len(queue)
        return counts

    async def acquire(self, model: str, hive_id: str | None, job_id: str,
                      waiting: Callable[[bool], None] = lambda _: None, *, embedding: bool = False,
                      device: str = DEVICE_AUTO, prefix: Sequence[int] = (), owner: str | None = None) -> WorkerInfo:
        """Lease a worker for `model` (on `hive_id` if given) to `job_id`; `waiting(True)` while every slot
        is busy, `waiting(False)` once one is had. `embedding`: an embedding worker of the model (started
        apart from its generating ones, queued apart too). `device` (auto | cpu | cuda:N): a new worker is
        started there; other than auto, only a running worker on that kind of device is used. `prefix`: the
        prompt's chunk hashes (queen/prefix_index.py), for the worker that holds most of its cache. `owner`:
        the API key of the request, whose turn comes round-robin with other keys' (fair_queue.py)."""
        if hive_id is not None:  # an unknown hive fails at once; a remote one's running workers are adopted first
            await self.hives.workers_known(hive_id)
            if self.hives.get(hive_id).draining:
                raise HiveUnavailable(f"Hive {hive_id} is draining (`rbee hive drain`): it takes no new requests and "
                                      "stops once its answers are done. Ask without a hive, or another hive.")
        key = (model, hive_id, embedding)
        queue = self._queues.setdefault(key, FairQueue())
        queue.add(job_id, owner)
        self._owner_of[job_id] = owner
        try:
            worker = await self._acquire_in_turn(model, hive_id, job_id, owner, queue, waiting, embedding, device,
                                                 prefix)
            queue.served(owner)
            return worker
        finally:
            queue.remove(job_id, owner)
            if not queue and self._queues.get(key) is queue:
                del self._queues[key]
            self._forget_owners()
            self.workers.notify()  # the next in line looks again

    def _room_coming(self, hive_ids: list[str]) -> bool:
        """Whether room on these hives is about to come free: a worker there is draining (it stops once its
        answers are done or moved), or one stopped moments ago (its hive may still count its cores)."""
        now = time.monotonic()
        return any(w.draining and w.alive and w.hive_id in hive_ids for w in self.workers.all()) or any(
            now - self.workers.gone_at.get(h, -ROOM_COMING_S) < ROOM_COMING_S for h in hive_ids)

    def _running(self, owner: str | None) -> int:
        """Slots held now by requests of `owner`."""
        return sum(1 for w in self.workers.all() for job in w.leases if self._owner_of.get(job, "") == owner)

    def _forget_owners(self) -> None:
        if len(self._owner_of) > 256:  # of jobs neither waiting nor holding a slot any more
            busy = {job for w in self.workers.all() for job in w.leases}
            busy |= {job for q in self._queues.values() for job in q.jobs()}
            self._owner_of = {j: o for j, o in self._owner_of.items() if j in busy}

    async def _acquire_in_turn(self, model: str, hive_id: str | None, job_id: str, owner: str | None,
                               queue: FairQueue, waiting: Callable[[bool], None], embedding: bool = False,
                               device: str = DEVICE_AUTO, prefix: Sequence[int] = ()) -> WorkerInfo:
        key = (model, hive_id, embedding)
        kind = "embedding worker" if embedding else "worker"
        waiting_said = False
        routing = self.config.cache_routing and bool(prefix) and not embedding

        def on_disk(alias: str) -> int:
            return self.saved.held(alias, model, prefix) if routing else 0

        if routing:
            await self._ask_saved([hive_id] if hive_id else self.hives.schedulable(), model, prefix)
        while True:
            guard = self.config.route_guard if self.config.cache_routing else None
            my_turn = queue.next(self._running) == job_id
            worker = (self.workers.with_free_slot(model, hive_id, embedding=embedding, device=device, prefix=prefix,
                                                  guard=guard, on_disk=on_disk)
                      if my_turn else None)
            if worker is not None:
                self.workers.lease(worker, job_id)
                waiting(False)
                live = worker.prefixes.held(prefix) if prefix else 0
                held = worker.prefixes.tokens(max(live, on_disk(worker.hive_id)))
                cache = "" if held < MIN_ROUTED_TOKENS else f"; it holds ~{held:,} tokens of this prompt" \
                    if worker.prefixes.tokens(live) >= held else \
                    f"; it reads ~{held:,} tokens of this prompt back from {worker.hive_id}'s disk"
                narrate("worker_found", f"Using warm {kind} {worker.worker_id} on {worker.hive_id} (slot "
                                        f"{len(worker.leases)} of {worker.slots}{cache})", target=worker.worker_id)
                return worker
            candidates = [hive_id] if hive_id else self.hives.schedulable()
            alive = functools.partial(self.workers.count_alive, model, embedding=embedding)
            room = [h for h in candidates if alive(h) < self.config.max_workers_per_hive]
            has_worker = any(alive(h) for h in candidates)
            lock = self._spawning.setdefault((hive_id or "*", model, embedding), asyncio.Lock())
            if (my_turn and room and not lock.locked()
                    and not (has_worker and time.monotonic() < self._full_until.get(key, 0.0))):
                async with lock:
                    waiting(False)
                    try:
                        await self._stop_dead_workers(room)  # what they hold is room again
                        # Another model's worker is stopped only for a model that has none yet.
                        # An embedding worker shares cores (its hive gives it a few threads): memory only.
                        target = await place(self.hives, self.workers, model, room, evict=not has_worker,
                                             needs_core=not embedding, device=device,
                                             saved_chunks={alias: on_disk(alias) for alias in room})
                    except NoRoom:
                        if not has_worker and not self._room_coming(room):
                            raise
                        target = None  # its own workers' slots come free: wait for one
                        self._full_until[key] = time.monotonic() + FULL_RECHECK_S
                    if target is not None:
                        worker, _ = await self._spawn(model, target, WorkerSpawn(hive_id=target, model=model, device=device,
                                                                              embedding=embedding), embedding=embedding)
                        self.workers.lease(worker, job_id)  # no await between spawn and lease: nobody steals it
                        return worker
            if not waiting_said:
                ahead = queue.ahead(job_id, owner)
                narrate("worker_wait", f"Every {kind} slot for {model} on {hive_id or 'every hive'} is busy; waiting for one"
                        + (f" ({ahead} ahead in its queue)" if ahead else ""), target=model)
                waiting_said = True
                waiting(True)
            await self.workers.wait_for_change(1.0)

    async def _ask_saved(self, aliases: list[str], model: str, prefix: Sequence[int]) -> None:
        """Have the hives' reports of what they keep on disk fresh enough to route by, when they could
        decide this route: the prompt is long enough and no running worker holds enough of it already."""
        if len(prefix) * CHUNK_CHARS < MIN_ROUTED_TOKENS * DEFAULT_CHARS_PER_TOKEN:
            return
        if any(w.prefixes.tokens(w.prefixes.held(prefix)) >= MIN_ROUTED_TOKENS
               for w in self.workers.all() if w.model == model and w.alive):
            return
        now = time.monotonic()

        async def ask(alias: str) -> None:
            url = self.hives.get(alias).url
            models = None
            if url is not None:
                try:
                    body = await self.hives.clients_for(alias).daemon(url).request(
                        "GET", "/v1/prompt-caches", timeout=SAVED_REPORT_TIMEOUT_S)
                    models = body.get("models") if isinstance(body, dict) else None
                except RbeeError as exc:  # an older hive, or one that does not answer now: routed without it
                    log.debug("hive %s did not tell its prompt caches: %s", alias, exc)
            self.saved.update(alias, models, now)

        await asyncio.gather(*(ask(a) for a in aliases if self.saved.stale(a, now, self.workers.gone_at.get(a))))

    async def spawn_placed(self, op: WorkerSpawn) -> dict[str, Any]:
        """`worker_spawn` naming no hive: placed like a request's worker (room is made for a model that has
        no worker yet); the hive's own result."""
        model = await resolve_model(op.model, self.hives, self.workers)
        candidates = self.hives.schedulable()
        alive = functools.partial(self.workers.count_alive, model, embedding=op.embedding)
        room = [h for h in candidates if alive(h) < self.config.max_workers_per_hive]
        kind = "embedding worker(s)" if op.embedding else "worker(s)"
        if not room:
            raise NoRoom(f"Every hive runs {self.config.max_workers_per_hive} {kind} of {model} already "
                         "(the queen's --max-workers-per-hive). Use `rbee worker list`, or name a hive with --hive.")
        has_worker = any(alive(h) for h in candidates)
        await self._stop_dead_workers(room)
        target = await place(self.hives, self.workers, model, room, evict=not has_worker, needs_core=not op.embedding,
                             device=op.device)
        _, result = await self._spawn(model, target, dataclasses.replace(op, hive_id=target, model=model),
                                      embedding=op.embedding)
        return {**result, "hive_id": target}

    async def _spawn(self, model: str, hive_id: str, op: WorkerSpawn | None = None, *,
                     embedding: bool = False) -> tuple[WorkerInfo, dict[str, Any]]:
        """Start a worker (`op`, or one of `model` with the defaults) on `hive_id` and register it."""
        kind = "an embedding worker" if embedding else "a worker"
        narrate("schedule", f"Spawning {kind} of {model} on {hive_id}" if op else
                f"No {kind[kind.index(' ') + 1:]} with a free slot has {model}; spawning one on {hive_id}",
                target=hive_id)
        await self._stop_dead_workers([hive_id])
        if self.config.models_from_hives and model != BUILTIN_MODEL:  # (every hive has the built-in)
            await self.transfers.from_another_hive(model, hive_id)  # rather than from the internet, or not at all
        result = await self.hives.forward(op or WorkerSpawn(hive_id=hive_id, model=model, embedding=embedding))
        # Its ready heartbeat may have arrived already; `add` keeps that record then.
        url = await self.hives.worker_url(hive_id, str(result["url"]))
        return self.workers.add(str(result["worker_id"]), hive_id, url, model, int(result.get("slots") or 1),
                                embedding=embedding, device=str(result.get("device") or "cpu")), result

    async def _stop_dead_workers(self, hive_ids: list[str]) -> None:
        """Workers the queen gave up on (silent, crashed, stopped) are stopped on their hive first."""
        for dead in [w for w in self.workers.all() if w.hive_id in hive_ids and w.state in DEAD]:
            narrate("worker_cleanup", f"Stopping {dead.worker_id} ({dead.state}) before starting another",
                    target=dead.worker_id, level="warn")
            self.workers.forget(dead.worker_id)
            await self.hives.ask_to_stop_worker(dead.hive_id, dead.worker_id)
