"""What a hive handle asks of the machine behind it. Two backends answer: LocalHive (local.py, the
queen's own child process) and RemoteHive (remote/backend.py, a machine over SSH). Whatever differs
between the two lives in them, so the registry and its callers never ask which one they hold."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from shared.job_client import Clients
from shared.version import PeerVersion
from shared.wire import WireEnum

if TYPE_CHECKING:
    from queen.machines import Machine


class HiveState(WireEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    UNREACHABLE = "unreachable"
    CRASHED = "crashed"


class HiveBackend(Protocol):
    local: bool  # for describing it (`rbee hive list`); behaviour goes through the methods below

    @property
    def url(self) -> str | None:
        """Where the queen reaches the hive (a forward through the SSH link for a remote one)."""

    @property
    def state(self) -> HiveState: ...

    @property
    def peer(self) -> PeerVersion | None:
        """The rbee the hive runs, as it last said (None: not heard from yet)."""

    @property
    def schedulable(self) -> bool:
        """Whether a worker may be placed on it now (the local hive starts on demand)."""

    def clients(self) -> Clients:
        """Clients carrying the token the hive takes."""

    def heartbeat_token(self) -> str | None:
        """The token of a hive whose heartbeats are relayed with its own token (None: the queen's)."""

    def describe(self) -> dict[str, Any]:
        """host, pid, started_by_queen, started_at, exit_code: for its status."""

    def supervision(self) -> dict[str, Any]:
        """What a supervised hive adds to its status (problem, unreachable_since, notes)."""

    async def ensure_running(self) -> str:
        """The hive's URL once it runs (started, or waited for, as the backend does it)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def refresh(self) -> None:
        """Bring `state` up to date before a status is told."""

    async def lost_contact(self) -> None:
        """The hive did not take a job it was sent: get ready to look again."""

    async def workers_known(self) -> None:
        """Return once the hive's running workers are known (a remote's are adopted as it connects)."""

    async def machine(self) -> "Machine":
        """Its machine's files (the model directory), for models sent to or from it."""

    async def worker_url(self, url: str) -> str:
        """Where the queen reaches a worker the hive reported at `url`."""

    async def link_lost(self, within: float) -> str | None:
        """Why the connection to the hive went down, if it did."""

    def resume(self) -> None:
        """At the queen's start: take up again what a previous queen left running."""

    async def close(self) -> None:
        """The queen is stopping."""

    async def ssh_test(self) -> dict[str, Any]: ...

    async def install(self, data_dir: Path, installed: Callable[[dict[str, Any]], None]) -> None: ...

    async def uninstall(self) -> dict[str, Any]: ...

    async def inspect(self) -> None:
        """Look on its machine now for what the status should tell (a remote's hives from before the lock)."""

    async def upgrade(self, data_dir: Path, drain: Callable[[], Awaitable[Any]],
                      installed: Callable[[dict[str, Any]], None]) -> None:
        """Install this rbee beside the running one, drain (`drain` stops it), restart on the new one."""
