"""The hives the queen knows: `localhost` always (LocalHive: started on first use, no SSH), and the
remote ones of hives.conf (RemoteHive: installed over SSH, kept running and reachable through one SSH
link each). Each is a HiveHandle; what differs between the two is its backend's business, so nothing
here or in the callers asks which kind a hive is."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from queen.config import QueenConfig
from queen.errors import HiveUnavailable, UnknownHive
from queen.forwarding import RemoteJobLost, run_remote_job
from queen.hives.backend import HiveState
from queen.hives.handle import HiveHandle
from queen.hives.local import LocalHive
from queen.hives.remote.backend import RemoteHive
from queen.hives.remote.hives_conf import load_hives_conf
from queen.hives.remote.store import RemoteHiveStore
from queen.machines import Machine
from queen.worker_registry import WorkerRegistry
from shared.errors import RbeeError
from shared.events import narrate
from shared.job_client import Clients
from shared.operations import LOCAL_HIVE, HiveOperation, WorkerDelete

log = logging.getLogger("rbee.queen.hives")

CAPABILITIES_TIMEOUT_S = 2.0  # a status waits this long at most for a hive's capabilities (a cut link hangs)


class HiveRegistry:
    def __init__(self, config: QueenConfig, clients: Clients, queen_url: Callable[[], str],
                 workers: WorkerRegistry) -> None:
        self.config = config
        self._clients = clients
        self._queen_url = queen_url
        self._workers = workers
        self._store = RemoteHiveStore(config.paths.config_dir)
        local = LocalHive(LOCAL_HIVE, config, clients, queen_url)
        self._hives: dict[str, HiveHandle] = {LOCAL_HIVE: HiveHandle(LOCAL_HIVE, local)}
        self._remotes: dict[str, RemoteHive] = {}  # the backends of hives.conf's hosts
        self._conf_stamp: tuple[int, int] | None = None

    @property
    def conf_path(self) -> Path:
        return self.config.paths.config_dir / "hives.conf"

    def _sync_conf(self) -> None:
        """Re-read hives.conf when it changed (by mtime and size), so edits apply without a restart."""
        try:
            st = self.conf_path.stat()
        except FileNotFoundError:
            st = None
        stamp = (st.st_mtime_ns, st.st_size) if st else None
        if stamp is not None and stamp == self._conf_stamp:
            return
        hosts = load_hives_conf(self.conf_path)
        self._conf_stamp = stamp
        for alias, host in hosts.items():
            remote = self._remotes.get(alias)
            if remote is None:
                remote = self._remotes[alias] = RemoteHive(
                    alias, host, store=self._store, clients=self._clients, queen_url=self._queen_url,
                    workers=self._workers, worker_slots=self.config.worker_slots)
                self._hives[alias] = HiveHandle(alias, remote)
            remote.host = host
        for alias in [a for a, remote in self._remotes.items() if a not in hosts and not remote.supervised]:
            del self._remotes[alias], self._hives[alias]  # a supervised one goes when it is stopped

    def get(self, alias: str) -> HiveHandle:
        self._sync_conf()
        hive = self._hives.get(alias)
        if hive is None:
            known = ", ".join(self._hives)
            raise UnknownHive(f"Unknown hive '{alias}'. Known hives: {known}. Add remote machines to "
                              f"{self.conf_path} (or import them with `rbee hive import-ssh`).")
        return hive

    def schedulable(self) -> list[str]:
        """Hives a worker may be placed on now: the local one (started on demand) and remote ones up."""
        return [h.alias for h in self.all() if h.backend.schedulable and not h.draining]

    def all(self) -> list[HiveHandle]:
        self._sync_conf()
        return list(self._hives.values())

    def clients_for(self, alias: str) -> Clients:
        """Clients carrying the token the hive takes: the queen's for the local hive, the hive's own for a
        remote one."""
        hive = self._hives.get(alias)
        return self._clients if hive is None else hive.backend.clients()

    def token_of(self, hive_id: str) -> str | None:
        """The token a remote hive's heartbeats carry (None for unknown or local hives)."""
        hive = self._hives.get(hive_id)
        return None if hive is None else hive.backend.heartbeat_token()

    def with_address(self) -> list[tuple[str, str]]:
        """(alias, url) of every hive with an address whose token the queen holds: those it can ask now,
        without starting anything."""
        found = []
        for hive in self.all():
            if not hive.url:
                continue
            try:
                hive.backend.clients()
            except HiveUnavailable:  # a remote hive the queen holds no token for
                continue
            found.append((hive.alias, hive.url))
        return found

    async def worker_url(self, hive_id: str, url: str) -> str:
        """Where the queen reaches a worker its hive reported at `url`: through the link's forward for
        a remote hive (the worker listens on that machine's loopback)."""
        hive = self._hives.get(hive_id)
        return url if hive is None else await hive.backend.worker_url(url)

    async def machine(self, alias: str) -> Machine:
        """The files of the hive's machine (its model directory), for models sent to or from it."""
        return await self.get(alias).backend.machine()

    async def link_lost(self, hive_id: str, within: float = 2.0) -> str | None:
        """Why the link to a remote hive went down, if it did; None for a local hive or a link that is up."""
        hive = self._hives.get(hive_id)
        return None if hive is None else await hive.backend.link_lost(within)

    async def workers_known(self, alias: str) -> None:
        """Return once the hive's running workers are known (an unknown hive fails at once): a remote hive
        being (re)connected has its running workers adopted first, so they are used, not duplicated."""
        await self.get(alias).backend.workers_known()

    async def forward(self, op: HiveOperation) -> dict[str, Any]:
        """Run a worker_*/model_* operation on its hive (started first if it is the local one), its
        events woven into the current job; returns the hive job's end stats."""
        url = await self.ensure_running(op.hive_id)
        try:
            return await run_remote_job(self.clients_for(op.hive_id).jobs(url), op)
        except RemoteJobLost as exc:
            if exc.submitted:
                if (why := await self.link_lost(op.hive_id)) is not None:
                    raise HiveUnavailable(f"Lost the connection to {op.hive_id} during {op.name}: {why}.",
                                          code="HIVE_UNREACHABLE") from exc
                raise
        # It went away since it was last seen (stopped, killed): look again, starting it if it is ours.
        hive = self.get(op.hive_id)
        await hive.backend.lost_contact()
        narrate("hive_check", f"Hive {hive.alias} did not answer; checking it again", target=hive.alias, level="warn")
        url = await self.ensure_running(op.hive_id)
        return await run_remote_job(self.clients_for(op.hive_id).jobs(url), op)

    async def ask_to_stop_worker(self, hive_id: str, worker_id: str) -> None:
        """Have a hive stop a worker the queen gave up on (it may still hold memory and cores), without
        waiting: a frozen one takes the hive's stop timeout to be killed, and the hive no longer counts a
        worker it is stopping against its cores."""
        try:
            url = await self.ensure_running(hive_id)
            await self.clients_for(hive_id).jobs(url).submit(WorkerDelete(hive_id=hive_id, id=worker_id))
        except RbeeError as exc:  # it may be gone already
            log.info("could not have %s stopped on %s: %s", worker_id, hive_id, exc.message)

    async def ensure_running(self, alias: str) -> str:
        """The hive's URL, starting the local hive first when it is not running; a remote one that is
        (re)connecting is waited for, one that is unreachable fails at once, saying so."""
        return await self.get(alias).backend.ensure_running()

    async def start(self, alias: str) -> HiveHandle:
        hive = self.get(alias)
        await hive.backend.start()
        return hive

    async def stop(self, alias: str) -> HiveHandle:
        hive = self.get(alias)
        await hive.backend.stop()
        return hive

    def resume(self) -> None:
        """At start-up: supervise again the remote hives that should be running (their hives and warm
        workers are adopted, not started anew)."""
        self._sync_conf()
        for hive in self._hives.values():
            hive.backend.resume()

    async def status(self, alias: str, *, inspect: bool = False) -> dict[str, Any]:
        """Check the hive's health now, and describe it (a running one's capabilities as it reads them now:
        its GPUs' free VRAM and utilisation move). `inspect`: a remote one not kept running is looked at
        over SSH too (hives of its install from before the lock file)."""
        hive = self.get(alias)
        await hive.backend.refresh()
        if inspect:
            await hive.backend.inspect()
        if hive.state is HiveState.RUNNING and hive.url:
            try:
                hive.capabilities = await self.clients_for(alias).daemon(hive.url).request(
                    "GET", "/v1/capabilities", timeout=CAPABILITIES_TIMEOUT_S)
            except RbeeError as exc:  # told as last reported; its state says whether it is in trouble
                log.info("hive %s did not tell its capabilities: %s", alias, exc.message)
        return hive.to_dict()

    async def statuses(self) -> list[dict[str, Any]]:
        """Every hive's status, checked concurrently (one slow hive costs one timeout, not one each)."""
        return list(await asyncio.gather(*(self.status(h.alias) for h in self.all())))

    async def refresh_capabilities(self, alias: str) -> dict[str, Any]:
        url = await self.ensure_running(alias)
        caps = await self.clients_for(alias).daemon(url).request("GET", "/v1/capabilities")
        self.get(alias).capabilities = caps
        return caps

    async def ssh_test(self, alias: str) -> dict[str, Any]:
        return await self.get(alias).backend.ssh_test()

    async def install(self, alias: str, data_dir: Path, installed: Callable[[dict[str, Any]], None]) -> None:
        """(Re)install a remote hive; `installed` hears of it before the hive is started again."""
        await self.get(alias).backend.install(data_dir, installed)

    async def upgrade(self, alias: str, data_dir: Path, drain: Callable[[], Awaitable[Any]],
                      installed: Callable[[dict[str, Any]], None]) -> None:
        await self.get(alias).backend.upgrade(data_dir, drain, installed)

    def remote_installed(self) -> list[str]:
        """Remote hives this queen installed (it holds their token): what `hive upgrade --all` upgrades."""
        self._sync_conf()
        return [alias for alias, remote in self._remotes.items() if remote.heartbeat_token() is not None]

    async def uninstall(self, alias: str) -> dict[str, Any]:
        return await self.get(alias).backend.uninstall()

    async def close(self) -> None:
        """Stop the local hive this queen started; let go of the remote ones (they keep running, and the
        next queen adopts them)."""
        await asyncio.gather(*(h.backend.close() for h in self._hives.values()), return_exceptions=True)
