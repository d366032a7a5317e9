"""The hive's live gauges for GET /metrics (shared/metrics.py has the counters, downloads included): its
worker processes by state. Read at scrape time from the supervisor."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from hive.appkeys import CONFIG, EXECUTOR
from shared.metrics import labelled


def hive_gauges(app: web.Application) -> Iterable[GaugeMetricFamily]:
    if EXECUTOR in app:
        hive = app[CONFIG].hive_id
        by_state = Counter((hive, w.state.value) for w in app[EXECUTOR].supervisor.all())
        yield labelled("rbee_workers", "Worker processes of this hive, by state.", ("hive", "state"),
                       by_state.items())
