"""`embed`: lease an embedding worker of the model (spawning one when none runs), ask it for the vectors.

Embedding workers are separate from a model's generating workers (`WorkerSpawn(embedding=True)`), queued
and counted apart by the scheduler, so embeddings never wait behind a long generation and generation is
never sent to a worker that cannot generate. A worker's answer is one short request, not a stream.
"""

from __future__ import annotations

import time
from typing import Any

from queen.errors import WorkerRefused
from queen.inference import ANSWERS_OF_A_LIVE_WORKER, START_ATTEMPTS, InferenceRunner
from queen.model_names import resolve_model
from queen.worker_registry import WorkerInfo, WorkerStatus
from shared.embeddings import EMBEDDINGS_PATH
from shared.errors import RbeeError, ServerError
from shared.events import detached_task, narrate
from shared.job_registry import Job
from shared.operations import Embed

EMBED_TIMEOUT_S = 300.0  # a worker embeds one input at a time: many long inputs on a slow CPU take minutes


async def run_embed(runner: InferenceRunner, op: Embed, job: Job) -> dict[str, Any]:
    scheduler, workers = runner.scheduler, runner.workers
    model = await resolve_model(op.model, scheduler.hives, workers)
    attempt = 0
    while True:
        attempt += 1
        worker = await scheduler.acquire(model, op.hive_id, job.id, waiting=job.set_waiting, embedding=True,
                                         owner=job.owner)
        try:
            return await _embed_on(runner, worker, op, model)
        except WorkerRefused as exc:
            if attempt >= START_ATTEMPTS:
                raise
            narrate("embed_retry", f"{exc.message} Trying another embedding worker.", target=worker.worker_id,
                    level="warn")
        finally:
            workers.release(worker, job.id)


async def _embed_on(runner: InferenceRunner, worker: WorkerInfo, op: Embed, model: str) -> dict[str, Any]:
    hives = runner.scheduler.hives
    started = time.perf_counter()
    count = f"{len(op.input)} input{'s' if len(op.input) != 1 else ''}"
    narrate("embed_start", f"Embedding {count} on {worker.worker_id} ({worker.model}, hive {worker.hive_id})",
            target=worker.worker_id)
    client = hives.clients_for(worker.hive_id).daemon(worker.url)
    try:
        answer = await client.request("POST", EMBEDDINGS_PATH, {"input": list(op.input)}, timeout=EMBED_TIMEOUT_S)
    except ServerError as exc:  # it answered: a bad input or a full queue is the caller's to hear as is
        if exc.code in ANSWERS_OF_A_LIVE_WORKER or 400 <= exc.status < 500 or exc.status == 503:
            raise
        workers_gone(runner, worker)
        raise WorkerRefused(f"Embedding worker {worker.worker_id} on hive {worker.hive_id} failed: "
                            f"{exc.message}") from exc
    except RbeeError as exc:  # unreachable or silent: as good as dead
        workers_gone(runner, worker)
        raise WorkerRefused(f"Embedding worker {worker.worker_id} on hive {worker.hive_id} did not answer: "
                            f"{exc.message}") from exc
    vectors = answer.get("embeddings") if isinstance(answer, dict) else None
    if not isinstance(vectors, list) or len(vectors) != len(op.input):
        raise WorkerRefused(f"Embedding worker {worker.worker_id} answered no vector per input.")
    elapsed = time.perf_counter() - started
    dimensions = int(answer.get("dimensions") or (len(vectors[0]) if vectors else 0))
    narrate("embed_done", f"{count} embedded ({dimensions} dimensions, {answer.get('prompt_tokens')} tokens) "
                          f"in {elapsed * 1000:.0f} ms", target=worker.worker_id)
    return {"embeddings": vectors, "model": worker.model, "prompt_tokens": int(answer.get("prompt_tokens") or 0),
            "dimensions": dimensions, "worker_id": worker.worker_id, "hive_id": worker.hive_id}


def workers_gone(runner: InferenceRunner, worker: WorkerInfo) -> None:
    """The worker failed as only a dead one does: unschedulable now, and its hive is told to stop it."""
    runner.workers.mark(worker.worker_id, WorkerStatus.CRASHED)
    detached_task(runner.scheduler.hives.ask_to_stop_worker(worker.hive_id, worker.worker_id),
                  name=f"stop-{worker.worker_id}")
