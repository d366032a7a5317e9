"""The hives the queen knows: `localhost` always (started on first use, no SSH), and the remote ones
of hives.conf (installed over SSH by remote_hives.py, then kept running and reachable through one SSH
link each by remote_supervisor.py).

The queen owns the local hive process it starts: its log goes to the state dir, it dies with the queen
(--exit-with-parent), and `close()` stops it (its workers with it). Remote hives are the machines':
they keep running when the queen stops, and the next queen re-adopts them (their workers stay warm);
`rbee hive stop <alias>` stops one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from queen import remote_hives
from queen.config import QueenConfig
from queen.errors import HiveUnavailable, QueenError, UnknownHive
from queen.forwarding import RemoteJobLost, hive_answers, run_remote_job
from queen.hives_conf import RemoteHost, load_hives_conf
from queen.remote_store import RemoteHiveStore
from queen.remote_supervisor import HEALTH_EVERY_S, Phase, RemoteHiveSupervisor
from queen.worker_registry import WorkerRegistry, WorkerStatus
from shared.errors import RbeeError
from shared.events import detached_task, narrate
from shared.handshake import listening_url
from shared.job_client import Clients
from shared.operations import LOCAL_HIVE, HiveOperation, WorkerDelete
from shared.process import CHILD_CWD, tail_file
from shared.wire import WireEnum

log = logging.getLogger("rbee.queen.hives")

STOP_TIMEOUT_S = 20.0


class HiveState(WireEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    UNREACHABLE = "unreachable"
    CRASHED = "crashed"


@dataclass(eq=False)
class HiveHandle:
    alias: str
    local: bool
    url: str | None = None
    state: HiveState = HiveState.STOPPED
    process: asyncio.subprocess.Process | None = None
    started_at: float | None = None
    capabilities: dict[str, Any] | None = None
    exit_code: int | None = None
    remote: RemoteHost | None = None  # from hives.conf
    supervisor: RemoteHiveSupervisor | None = None  # a remote hive the queen keeps running
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def to_dict(self) -> dict[str, Any]:
        info = {
            "alias": self.alias, "local": self.local, "url": self.url, "state": self.state.value,
            "host": self.remote.where if self.remote else None,
            "pid": self.process.pid if self.process and self.process.returncode is None else None,
            "started_by_queen": self.process is not None, "started_at": self.started_at,
            "exit_code": self.exit_code, "capabilities": self.capabilities,
        }
        if self.supervisor is not None:
            info["problem"] = self.supervisor.problem
            info["unreachable_since"] = (self.supervisor.unreachable_at
                                         if self.supervisor.phase is Phase.UNREACHABLE else None)
            info["notes"] = list(self.supervisor.notes)[-5:]
        return info


PHASE_STATES = {Phase.CONNECTING: HiveState.STARTING, Phase.RUNNING: HiveState.RUNNING,
                Phase.UNREACHABLE: HiveState.UNREACHABLE, Phase.GAVE_UP: HiveState.CRASHED,
                Phase.STOPPED: HiveState.STOPPED}
REMOTE_START_TIMEOUT_S = 90.0
REMOTE_WAIT_S = 30.0  # a job needing a remote hive that is (re)connecting waits this long


class HiveRegistry:
    def __init__(self, config: QueenConfig, clients: Clients, queen_url: Callable[[], str],
                 workers: WorkerRegistry) -> None:
        self.config = config
        self._clients = clients
        self._queen_url = queen_url
        self._workers = workers
        self.store = RemoteHiveStore(config.paths.config_dir)
        self._hives: dict[str, HiveHandle] = {LOCAL_HIVE: HiveHandle(LOCAL_HIVE, local=True)}
        self._conf_stamp: tuple[int, int] | None = None

    @property
    def conf_path(self):
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
        remotes = load_hives_conf(self.conf_path)
        self._conf_stamp = stamp
        for alias, host in remotes.items():
            hive = self._hives.get(alias)
            if hive is None:
                hive = self._hives[alias] = HiveHandle(alias, local=False)
            hive.remote = host
        for alias in [a for a, h in self._hives.items() if not h.local and a not in remotes]:
            if self._hives[alias].supervisor is None:  # a supervised one goes when it is stopped
                del self._hives[alias]

    def get(self, alias: str) -> HiveHandle:
        self._sync_conf()
        hive = self._hives.get(alias)
        if hive is None:
            known = ", ".join(self._hives)
            raise UnknownHive(f"Unknown hive '{alias}'. Known hives: {known}. Add remote machines to "
                              f"{self.conf_path} (or import them with `rbee hive import-ssh`).")
        return hive

    def remote(self, alias: str) -> RemoteHost:
        hive = self.get(alias)
        if hive.remote is None:
            raise QueenError(f"'{alias}' is the queen's own machine; it needs no SSH (it starts on first use).",
                             code="LOCAL_HIVE")
        return hive.remote

    def schedulable(self) -> list[str]:
        """Hives a worker may be placed on now: the local one (started on demand) and remote ones up."""
        return [h.alias for h in self.all()
                if h.local or (h.supervisor is not None and h.supervisor.phase is Phase.RUNNING)]

    def all(self) -> list[HiveHandle]:
        self._sync_conf()
        return list(self._hives.values())

    def clients_for(self, alias: str) -> Clients:
        """Clients carrying the token the hive takes: the queen's for the local hive, the hive's own for a
        remote one."""
        hive = self._hives.get(alias)
        if hive is None or hive.local:
            return self._clients
        token = self.store.token(alias)
        if token is None:
            raise HiveUnavailable(f"The queen holds no token for hive {alias} (not installed by this queen, or "
                                  f"uninstalled); run `rbee hive install {alias}`.")
        return Clients(self._clients.session, token)

    def token_of(self, hive_id: str) -> str | None:
        """The token a remote hive's heartbeats carry (None for unknown or local hives)."""
        hive = self._hives.get(hive_id)
        return None if hive is None or hive.local else self.store.token(hive_id)

    async def worker_url(self, hive_id: str, url: str) -> str:
        """Where the queen reaches a worker its hive reported at `url`: through the link's forward for
        a remote hive (the worker listens on that machine's loopback)."""
        hive = self._hives.get(hive_id)
        if hive is None or hive.local:
            return url
        link = hive.supervisor.link if hive.supervisor else None
        if link is None or link.closed:
            raise HiveUnavailable(f"Hive {hive_id} is not connected.", code="HIVE_UNREACHABLE")
        return await link.local_url(url)

    async def link_lost(self, hive_id: str, within: float = 2.0) -> str | None:
        """Why the link to a remote hive went down, if it did; None for a local hive or a link that is up.
        A stream that just broke may be the first sign of a lost link, so the hive is asked for its health
        through the link: an answer proves the link up at once (a worker died, not the link); otherwise SSH
        gets up to `within` seconds to notice."""
        hive = self._hives.get(hive_id)
        link = hive.supervisor.link if hive and hive.supervisor else None
        if hive is None or hive.local or hive.supervisor is None:
            return None
        if link is None:
            return hive.supervisor.problem or "not connected"
        closed = asyncio.ensure_future(link.wait_closed())
        probe = asyncio.ensure_future(self.healthy(hive))
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

    async def healthy(self, hive: HiveHandle) -> bool:
        return bool(hive.url) and await hive_answers(self.clients_for(hive.alias).daemon(hive.url), hive.alias)

    async def _shares_our_token(self, url: str) -> bool:
        """A hive is ours only if it takes our token: an authenticated request proves it (health does not)."""
        try:
            await self._clients.daemon(url).request("GET", "/v1/jobs", timeout=5)
        except RbeeError:
            return False
        return True

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
        if hive.local:
            hive.state = HiveState.UNREACHABLE
        else:  # its supervisor finds out within a second or two whether it died or its link did
            await asyncio.sleep(2 * HEALTH_EVERY_S)
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
        hive = self.get(alias)
        if not hive.local:
            if hive.supervisor is None and self.store.keep_running(alias) and self.store.token(alias):
                self._supervise(hive)  # a queen that just started, before resume() ran
            if hive.supervisor is None:
                raise HiveUnavailable(f"Hive '{alias}' is not running; start it with `rbee hive start {alias}` "
                                      f"(install it first with `rbee hive install {alias}`).")
            return await hive.supervisor.wait_up(REMOTE_WAIT_S, narrate_action="hive_check")
        if hive.state is HiveState.RUNNING and hive.url and (hive.process is None or hive.process.returncode is None):
            return hive.url
        async with hive.lock:
            if hive.url and await self.healthy(hive):
                hive.state = HiveState.RUNNING
                return hive.url
            return await self._start_local(hive)

    async def start(self, alias: str) -> HiveHandle:
        hive = self.get(alias)
        if hive.remote is not None:
            self.clients_for(alias)  # fails clearly when the queen holds no token for it
            async with hive.lock:  # one start or stop of a remote hive at a time
                self.store.set_keep_running(alias, True)
                sup = self._supervise(hive)
                if sup.phase is Phase.RUNNING:
                    narrate("hive_start", f"Hive {alias} is already running", target=alias)
                else:
                    narrate("hive_start", f"Connecting to {alias} ({hive.remote.where}) over SSH", target=alias)
                    await sup.wait_up(REMOTE_START_TIMEOUT_S, narrate_action="hive_start")
                self._sync_state(hive)
            return hive
        if await self.healthy(hive):
            hive.state = HiveState.RUNNING
            narrate("hive_start", f"Hive {alias} is already running at {hive.url}", target=alias)
            return hive
        await self.ensure_running(alias)
        return hive

    def _supervise(self, hive: HiveHandle) -> RemoteHiveSupervisor:
        """The hive's supervisor, started (again, if it had given up or been stopped)."""
        if hive.supervisor is None:
            hive.supervisor = RemoteHiveSupervisor(hive, clients=lambda: self.clients_for(hive.alias),
                                                   queen_url=self._queen_url, workers=self._workers,
                                                   worker_slots=self.config.worker_slots)
        hive.supervisor.start()  # unless its task runs
        return hive.supervisor

    def resume(self) -> None:
        """At start-up: supervise again the remote hives that should be running (their hives and warm
        workers are adopted, not started anew)."""
        self._sync_conf()
        for alias in self.store.to_keep_running():
            hive = self._hives.get(alias)
            if hive is not None and hive.remote is not None and self.store.token(alias):
                self._supervise(hive)

    def _sync_state(self, hive: HiveHandle) -> None:
        if hive.supervisor is not None:
            hive.state = PHASE_STATES[hive.supervisor.phase]

    async def _start_local(self, hive: HiveHandle) -> str:
        port = self.config.local_hive_port
        if port:  # a hive left by an earlier queen may already answer on the fixed port: adopt it if it is ours
            url = hive.url = f"http://127.0.0.1:{port}"
            if await self.healthy(hive):
                if await self._shares_our_token(url):
                    hive.state = HiveState.RUNNING
                    narrate("hive_start", f"Found hive {hive.alias} already running at {url}", target=hive.alias)
                    return url
                narrate("hive_start", f"The hive at {url} answers with another token (another user's, or another "
                                      "rbee home): starting our own on a free port", target=hive.alias, level="warn")
                port = 0
            hive.url = None
        narrate("hive_start", f"Starting hive {hive.alias}", target=hive.alias)
        hive.state = HiveState.STARTING
        log_dir = self.config.paths.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"hive-{hive.alias}.log"
        started = time.monotonic()
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hive.main", "--hive-id", hive.alias, "--host", "127.0.0.1",
                "--port", str(port), "--queen-url", self._queen_url(), "--exit-with-parent",
                "--worker-slots", str(self.config.worker_slots),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_file, cwd=CHILD_CWD)
        hive.process = proc
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self.config.hive_start_timeout_s)  # type: ignore[union-attr]
        except asyncio.TimeoutError:
            line = b""
        url = listening_url(line)
        if url is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            hive.state, hive.process = HiveState.CRASHED, None
            tail = tail_file(log_path, 10)
            raise HiveUnavailable(f"Hive {hive.alias} did not start (exit code {proc.returncode}). "
                                  f"Its log {log_path} ends with:\n{tail}")
        hive.url = url
        hive.state = HiveState.RUNNING
        hive.started_at = time.time()
        hive.exit_code = None
        detached_task(self._watch(hive, proc), name=f"watch-hive-{hive.alias}")
        narrate("hive_start", f"Hive {hive.alias} is up at {url} ({time.monotonic() - started:.2f} s)",
                target=hive.alias)
        return url

    async def _watch(self, hive: HiveHandle, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(Exception):
            async for _ in proc.stdout:  # type: ignore[union-attr]
                pass
        code = await proc.wait()
        if hive.process is proc:
            hive.exit_code = code
            hive.state = HiveState.STOPPED if code == 0 else HiveState.CRASHED
            hive.url = None
            hive.process = None

    async def stop(self, alias: str) -> HiveHandle:
        hive = self.get(alias)
        if hive.remote is not None:
            narrate("hive_stop", f"Stopping hive {alias} (and its workers)", target=alias)
            async with hive.lock:
                self.store.set_keep_running(alias, False)
                if hive.supervisor is not None:
                    await hive.supervisor.stop()
                    hive.supervisor = None
                self._workers.mark_hive(alias, WorkerStatus.STOPPED)
                hive.url = None
                try:
                    await remote_hives.stop(hive.remote)
                except RbeeError as exc:
                    hive.state = HiveState.UNREACHABLE
                    raise HiveUnavailable(f"Could not stop hive {alias}: {exc.message} It may still run there; the "
                                          f"queen no longer keeps it running. Run `rbee hive stop {alias}` again once "
                                          "the machine is reachable.", code="HIVE_UNREACHABLE") from exc
                hive.state = HiveState.STOPPED
            return hive
        proc = hive.process
        if not hive.url and proc is None:
            narrate("hive_stop", f"Hive {alias} is not running", target=alias)
            return hive
        narrate("hive_stop", f"Stopping hive {alias} (and its workers)", target=alias)
        if hive.url:
            with contextlib.suppress(RbeeError):  # not answering: the process is stopped below
                await self._clients.daemon(hive.url).shutdown()
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                narrate("hive_stop", f"Hive {alias} did not stop in {STOP_TIMEOUT_S:g} s; killing it",
                        target=alias, level="warn")
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
        hive.state, hive.url, hive.process = HiveState.STOPPED, None, None
        narrate("hive_stop", f"Hive {alias} stopped", target=alias)
        return hive

    async def status(self, alias: str) -> dict[str, Any]:
        """Check the hive's health now, and describe it."""
        hive = self.get(alias)
        if hive.remote is not None:  # its supervisor checks it every second
            self._sync_state(hive)
            if hive.supervisor is None:
                hive.state = HiveState.STOPPED
            elif hive.supervisor.link is not None and hive.supervisor.link.closed:
                hive.state = HiveState.UNREACHABLE  # its supervisor is about to say so
        elif hive.url:
            hive.state = HiveState.RUNNING if await self.healthy(hive) else HiveState.UNREACHABLE
        return hive.to_dict()

    async def statuses(self) -> list[dict[str, Any]]:
        """Every hive's status, checked concurrently (one slow hive costs one timeout, not one each)."""
        return list(await asyncio.gather(*(self.status(h.alias) for h in self.all())))

    async def refresh_capabilities(self, alias: str) -> dict[str, Any]:
        url = await self.ensure_running(alias)
        caps = await self.clients_for(alias).daemon(url).request("GET", "/v1/capabilities")
        self.get(alias).capabilities = caps
        return caps

    async def close(self) -> None:
        """Stop the local hive this queen started; let go of the remote ones (they keep running, and the
        next queen adopts them)."""
        await asyncio.gather(*(self.stop(h.alias) for h in self._hives.values() if h.process is not None),
                             *(h.supervisor.stop() for h in self._hives.values() if h.supervisor is not None),
                             return_exceptions=True)

