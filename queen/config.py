"""What the queen was started with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from queen.prefix_index import RouteGuard
from shared.paths import RbeePaths
from shared.ports import DEFAULT_QUEEN_PORT


@dataclass(frozen=True)
class QueenConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_QUEEN_PORT
    paths: RbeePaths = None  # type: ignore[assignment]  # from the environment when not given
    local_hive_port: int = 0  # 0: a free port, learned from the hive's start-up line (no clash between users)
    max_workers_per_hive: int = 1  # per model: its slots serve concurrent requests; more workers, more processes
    worker_idle_timeout_s: float = 15 * 60  # idle workers are stopped after this
    heartbeat_timeout_s: float = 15.0  # a worker silent this long is lost and never scheduled
    hive_start_timeout_s: float = 60.0
    worker_progress_timeout_s: float = 20.0  # a generating worker silent this long (no token, no ping) is hung
    worker_slots: int | None = None  # fixed slots per worker (hive --worker-slots); None: a shared KV pool
    cache_routing: bool = True  # a generation goes to the worker expected to hold its prompt's cache
    models_from_hives: bool = True  # a hub model another hive holds is copied from there, not downloaded again
    route_guard: RouteGuard = RouteGuard()  # unless that worker is this much busier than the least loaded
    # Each setting's value and where it came from (shared/settings.py), for GET /v1/config.
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.paths is None:
            object.__setattr__(self, "paths", RbeePaths.from_env())

    @property
    def bind_url(self) -> str:
        return f"http://{self.host}:{self.port}"
