"""`infer`: lease a worker, run the generation on it, forward its tokens into the queen's job."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

from queen.errors import HiveUnavailable, WorkerCrashed, WorkerDrained, WorkerRefused, WorkerStopped
from queen.forwarding import RemoteJobFailed, RemoteJobLost, run_remote_job
from queen.model_names import resolve_model
from queen.scheduler import Scheduler
from queen.worker_registry import WorkerInfo, WorkerRegistry, WorkerStatus
from shared.errors import RbeeError, ServerError, StreamTimeout
from shared.events import Error, Event, Started, Token, detached_task, emit, narrate
from shared.job_client import Clients
from shared.job_registry import Job
from shared.operations import Infer
from shared.prefix_chain import chain, serialize, with_answer

# A worker answering these at submit is alive and well; any other refusal means it is not the worker it was.
ANSWERS_OF_A_LIVE_WORKER = frozenset({"QUEUE_FULL", "NOT_READY", "INVALID_REQUEST", "PROMPT_TOO_LONG"})
START_ATTEMPTS = 3  # workers tried for a request that could not start, before the job fails
MOVES = 2  # times a generation whose worker (or its link) was lost is continued on another worker


@dataclass
class Progress:
    """What a generation has produced so far, across the workers it ran on: the client's text, and the
    token ids behind it (known up to `ids_text_len` characters) that another worker continues from."""

    parts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    ids_text_len: int = 0  # characters of the text the ids account for
    skip: int = 0  # characters a continuing worker repeats (text sent after the last known ids)
    first_token_at: float | None = None
    moves: int = 0

    @property
    def text_len(self) -> int:
        return sum(len(p) for p in self.parts)


class InferenceRunner:
    def __init__(self, scheduler: Scheduler, workers: WorkerRegistry, clients: Clients,
                 progress_timeout_s: float = 20.0) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self._clients = clients
        self._progress_timeout_s = progress_timeout_s

    async def infer(self, op: Infer, job: Job, progress: Progress | None = None) -> dict[str, Any]:
        """The generation's result; `progress` (if given) holds its text so far, should it be cancelled."""
        started = time.perf_counter()
        # What a hive catalogs it as, and its workers report (a short alias stands for its model).
        model = await resolve_model(op.model, self.scheduler.hives, self.workers)
        progress = progress or Progress()
        prompt_text = serialize(op.prompt, op.messages)
        prefix = chain(prompt_text)  # for the worker that holds most of its cache
        attempt = 0
        lost: RbeeError | None = None  # why the answer is being moved, if it is
        while True:
            attempt += 1
            try:
                worker = await self.scheduler.acquire(model, op.hive_id, job.id, waiting=job.set_waiting,
                                                      device=op.device, prefix=prefix, owner=job.owner)
            except RbeeError as exc:
                if lost is not None:  # nowhere to move it (say, the one hive it must run on is out of reach)
                    narrate("infer_move_failed", f"Could not continue it elsewhere: {exc.message}", level="error")
                    raise lost from None
                raise
            try:
                result = await self._generate(worker, op, started, progress)
                # a continued answer's cache is its last worker's alone: not worth it; a count loads no cache
                if not progress.moves and not op.count_only:
                    remember_cache(worker, op, prompt_text, prefix, result)
                return result
            except WorkerRefused as exc:  # nothing of this attempt reached the client: another may take it
                if attempt >= START_ATTEMPTS + progress.moves:
                    raise
                narrate("infer_retry", f"{exc.message} Trying another worker.", target=worker.worker_id,
                        level="warn")
            except (WorkerCrashed, HiveUnavailable) as exc:  # lost mid-generation
                left = op.max_tokens - len(progress.ids)
                pinned_away = op.hive_id is not None and isinstance(exc, HiveUnavailable)  # its one hive is gone
                if progress.moves >= MOVES or left < 1 or exc.code == "WORKER_HUNG" or pinned_away:
                    raise
                progress.moves += 1
                progress.skip = progress.text_len - progress.ids_text_len
                lost = exc
                narrate("infer_moved", f"{exc.message.split(' (')[0]}; continuing the same answer on another worker "
                                       f"from its {len(progress.ids)} tokens", target=worker.worker_id, level="warn")
            finally:
                self.workers.release(worker, job.id)

    @staticmethod
    async def _unless_moved(worker: WorkerInfo, generation: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """The generation's end stats, or WorkerDrained once its worker is drained past its deadline first
        (the generation there is cancelled; the caller continues it on another worker)."""
        run = asyncio.ensure_future(generation)
        moved = asyncio.ensure_future(worker.move_out.wait())
        try:
            await asyncio.wait({run, moved}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
            if not run.done():  # cancelled with us, or the worker's deadline passed
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
        if run.cancelled():
            raise WorkerDrained(f"Worker {worker.worker_id} on hive {worker.hive_id} is being drained and its "
                                "deadline passed")
        return run.result()

    async def _generate(self, worker: WorkerInfo, op: Infer, started: float, progress: Progress) -> dict[str, Any]:
        # A worker that sends nothing (no token, no keep-alive ping) for the progress timeout is hung: the
        # stream gets half of it, plus one resume.
        half = self._progress_timeout_s / 2
        client = self.scheduler.hives.clients_for(worker.hive_id).jobs(
            worker.url, path="/v1/inference", max_resumes=1, resume_backoff=0.05, stream_idle_timeout=half,
            request_timeout=half)
        parts = progress.parts  # the client's one answer, whichever workers it came from
        request = op.to_request()
        carried = len(progress.ids)
        if carried:  # a continuation: the tokens so far follow the prompt, and fewer remain
            request = dataclasses.replace(request, continue_ids=tuple(progress.ids), max_tokens=op.max_tokens - carried)
        base = progress.ids_text_len  # where this worker's text starts in the client's
        own = 0  # characters this worker sent (the first `progress.skip` of them the client has already)

        def on_event(event: Event) -> None:
            nonlocal own
            if isinstance(event, Token):
                own += len(event.t)
                if event.ids:
                    progress.ids.extend(event.ids)
                    progress.ids_text_len = base + own
                text = event.t
                if progress.skip:
                    cut = min(progress.skip, len(text))
                    text, progress.skip = text[cut:], progress.skip - cut
                if text:
                    if progress.first_token_at is None:
                        progress.first_token_at = time.perf_counter()
                    parts.append(text)
                    emit(Token(t=text, i=len(parts) - 1, logprobs=event.logprobs))
            elif isinstance(event, Started):  # the worker took it (its first event)
                verb = "Continuing" if carried else "Generating"
                narrate("infer_start", f"{verb} on {worker.worker_id} ({worker.model}, hive {worker.hive_id})",
                        target=worker.worker_id)
            elif isinstance(event, Error):
                emit(event)

        try:
            stats = await self._unless_moved(worker, run_remote_job(client, request, on_event=on_event,
                                                                    failed_code="GENERATION_FAILED"))
        except ServerError as exc:  # it answered at submit: busy or a bad request is ours to report as is
            if exc.code in ANSWERS_OF_A_LIVE_WORKER or 400 <= exc.status < 500 or exc.status == 503:
                raise
            self.workers.mark(worker.worker_id, WorkerStatus.CRASHED)
            raise WorkerRefused(f"Worker {worker.worker_id} on hive {worker.hive_id} did not take the request: "
                                f"{exc.message}") from exc
        except RemoteJobFailed as exc:
            if exc.code != "REMOTE_CANCELLED":
                raise
            self.workers.mark(worker.worker_id, WorkerStatus.STOPPED)
            raise WorkerStopped(f"Worker {worker.worker_id} on hive {worker.hive_id} stopped mid-answer after "
                                f"{len(parts)} tokens (it, or its hive, was shut down). Ask again: another worker "
                                "will answer.") from exc
        except RemoteJobLost as exc:
            if (why := await self.scheduler.hives.link_lost(worker.hive_id)) is not None:
                # The machine went out of reach, not the worker: it comes back with the link.
                self.workers.mark(worker.worker_id, WorkerStatus.UNREACHABLE)
                message = (f"Lost the connection to {worker.hive_id} ({why}) after {len(parts)} tokens from "
                           f"{worker.worker_id}.")
                if not exc.submitted:
                    raise WorkerRefused(message, code="HIVE_UNREACHABLE") from exc
                raise HiveUnavailable(message + " rbee reconnects by itself; ask again once it is back, or on "
                                      "another hive.", code="HIVE_UNREACHABLE") from exc
            self.workers.mark(worker.worker_id, WorkerStatus.CRASHED)
            detached_task(self.scheduler.hives.ask_to_stop_worker(worker.hive_id, worker.worker_id),
                          name=f"stop-{worker.worker_id}")
            where = f"Worker {worker.worker_id} on hive {worker.hive_id}"
            if not exc.submitted:
                raise WorkerRefused(f"{where} did not take the request: {exc.message}.") from exc
            if isinstance(exc.__cause__, StreamTimeout):
                raise WorkerCrashed(f"{where} made no progress for {self._progress_timeout_s:g} s after {len(parts)} "
                                    "tokens (no token, no keep-alive): it is hung, and its hive is told to stop it. "
                                    "Ask again: another worker will answer.", code="WORKER_HUNG") from exc
            raise WorkerCrashed(f"{where} died mid-generation after {len(parts)} tokens ({exc.message}). The next "
                                "request will start a fresh worker.") from exc
        return {
            "text": "".join(parts),
            "tokens_out": (stats.get("tokens_out") or 0) + carried if carried else stats.get("tokens_out"),
            "prompt_tokens": stats.get("prompt_tokens"),
            "prompt_tokens_reused": stats.get("prompt_tokens_reused"),  # found in the worker's KV cache
            "ttft_ms": round((progress.first_token_at - started) * 1000, 2) if progress.first_token_at else None,
            "tokens_per_s": stats.get("tokens_per_s"),
            "stop_reason": stats.get("stop_reason"),
            "stop_sequence": stats.get("stop_sequence"),  # the stop string that ended it, if one did
            "worker_id": worker.worker_id,
            "hive_id": worker.hive_id,
            "model": worker.model,
        }


def remember_cache(worker: WorkerInfo, op: Infer, prompt_text: str, prefix: Sequence[int],
                   result: dict[str, Any]) -> None:
    """What the worker now holds: its index corrected by what it reused of this prompt, then this prompt
    with its answer (the next turn of the conversation starts with both)."""
    index = worker.prefixes
    index.capacity = worker.slots
    index.learn(len(prompt_text), result.get("prompt_tokens"))
    if isinstance(reused := result.get("prompt_tokens_reused"), int):
        index.correct(prefix, reused)
    index.record(chain(with_answer(op.prompt, op.messages, str(result.get("text") or ""))))
