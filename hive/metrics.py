"""The hive's live gauges for GET /metrics (shared/metrics.py has the counters, downloads included): its
worker processes by state, and each GPU's memory and utilisation. Read at scrape time: the workers from
the supervisor, the GPUs from the latest nvidia-smi reading (a stale one is read again behind the scrape,
never waited for)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from hive.appkeys import CONFIG, EXECUTOR
from hive.capabilities import MACHINE
from shared.metrics import labelled

MIB = 1024 * 1024
GPU_LABELS = ("hive", "gpu", "name")
GPU_GAUGES = (  # (metric, what it says, the GPU's field, its factor to the metric's unit)
    ("rbee_gpu_memory_total_bytes", "VRAM of each GPU of this hive (nvidia-smi).", "memory_total_mb", MIB),
    ("rbee_gpu_memory_free_bytes", "Free VRAM of each GPU of this hive (nvidia-smi).", "memory_free_mb", MIB),
    ("rbee_gpu_memory_used_bytes", "Used VRAM of each GPU of this hive (nvidia-smi).", "memory_used_mb", MIB),
    ("rbee_gpu_utilization_percent", "How busy each GPU of this hive was over nvidia-smi's last sample "
                                     "period, 0-100.", "utilization_pct", 1),
)


def hive_gauges(app: web.Application) -> Iterable[GaugeMetricFamily]:
    if EXECUTOR in app:
        hive = app[CONFIG].hive_id
        by_state = Counter((hive, w.state.value) for w in app[EXECUTOR].supervisor.all())
        yield labelled("rbee_workers", "Worker processes of this hive, by state.", ("hive", "state"),
                       by_state.items())
        reading = MACHINE.latest()
        if reading is not None:
            yield from gpu_gauges(hive, reading.gpus)


def gpu_gauges(hive: str, gpus: Iterable[dict[str, Any]]) -> Iterable[GaugeMetricFamily]:
    """One family per figure, a sample per GPU; a figure nvidia-smi could not tell ([N/A]) is left out."""
    listed = list(gpus)
    for metric, documentation, key, factor in GPU_GAUGES:
        yield labelled(metric, documentation, GPU_LABELS,
                       (((hive, g["device"], g["name"]), g[key] * factor) for g in listed if g.get(key) is not None))
