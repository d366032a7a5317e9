"""The queen's live gauges for GET /metrics (shared/metrics.py has the counters): its workers as their
heartbeats and leases say, and its jobs not yet finished. Read at scrape time from the registries."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from queen.access.limits import today
from queen.appkeys import LIMITS, WORKERS
from shared import appkeys
from shared.metrics import labelled


def queen_gauges(app: web.Application) -> Iterable[GaugeMetricFamily]:
    if WORKERS in app:
        workers = app[WORKERS].all()
        per = [((w.worker_id, w.hive_id), w) for w in workers]
        yield labelled("rbee_queue_depth", "Requests waiting for a slot on each worker (its last heartbeat).",
                       ("worker", "hive"), ((k, w.queue_depth) for k, w in per))
        yield labelled("rbee_slots_busy", "Slots generating for the queen's jobs on each worker.",
                       ("worker", "hive"), ((k, len(w.leases)) for k, w in per))
        yield labelled("rbee_slots", "Parallel slots of each worker.", ("worker", "hive"),
                       ((k, w.slots) for k, w in per))
        by_state = Counter((w.hive_id, w.state.value) for w in workers)
        yield labelled("rbee_workers", "Workers the queen knows, by hive and state.", ("hive", "state"),
                       by_state.items())
    if LIMITS in app:
        limits, day = app[LIMITS], today()
        names = [k.name for k in limits.store.live()]
        yield labelled("rbee_key_tokens_today", "Prompt and answer tokens each API key used today.", ("key",),
                       (((n,), limits.store.tokens_on(n, day)) for n in names))
        yield labelled("rbee_key_requests_running", "Inference requests of each API key running now.", ("key",),
                       (((n,), limits.running(n)) for n in names))
        yield labelled("rbee_key_requests", "Requests each API key made since the queen started.", ("key",),
                       (((n,), limits.requests_made(n)) for n in names))
    if appkeys.JOB_REGISTRY in app:
        active = Counter((j.operation.name, j.state.value) for j in app[appkeys.JOB_REGISTRY].jobs()
                         if not j.state.finished)
        yield labelled("rbee_jobs_active", "Jobs queued or running, by operation and state.", ("operation", "state"),
                       active.items())
