"""What a worker was started with, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def all_cores() -> int:
    """Cores this process may run on (llama.cpp's own default is half of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    model_path: Path
    model_ref: str
    host: str = "127.0.0.1"
    port: int = 0
    queen_url: str | None = None
    hive_id: str | None = None
    threads: int = 0  # 0: all cores
    ctx_size: int = 2048  # per slot (capped at the model's trained context)
    parallel: int = 4  # slots: requests decoded together in one batch
    device: str = "cpu"  # cpu | cuda:N
    max_queue: int = 8  # requests waiting for a slot; more are refused with 503
    abandon_after_s: float = 5.0  # a generation nobody reads for this long is cancelled
    heartbeat_interval_s: float = 5.0
    exit_with_parent: bool = True
    embedding: bool = False  # compute embeddings (POST /v1/embeddings) instead of generating

    def __post_init__(self) -> None:
        if self.threads <= 0:
            object.__setattr__(self, "threads", all_cores())

    @property
    def gpu_layers(self) -> int:
        return 0 if self.device == "cpu" else -1  # -1: offload every layer

    @property
    def gpu_index(self) -> int:
        return int(self.device.split(":", 1)[1]) if self.device.startswith("cuda:") else 0
