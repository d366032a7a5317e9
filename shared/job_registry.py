"""Jobs: one task each, a bounded log of encoded events, and any number of readers following it.

Readers never get a queue of their own: each follows the job's shared log at its own pace. A slow reader
therefore neither blocks the job nor other readers, and pins no more memory than the log itself, which
is bounded per job. Finished jobs are evicted after a retention period.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Protocol

from shared.errors import AmbiguousId, JobConflict, JobNotFound, RbeeError
from shared.events import End, Error, Event, JobState, Narration, Token, bind_job, encode_event, unbind_job
from shared.operations import Operation

log = logging.getLogger("rbee.jobs")


Executor = Callable[[Operation, "Job"], Awaitable["dict[str, Any] | None"]]
Cleanup = Callable[[], Awaitable[None]]
JobListener = Callable[["Job"], Any]


@dataclass(frozen=True)
class JobLimits:
    max_events: int = 20_000  # per job; older events are dropped (readers are told) beyond this
    retention_s: float = 600.0  # how long a finished job stays readable
    max_finished: int = 1_000  # and at most this many finished jobs are kept
    max_finished_bytes: int = 64 << 20  # and at most about this much of their requests and answers


ABOUT_CHARS = 120


def about(operation: Operation) -> str:
    """A line saying what a job is about, for listings: the start of its prompt or last message, or its
    model, alias or id."""
    messages = getattr(operation, "messages", None)
    text = (getattr(operation, "prompt", None) or (messages[-1][1] if messages else None)
            or getattr(operation, "model", None) or getattr(operation, "alias", None)
            or getattr(operation, "id", None) or "")
    text = " ".join(str(text)[:ABOUT_CHARS * 2].split())
    return text[:ABOUT_CHARS] + ("…" if len(text) > ABOUT_CHARS else "")


class Job:
    """One operation running (or run) on this server, and the story of it so far."""

    def __init__(self, operation: Operation, limits: JobLimits, actor: str, owner: str | None = None,
                 own_only: bool = False) -> None:
        self.id = f"job-{uuid.uuid4()}"
        self.operation = operation
        self.owner = owner  # the API key that made it (queen); None: the daemon's own token
        self.own_only = own_only  # its owner sees only its own things (a key below admin)
        self.state = JobState.QUEUED
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None  # {"code", "message", "status": the HTTP status it means}
        self.actor = actor
        self._limits = limits
        self._log: list[str] = []  # encoded events; _log[k] has sequence number _first_seq + k
        self._first_seq = 0
        self._log_bytes = 0  # what the kept events take
        self._changed = asyncio.Event()
        self._cleanups: list[Cleanup] = []
        self._task: asyncio.Task[None] | None = None
        self.readers = 0  # open streams following this job
        self.tokens_streamed = 0  # what an answer cut short (cancelled, revoked, failed) still sent

    # -- writing --------------------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._first_seq + len(self._log)

    def emit(self, event: Event) -> int:
        """Append an event to the job's log and wake its readers; returns the event's sequence number."""
        if self.state.finished:
            raise RuntimeError(f"{self.id} is {self.state.value}; it takes no more events")
        if isinstance(event, Token):
            self.tokens_streamed += len(event.ids) if event.ids else 1
        return self._append(encode_event(event))

    def emit_while_running(self, event: Event) -> None:
        """The job's narration sink: an event from work that outlived the job goes to the log instead."""
        if self.state.finished:
            log.info("%s (after %s ended): %s", self.actor, self.id, encode_event(event))
        else:
            self.emit(event)

    def _append(self, encoded: str) -> int:
        seq = self.next_seq
        self._log.append(encoded)
        self._log_bytes += len(encoded)
        overflow = len(self._log) - self._limits.max_events
        if overflow > 0:
            # Drop in chunks so trimming stays amortised O(1) per event.
            drop = max(overflow, self._limits.max_events // 4)
            self._log_bytes -= sum(len(e) for e in self._log[:drop])
            del self._log[:drop]
            self._first_seq += drop
        self._changed.set()
        self._changed = asyncio.Event()
        return seq

    def set_waiting(self, waiting: bool) -> None:
        """A running job that waits its turn for something (a free worker slot) reads as queued meanwhile."""
        if not self.state.finished:
            self.state = JobState.QUEUED if waiting else JobState.RUNNING

    def add_cleanup(self, cleanup: Cleanup) -> None:
        """Run `cleanup` when the job ends, however it ends (last added runs first)."""
        self._cleanups.append(cleanup)

    # -- reading --------------------------------------------------------------------------------------

    async def follow(self, after: int = -1, max_batch: int = 256) -> AsyncIterator[list[tuple[int, str]]]:
        """Yield batches of (sequence number, encoded event) from just after `after` until the job ends.

        A batch holds everything already logged (up to `max_batch`), so a reader that is behind catches
        up in few writes. Sequence number -1 marks a notice that events were dropped from the log.
        """
        seq = after + 1
        while True:
            batch: list[tuple[int, str]] = []
            if seq < self._first_seq:
                missed = self._first_seq - seq
                seq = self._first_seq
                batch.append((-1, encode_event(Narration(
                    actor=self.actor, action="events_dropped", level="warn", job_id=self.id,
                    human=f"{missed} earlier events of this job are no longer kept and were skipped.",
                ))))
            end = min(self.next_seq, seq + max_batch)
            start = seq - self._first_seq
            batch.extend(zip(range(seq, end), self._log[start:start + end - seq]))
            seq = end
            if batch:
                yield batch
            elif self.state.finished:
                return
            else:
                await self._changed.wait()

    def kept_events(self) -> Iterator[str]:
        """The encoded events the log still holds, oldest first (a listener reading a finished job's story)."""
        return iter(self._log)

    async def wait(self) -> JobState:
        while not self.state.finished:
            await self._changed.wait()
        return self.state

    @property
    def size_bytes(self) -> int:
        """Roughly what the job holds: its request's texts and its answer (the rest is small)."""
        op = self.operation
        texts = [getattr(op, "prompt", None) or ""] + [c for _, c in getattr(op, "messages", None) or ()]
        texts += getattr(op, "input", None) or ()  # embed's texts
        texts.append(getattr(op, "grammar", None) or "")
        if (schema := getattr(op, "json_schema", None)) is not None:
            texts.append(json.dumps(schema))
        answer = (self.result or {}).get("text") or ""
        vectors = (self.result or {}).get("embeddings") or ()
        return (512 + self._log_bytes + sum(len(t) for t in texts) + (len(answer) if isinstance(answer, str) else 0)
                + 32 * sum(len(v) for v in vectors))  # a float in a Python list: ~32 bytes

    def summary(self, *, full: bool = True) -> dict[str, Any]:
        """The job at a glance; `full` adds the whole request (listings leave it out: it may be a
        megabyte of prompt)."""
        out = {
            "job_id": self.id,
            "operation": self.operation.name,
            "about": about(self.operation),
            "state": self.state.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "events": self.next_seq,
            "error": self.error,
            "key": self.owner,
        }
        if full:
            out["request"] = self.operation.redacted()
            out["result"] = self.result
        return out

    # -- lifecycle (driven by the registry) -------------------------------------------------------------

    def _finish(self, state: JobState, stats: dict[str, Any] | None = None) -> None:
        self._append(encode_event(End(state=state, stats=stats or {})))
        self.state = state
        self.finished_at = time.time()
        self._changed.set()

    async def _run_cleanups(self) -> None:
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                await asyncio.shield(cleanup())
            except Exception:  # one failing cleanup must not skip the others
                log.exception("cleanup of %s failed", self.id)


Cursor = tuple[float, str]  # (created_at, job_id): where a page of the job list ends


class JobHistory(Protocol):
    """Where finished jobs outlive the registry (the queen keeps them in SQLite, at appkeys.JOB_HISTORY)."""

    async def get(self, job_id: str, *, owner: str | None = None) -> dict[str, Any] | None: ...

    async def list(self, *, limit: int, before: Cursor | None, owner: str | None = None) -> list[dict[str, Any]]: ...


class JobRegistry:
    """Creates jobs, runs each in its own task, cancels them, and forgets finished ones in time.

    Every request looks a job up and every finished job may evict others, so neither may cost in
    proportion to the jobs kept: ids are found in a dict (a prefix by bisecting a sorted list of them),
    and finished jobs wait in finish order beside a running total of their sizes, so eviction only
    looks at the oldest.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        actor: str = "rbee",
        limits: JobLimits = JobLimits(),
        max_running: int | None = None,
    ) -> None:
        self._executor = executor
        self._actor = actor
        self._limits = limits
        self._jobs: dict[str, Job] = {}
        self._sorted_ids: list[str] = []  # for prefix lookups
        self._finished: OrderedDict[str, int] = OrderedDict()  # finished job id -> its size, oldest first
        self._finished_bytes = 0  # sum of _finished's sizes
        self._slots = asyncio.Semaphore(max_running) if max_running else None
        self._listeners: list[JobListener] = []
        self._submit_listeners: list[JobListener] = []

    def on_finish(self, listener: JobListener) -> None:
        """Call `listener(job)` when any job ends (the queen records history this way)."""
        self._listeners.append(listener)

    def on_submit(self, listener: JobListener) -> None:
        """Call `listener(job)` when a job is created."""
        self._submit_listeners.append(listener)

    def submit(self, operation: Operation, *, owner: str | None = None, own_only: bool = False) -> Job:
        job = Job(operation, self._limits, self._actor, owner, own_only)
        self._jobs[job.id] = job
        bisect.insort(self._sorted_ids, job.id)
        job._task = asyncio.create_task(self._run(job), name=job.id)
        job._task.add_done_callback(lambda _task: self._end_if_never_ran(job))
        for listener in self._submit_listeners:
            listener(job)
        return job

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job `job_id` names: its whole id, or a unique beginning of it; with `owner`, only a job of
        that owner (another's is not found, as if it did not exist)."""
        job = self._jobs.get(job_id)
        if job is None:
            job = self._by_prefix(job_id, owner=owner)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"No job with id '{job_id}' (finished jobs are kept for "
                              f"{self._limits.retention_s:g} s).")
        return job

    def _by_prefix(self, given: str, prefix: str = "job-", owner: str | None = None) -> Job | None:
        """The one job whose id begins with `given` (with or without "job-"), like git's short hashes."""
        if not given:
            return None
        matches: list[str] = []
        for start in {given, prefix + given}:
            k = bisect.bisect_left(self._sorted_ids, start)
            while k < len(self._sorted_ids) and self._sorted_ids[k].startswith(start) and len(matches) <= 5:
                if owner is None or self._jobs[self._sorted_ids[k]].owner == owner:
                    matches.append(self._sorted_ids[k])
                k += 1
        matches = sorted(set(matches))
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", …" if len(matches) > 5 else "")
            raise AmbiguousId(f"'{given}' begins {'more than 5' if len(matches) > 5 else len(matches)} "
                              f"job ids ({shown}); type more of it.")
        return self._jobs.get(matches[0]) if matches else None

    def jobs(self) -> Iterable[Job]:
        return self._jobs.values()

    def cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        job = self.get(job_id, owner=owner)
        if job.state.finished:
            raise JobConflict(f"Job '{job_id}' already ended ({job.state.value}); nothing to cancel.")
        if job._task is not None:
            job._task.cancel()
        return job

    async def cancel_all(self) -> None:
        """Cancel every unfinished job and wait for them to end (server shutdown)."""
        tasks = [j._task for j in self._jobs.values() if j._task and not j.state.finished]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def evict(self, now: float | None = None) -> int:
        """Forget finished jobs past retention, and the oldest beyond `max_finished` or beyond
        `max_finished_bytes` of requests and answers all together."""
        now = time.time() if now is None else now
        limits = self._limits
        evicted = 0
        while self._finished:
            oldest_id = next(iter(self._finished))
            oldest = self._jobs[oldest_id]
            if (len(self._finished) <= limits.max_finished and self._finished_bytes <= limits.max_finished_bytes
                    and now - (oldest.finished_at or now) < limits.retention_s):
                break
            size = self._finished.pop(oldest_id)
            self._finished_bytes -= size
            del self._jobs[oldest_id]
            del self._sorted_ids[bisect.bisect_left(self._sorted_ids, oldest_id)]
            evicted += 1
        return evicted

    def _count_finished(self, job: Job) -> None:
        size = job.size_bytes  # final: a finished job takes no more events
        self._finished[job.id] = size
        self._finished_bytes += size

    async def evict_forever(self) -> None:
        period = min(max(self._limits.retention_s / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(period)
            self.evict()

    async def _run(self, job: Job) -> None:
        token = bind_job(job.id, job.emit_while_running, self._actor)
        try:
            state, stats = await self._execute(job)
            try:
                await job._run_cleanups()
            except asyncio.CancelledError:
                state, stats = JobState.CANCELLED, None
            if state is JobState.CANCELLED:
                stats = job.result  # a cleanup may record what was done before the cancel
            job._finish(state, stats)
        finally:
            unbind_job(token)
        self._ended(job)

    def _end_if_never_ran(self, job: Job) -> None:
        """A task cancelled before its first step never runs `_run`: its job ends here, or its readers
        would wait for ever and it would never be evicted."""
        if not job.state.finished:
            job._finish(JobState.CANCELLED)
            self._ended(job)

    def _ended(self, job: Job) -> None:
        self._count_finished(job)
        self.evict()  # at once: a burst of big jobs must not wait for the periodic sweep
        for listener in self._listeners:
            try:
                listener(job)
            except Exception:
                log.exception("job listener failed for %s", job.id)

    async def _execute(self, job: Job) -> tuple[JobState, dict[str, Any] | None]:
        try:
            if self._slots is None:
                return await self._execute_now(job)
            async with self._slots:
                return await self._execute_now(job)
        except asyncio.CancelledError:
            # We own this task; a cancel is the job's outcome, not our own shutdown.
            return JobState.CANCELLED, None
        except RbeeError as exc:
            job.error = {"code": exc.code, "message": exc.message, "status": exc.status}
            if exc.reported:
                return JobState.FAILED, None  # its error event is already in the stream (forwarded)
        except Exception as exc:  # a bug: log the traceback here, give the client one clear line
            log.exception("job %s (%s) crashed", job.id, job.operation.name)
            job.error = {"code": "INTERNAL", "message": f"Internal error in {job.operation.name}: "
                                                          f"{type(exc).__name__}: {exc}", "status": 500}
        job.emit(Error(**job.error))
        return JobState.FAILED, None

    async def _execute_now(self, job: Job) -> tuple[JobState, dict[str, Any] | None]:
        job.state = JobState.RUNNING
        job.started_at = time.time()
        job.result = await self._executor(job.operation, job)
        return JobState.COMPLETED, job.result
