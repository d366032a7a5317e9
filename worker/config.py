"""What a worker was started with, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.kv_cache import FLASH_ATTN_DEFAULT, KV_CACHE_DEFAULT, MAX_SLOTS, start_slots


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
    parallel: int = 0  # fixed slots (requests decoded together in one batch); 0: slots that grow with demand
    max_parallel: int = MAX_SLOTS  # the slots a growing worker may reach (shared/kv_cache.py)
    draft_max: int = 8  # tokens guessed ahead by n-gram lookup per step (worker/ngram.py); 0: none
    device: str = "cpu"  # cpu | cuda:N
    max_queue: int = 8  # requests waiting for a slot; more are refused with 503
    abandon_after_s: float = 5.0  # a generation nobody reads for this long is cancelled
    heartbeat_interval_s: float = 5.0
    exit_with_parent: bool = True
    embedding: bool = False  # compute embeddings (POST /v1/embeddings) instead of generating
    kv_cache_type: str = KV_CACHE_DEFAULT  # f16 | q8_0 | q4_0: the element type of the K and V caches
    flash_attn: str = FLASH_ATTN_DEFAULT  # auto | on | off (a quantized cache needs it: shared/kv_cache.py)
    gpu_layers: int | None = None  # layers offloaded to the GPU; None: every one on cuda:N, none on cpu
    tensor_split: tuple[float, ...] = ()  # proportions of the model per visible GPU (several: split by layer)
    device_name: str = ""  # the device as the machine numbers it (a pinned worker's cuda:0 may be its cuda:2)
    prompt_cache_dir: Path | None = None  # slots' KV caches saved here (worker/prompt_cache.py); None: none kept
    prompt_cache_bytes: int = 1024 << 20  # the whole hive's prompt caches at most (every model's directory)

    def __post_init__(self) -> None:
        if self.threads <= 0:
            object.__setattr__(self, "threads", all_cores())
        if not self.device_name:
            object.__setattr__(self, "device_name", self.device)

    @property
    def slots_at_start(self) -> int:
        return start_slots(self.parallel or None, self.max_parallel)

    @property
    def slots_at_most(self) -> int:
        """What the worker reports as its slots: the queen sends it that many requests at once."""
        return self.parallel or self.max_parallel

    @property
    def n_gpu_layers(self) -> int:
        """llama.cpp's n_gpu_layers: a negative number offloads every layer (the output layer included)."""
        if self.device == "cpu":
            return 0
        return -1 if self.gpu_layers is None else self.gpu_layers

    @property
    def gpu_index(self) -> int:
        return int(self.device.split(":", 1)[1]) if self.device.startswith("cuda:") else 0
