"""The worker's live gauges for GET /metrics (shared/metrics.py counts its tokens): its slots and queue,
read from the engine at scrape time."""

from __future__ import annotations

from typing import Iterable

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from shared.metrics import labelled
from worker.appkeys import CONFIG, ENGINE
from worker.inference_api import queue_depth


def worker_gauges(app: web.Application) -> Iterable[GaugeMetricFamily]:
    if ENGINE in app:
        engine, config = app[ENGINE], app[CONFIG]
        key = (config.worker_id, config.hive_id or "")
        yield labelled("rbee_slots_busy", "Slots generating now.", ("worker", "hive"), [(key, engine.slots_busy)])
        yield labelled("rbee_slots", "Parallel slots.", ("worker", "hive"), [(key, engine.slots_total)])
        yield labelled("rbee_queue_depth", "Requests waiting for a slot.", ("worker", "hive"),
                       [(key, queue_depth(app))])
