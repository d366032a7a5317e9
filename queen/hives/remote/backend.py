"""A hive on another machine of hives.conf: installed over SSH (install.py), then kept running and
reachable through one SSH link by its supervisor (supervisor.py), with its own token (store.py).

Remote hives are the machines': they keep running when the queen stops, and the next queen re-adopts
them (their workers stay warm); `rbee hive stop <alias>` stops one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable

from queen.errors import HiveUnavailable
from queen.forwarding import hive_answers
from queen.hives.backend import HiveState
from queen.hives.remote import install as remote_install
from queen.hives.remote.hives_conf import RemoteHost
from queen.hives.remote.link import HiveLink
from queen.hives.remote.store import RemoteHiveStore
from queen.hives.remote.supervisor import HEALTH_EVERY_S, Phase, RemoteHiveSupervisor, stray_note
from queen.machines import Machine, SftpMachine
from queen.worker_registry import WorkerRegistry, WorkerStatus
from shared.errors import RbeeError
from shared.events import narrate
from shared.job_client import Clients
from shared.version import PeerVersion

PHASE_STATES = {Phase.CONNECTING: HiveState.STARTING, Phase.RUNNING: HiveState.RUNNING,
                Phase.UNREACHABLE: HiveState.UNREACHABLE, Phase.GAVE_UP: HiveState.CRASHED,
                Phase.STOPPED: HiveState.STOPPED}
START_TIMEOUT_S = 90.0
WAIT_S = 30.0  # a job needing a remote hive that is (re)connecting waits this long


class RemoteHive:
    local = False

    def __init__(self, alias: str, host: RemoteHost, *, store: RemoteHiveStore, clients: Clients,
                 queen_url: Callable[[], str], workers: WorkerRegistry, worker_slots: int | None) -> None:
        self.alias = alias
        self.host = host  # from hives.conf, replaced when it changes
        self._store = store
        self._clients = clients
        self._queen_url = queen_url
        self._workers = workers
        self._worker_slots = worker_slots
        self.state = HiveState.STOPPED
        self.supervisor: RemoteHiveSupervisor | None = None  # while the queen keeps it running
        self._started_at: float | None = None  # as the last supervisor found it
        self._lock = asyncio.Lock()  # one start or stop at a time
        self._strays: list[dict[str, Any]] = []  # as the last look over SSH found them (not supervised)

    @property
    def url(self) -> str | None:
        return self.supervisor.url if self.supervisor is not None else None

    @property
    def peer(self) -> PeerVersion | None:
        return self.supervisor.peer if self.supervisor is not None else None

    @property
    def started_at(self) -> float | None:
        return self.supervisor.started_at if self.supervisor is not None else self._started_at

    @property
    def supervised(self) -> bool:
        return self.supervisor is not None

    @property
    def schedulable(self) -> bool:
        return self.supervisor is not None and self.supervisor.phase is Phase.RUNNING

    def clients(self) -> Clients:
        """Clients carrying the hive's own token (never the queen's)."""
        token = self._store.token(self.alias)
        if token is None:
            raise HiveUnavailable(f"The queen holds no token for hive {self.alias} (not installed by this queen, or "
                                  f"uninstalled); run `rbee hive install {self.alias}`.")
        return Clients(self._clients.session, token)

    def heartbeat_token(self) -> str | None:
        return self._store.token(self.alias)

    def describe(self) -> dict[str, Any]:
        return {"host": self.host.where, "pid": None, "started_by_queen": False, "started_at": self.started_at,
                "exit_code": None}

    def supervision(self) -> dict[str, Any]:
        sup = self.supervisor
        strays = self._strays or (sup.strays if sup is not None else [])
        if sup is None:
            return {"strays": strays} if strays else {}
        return {"problem": sup.problem, **({"strays": strays} if strays else {}),
                "unreachable_since": sup.unreachable_at if sup.phase is Phase.UNREACHABLE else None,
                "notes": list(sup.notes)[-5:], "gpus_reported": sup.gpus, "gpus_reported_at": sup.gpus_at}

    async def healthy(self) -> bool:
        url = self.url
        if not url:
            return False
        return await hive_answers(self.clients().daemon(url), self.alias)

    def _supervise(self) -> RemoteHiveSupervisor:
        """The hive's supervisor, started (again, if it had given up or been stopped)."""
        if self.supervisor is None:
            self.supervisor = RemoteHiveSupervisor(
                self.alias, host=lambda: self.host, clients=self.clients, queen_url=self._queen_url,
                workers=self._workers, worker_slots=self._worker_slots, started_at=self._started_at)
        self.supervisor.start()  # unless its task runs
        return self.supervisor

    def _sync_state(self) -> None:
        if self.supervisor is not None:
            self.state = PHASE_STATES[self.supervisor.phase]

    async def ensure_running(self) -> str:
        """The hive's URL: one that is (re)connecting is waited for, one that is unreachable fails at once,
        saying so."""
        if self.supervisor is None and self._store.keep_running(self.alias) and self._store.token(self.alias):
            self._supervise()  # a queen that just started, before resume() ran
        if self.supervisor is None:
            raise HiveUnavailable(f"Hive '{self.alias}' is not running; start it with `rbee hive start {self.alias}` "
                                  f"(install it first with `rbee hive install {self.alias}`).")
        return await self.supervisor.wait_up(WAIT_S, narrate_action="hive_check")

    async def start(self) -> None:
        self.clients()  # fails clearly when the queen holds no token for it
        async with self._lock:
            self._store.set_keep_running(self.alias, True)
            sup = self._supervise()
            if sup.phase is Phase.RUNNING:
                narrate("hive_start", f"Hive {self.alias} is already running", target=self.alias)
            else:
                narrate("hive_start", f"Connecting to {self.alias} ({self.host.where}) over SSH", target=self.alias)
                await sup.wait_up(START_TIMEOUT_S, narrate_action="hive_start")
            self._sync_state()

    async def stop(self) -> None:
        """Stop supervising it and stop the hive there (its workers with it)."""
        narrate("hive_stop", f"Stopping hive {self.alias} (and its workers)", target=self.alias)
        async with self._lock:
            self._strays = []  # stopped with it
            self._store.set_keep_running(self.alias, False)
            if self.supervisor is not None:
                await self.supervisor.stop()
                self._started_at = self.supervisor.started_at
                self.supervisor = None
            self._workers.mark_hive(self.alias, WorkerStatus.STOPPED)
            try:
                await remote_install.stop(self.host)
            except RbeeError as exc:
                self.state = HiveState.UNREACHABLE
                raise HiveUnavailable(f"Could not stop hive {self.alias}: {exc.message} It may still run there; the "
                                      f"queen no longer keeps it running. Run `rbee hive stop {self.alias}` again once "
                                      "the machine is reachable.", code="HIVE_UNREACHABLE") from exc
            self.state = HiveState.STOPPED

    async def inspect(self) -> None:
        """Look on the machine over SSH now: hives of its install from before the lock file (found by their
        command line and port), which its supervisor would not know of."""
        try:
            link = await HiveLink.open(self.host)
        except RbeeError as exc:
            self._strays = []
            narrate("hive_status", f"Could not look on {self.alias}: {exc.message}", target=self.alias, level="warn")
            return
        try:
            found = await link.control("status")
        finally:
            await link.close()
        self._strays = found.get("strays") or []
        for stray in self._strays:
            narrate("hive_status", stray_note(self.alias, stray), target=self.alias, level="warn")

    async def upgrade(self, data_dir: Path, drain: Callable[[], Awaitable[Any]],
                      installed: Callable[[dict[str, Any]], None]) -> None:
        """Install this rbee beside the running one, drain the hive (its answers finish or move), switch to
        the new installation and start the hive on it (always: it also reinstalls and restarts at one
        version), adopt it, then remove the old installation."""
        token = self._store.token(self.alias)
        if token is None:
            raise HiveUnavailable(f"Hive {self.alias} is not installed by this queen; `rbee hive install "
                                  f"{self.alias}` first.")
        installed(await remote_install.install(self.host, token, data_dir, venv=remote_install.NEXT_VENV))
        if self.supervisor is not None:
            await drain()  # stops it, once its answers are done or moved
        else:
            await remote_install.stop(self.host)  # not kept running: whatever runs there (strays too) stops
        await remote_install.switch_to_next(self.host)
        await self.start()
        await remote_install.remove_old(self.host)

    async def refresh(self) -> None:
        """Its supervisor checks it every second: take its word."""
        self._sync_state()
        if self.supervisor is None:
            self.state = HiveState.STOPPED
        elif self.supervisor.link is not None and self.supervisor.link.closed:
            self.state = HiveState.UNREACHABLE  # its supervisor is about to say so

    async def lost_contact(self) -> None:
        await asyncio.sleep(2 * HEALTH_EVERY_S)  # its supervisor finds out whether it died or its link did

    async def workers_known(self) -> None:
        await self.ensure_running()  # being (re)connected: its running workers are adopted first, not duplicated

    async def machine(self) -> Machine:
        """Its files, through SFTP on the link (its RBEE_HOME is the install's home/)."""
        link = self.supervisor.link if self.supervisor else None
        if link is None or link.closed:
            raise HiveUnavailable(f"{self.alias} is not connected (see `rbee hive status {self.alias}`): no file can "
                                  "go to or come from it now.", code="HIVE_UNREACHABLE")
        return SftpMachine(await link.sftp(), f"{link.home}/data/models", self.alias)

    async def worker_url(self, url: str) -> str:
        """The link's forward to a worker (it listens on that machine's loopback)."""
        link = self.supervisor.link if self.supervisor else None
        if link is None or link.closed:
            raise HiveUnavailable(f"Hive {self.alias} is not connected.", code="HIVE_UNREACHABLE")
        return await link.local_url(url)

    async def link_lost(self, within: float) -> str | None:
        """A stream that just broke may be the first sign of a lost link, so the hive is asked for its health
        through the link: an answer proves the link up at once (a worker died, not the link); otherwise SSH
        gets up to `within` seconds to notice."""
        if self.supervisor is None:
            return None
        link = self.supervisor.link
        if link is None:
            return self.supervisor.problem or "not connected"
        closed = asyncio.ensure_future(link.wait_closed())
        probe = asyncio.ensure_future(self.healthy())
        try:
            deadline = asyncio.get_running_loop().time() + within
            pending = {closed, probe}
            while not closed.done() and (left := deadline - asyncio.get_running_loop().time()) > 0:
                done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if probe in done and not probe.cancelled() and probe.exception() is None and probe.result():
                    break  # the hive answered through the link
                if not pending or not done:
                    break
        finally:
            for task in (closed, probe):
                task.cancel()
            await asyncio.gather(closed, probe, return_exceptions=True)
        return link.close_reason if link.closed else None

    def resume(self) -> None:
        """Supervise it again when a previous queen kept it running (the hive and its warm workers are
        adopted, not started anew)."""
        if self._store.keep_running(self.alias) and self._store.token(self.alias):
            self._supervise()

    async def close(self) -> None:
        """Let go of it: it keeps running, and the next queen adopts it."""
        if self.supervisor is not None:
            await self.supervisor.stop()

    async def ssh_test(self) -> dict[str, Any]:
        return await remote_install.ssh_test(self.host)

    async def install(self, data_dir: Path, installed: Callable[[dict[str, Any]], None]) -> None:
        """(Re)install: a running hive is stopped first (its venv is replaced), and started again after.
        `installed` hears of the install before that start."""
        was_running = self._store.keep_running(self.alias)
        if was_running or self.supervisor is not None:
            await self.stop()
        token = self._store.issue_token(self.alias)  # the hive's own, never the queen's
        installed(await remote_install.install(self.host, token, data_dir))
        if was_running:
            await self.start()

    async def uninstall(self) -> dict[str, Any]:
        """Stop it and remove it there; its token is revoked even when the machine is out of reach."""
        host = self.host
        try:
            await self.stop()
        finally:  # a machine that is compromised or out of reach loses its credential regardless
            self._store.revoke(self.alias)
            narrate("hive_uninstall", f"Revoked the token of hive {self.alias}", target=self.alias)
        return await remote_install.uninstall(host)
