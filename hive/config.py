"""What a hive was started with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.kv_cache import FLASH_ATTN_DEFAULT, KV_CACHE_DEFAULT, MAX_SLOTS, start_slots
from shared.operations import LOCAL_HIVE
from shared.paths import RbeePaths
from shared.ports import DEFAULT_HIVE_PORT


@dataclass(frozen=True)
class HiveConfig:
    hive_id: str = LOCAL_HIVE
    host: str = "127.0.0.1"
    port: int = DEFAULT_HIVE_PORT
    queen_url: str | None = None  # the queen (it may re-tell its address later: PUT /v1/queen)
    relay_heartbeats: bool = False  # workers beat to the hive, which passes them on (remote hives)
    paths: RbeePaths = None  # type: ignore[assignment]  # filled from the environment when not given
    worker_ready_timeout_s: float = 120.0  # a worker that is not ready by then is stopped and reported
    worker_stop_timeout_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    worker_slots: int | None = None  # fixed slots per worker (its --parallel); None: slots that grow with demand
    worker_ctx_size: int = 2048  # one request's context at most (its --ctx-size); memory estimates use it too
    worker_kv_cache_type: str = KV_CACHE_DEFAULT  # its --kv-cache-type when a spawn names none; estimates too
    worker_flash_attn: str = FLASH_ATTN_DEFAULT  # its --flash-attn when a spawn names none
    prompt_cache_mb: int = 1024  # slots' KV caches kept on disk, every model's together (0: none kept)
    vram_budget_bytes: int | None = None  # at most this much planned on each GPU (None: its free memory less a margin)
    # Each setting's value and where it came from (shared/settings.py), for GET /v1/config.
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.paths is None:
            object.__setattr__(self, "paths", RbeePaths.from_env())

    def prompt_cache_dir(self, sha256: str) -> Path:
        """Where workers of the model with this sha256 keep its prompt caches (worker/prompt_cache.py)."""
        return self.paths.data_dir / "prompt-cache" / (sha256[:16] or "unknown")

    @property
    def worker_start_slots(self) -> int:
        """The slots a generating worker starts with, which its memory is planned for (shared/kv_cache.py)."""
        return start_slots(self.worker_slots)

    @property
    def worker_max_slots(self) -> int:
        """The slots a generating worker may grow to (what the queen sees)."""
        return self.worker_slots or MAX_SLOTS

    @property
    def worker_host(self) -> str:
        """Workers bind where the hive does (loopback: the queen reaches them through SSH forwards)."""
        return self.host
