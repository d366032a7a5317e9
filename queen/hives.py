"""The hives the queen knows: `localhost` always (started on first use, no SSH), and the remote ones
of hives.conf (installed, started and stopped over SSH; see remote_hives.py).

The queen owns the local hive process it starts: its log goes to the state dir, it dies with the queen
(--exit-with-parent), and `close()` stops it (its workers with it), and any remote hive it started.
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
from shared.errors import RbeeError
from shared.events import detached_task, narrate
from shared.handshake import listening_url
from shared.job_client import Clients
from shared.operations import LOCAL_HIVE, HiveOperation, WorkerDelete
from shared.ports import LOOPBACK_HOSTS
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
    started_remotely: bool = False  # this queen started it over SSH
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "local": self.local, "url": self.url, "state": self.state.value,
            "host": self.remote.where if self.remote else None,
            "pid": self.process.pid if self.process and self.process.returncode is None else None,
            "started_by_queen": self.process is not None, "started_at": self.started_at,
            "exit_code": self.exit_code, "capabilities": self.capabilities,
        }


class HiveRegistry:
    def __init__(self, config: QueenConfig, clients: Clients, queen_url: Callable[[], str]) -> None:
        self.config = config
        self._clients = clients
        self._queen_url = queen_url
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
            if hive.url is None:
                hive.url = f"http://{host.hostname}:{host.hive_port}"
        for alias in [a for a, h in self._hives.items() if not h.local and a not in remotes]:
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

    def all(self) -> list[HiveHandle]:
        self._sync_conf()
        return list(self._hives.values())

    async def healthy(self, hive: HiveHandle) -> bool:
        return bool(hive.url) and await hive_answers(self._clients.daemon(hive.url), hive.alias)

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
            return await run_remote_job(self._clients.jobs(url), op)
        except RemoteJobLost as exc:
            if exc.submitted:
                raise
        # It went away since it was last seen (stopped, killed): look again, starting it if it is ours.
        hive = self.get(op.hive_id)
        hive.state = HiveState.UNREACHABLE
        narrate("hive_check", f"Hive {hive.alias} did not answer at {url}; checking it again", target=hive.alias,
                level="warn")
        url = await self.ensure_running(op.hive_id)
        return await run_remote_job(self._clients.jobs(url), op)

    async def ask_to_stop_worker(self, hive_id: str, worker_id: str) -> None:
        """Have a hive stop a worker the queen gave up on (it may still hold memory and cores), without
        waiting: a frozen one takes the hive's stop timeout to be killed, and the hive no longer counts a
        worker it is stopping against its cores."""
        try:
            url = await self.ensure_running(hive_id)
            await self._clients.jobs(url).submit(WorkerDelete(hive_id=hive_id, id=worker_id))
        except RbeeError as exc:  # it may be gone already
            log.info("could not have %s stopped on %s: %s", worker_id, hive_id, exc.message)

    async def ensure_running(self, alias: str) -> str:
        """The hive's URL, starting the local hive first when it is not running."""
        hive = self.get(alias)
        if hive.state is HiveState.RUNNING and hive.url and (hive.process is None or hive.process.returncode is None):
            return hive.url
        async with hive.lock:
            if hive.url and await self.healthy(hive):
                hive.state = HiveState.RUNNING
                return hive.url
            if not hive.local:
                raise HiveUnavailable(f"Hive '{alias}' is not running; start it with `rbee hive start {alias}` "
                                      f"(install it first with `rbee hive install {alias}`).")
            return await self._start_local(hive)

    async def start(self, alias: str) -> HiveHandle:
        hive = self.get(alias)
        if await self.healthy(hive):
            hive.state = HiveState.RUNNING
            narrate("hive_start", f"Hive {alias} is already running at {hive.url}", target=alias)
            return hive
        if hive.remote is not None:
            queen_url = self._queen_url()
            if "127.0.0.1" in queen_url and hive.remote.hostname not in LOOPBACK_HOSTS:
                narrate("hive_start", f"The queen listens on {queen_url}, which {alias} cannot reach: its workers' "
                                      "heartbeats will not arrive. Start the queen with --host 0.0.0.0.",
                        target=alias, level="warn")
            async with hive.lock:
                hive.url = await remote_hives.start(hive.remote, queen_url, self._clients)
                hive.state, hive.started_remotely, hive.started_at = HiveState.RUNNING, True, time.time()
            return hive
        await self.ensure_running(alias)
        return hive

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
            await remote_hives.stop(hive.remote, self._clients)
            hive.state, hive.started_remotely = HiveState.STOPPED, False
            narrate("hive_stop", f"Hive {alias} stopped", target=alias)
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
        if hive.url:
            healthy = await self.healthy(hive)
            hive.state = HiveState.RUNNING if healthy else (HiveState.STOPPED if hive.remote else HiveState.UNREACHABLE)
        return hive.to_dict()

    async def statuses(self) -> list[dict[str, Any]]:
        """Every hive's status, checked concurrently (one slow hive costs one timeout, not one each)."""
        return list(await asyncio.gather(*(self.status(h.alias) for h in self.all())))

    async def refresh_capabilities(self, alias: str) -> dict[str, Any]:
        url = await self.ensure_running(alias)
        caps = await self._clients.daemon(url).request("GET", "/v1/capabilities")
        self.get(alias).capabilities = caps
        return caps

    async def close(self) -> None:
        """Stop the hives this queen started (remote ones by their shutdown endpoint only: no SSH here)."""
        await asyncio.gather(*(self.stop(h.alias) for h in self._hives.values() if h.process is not None),
                             *(self._shutdown_remote(h) for h in self._hives.values() if h.started_remotely),
                             return_exceptions=True)

    async def _shutdown_remote(self, hive: HiveHandle) -> None:
        if hive.url:
            with contextlib.suppress(RbeeError):
                await self._clients.daemon(hive.url).shutdown()

