"""Keeping one remote hive running and reachable, for as long as the user wants it running.

A background task per remote hive: connect over SSH (HiveLink), find the hive through its lock and
adopt it, or start it; tell it where the queen is; register its running workers; then check its
health every second through the link. A hive that stops answering while the link is up is restarted
(bounded: RESTARTS within RESTART_WINDOW_S, with backoff). A link that dies (SSH keepalives) makes
the hive `unreachable` and its workers unschedulable at once; the task reconnects with backoff and,
when the link returns, adopts the hive and its workers again without any user action.

Every step is a note: logged, kept for `rbee hive status`, and narrated to a job that is waiting for
the hive. What it finds (the hive's URL through the link, when it started) is its own state, read by
whoever holds it (RemoteHive): the supervisor knows nothing of the queen's hive handles.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from typing import Any, Callable

import asyncssh

from queen.errors import HiveUnavailable
from queen.forwarding import hive_health, run_remote_job
from queen.hives.remote.hives_conf import RemoteHost
from queen.hives.remote.link import HiveLink
from queen.worker_registry import WorkerRegistry, WorkerStatus
from shared.errors import RbeeError, ServerError
from shared.events import Data, Event, detached_task, narrate
from shared.heartbeat import EngineState, Heartbeat
from shared.job_client import Clients
from shared.kv_cache import worker_slots_args
from shared.operations import WorkerList
from shared.version import THIS, PeerVersion, incompatibility
from shared.wire import WireEnum

log = logging.getLogger("rbee.queen.remote")

HEALTH_EVERY_S = 1.0
HEALTH_FAILURES = 2  # failed checks in a row, the link up: the hive is gone
RESTARTS = 5  # restarts allowed within RESTART_WINDOW_S before giving up (until `rbee hive start`)
RESTART_WINDOW_S = 300.0
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 4.0, 8.0)
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 5.0)  # the last one repeats while the machine is away
NOTES_KEPT = 20
ATTEMPTS = 5  # connections in a row that fail to bring the hive up (the link itself being up) before giving up
# SSH failures that trying again cannot fix: the user has to change something (hives.conf, known_hosts, keys).
PERMANENT_SSH = frozenset({"SSH_AUTH_REFUSED", "SSH_UNKNOWN_HOST_KEY", "SSH_KEY_MISSING", "SSH_HOST_KEY",
                           "SSH_ERROR", "SSH_FORWARDING_REFUSED", "REMOTE_ADDRESS"})


class LinkLost(Exception):
    pass


class GiveUp(HiveUnavailable):
    """Trying again will not help (the hive exits as it starts, or died too often): wait for the user."""


class Phase(WireEnum):
    CONNECTING = "connecting"
    RUNNING = "running"
    UNREACHABLE = "unreachable"
    GAVE_UP = "gave_up"
    STOPPED = "stopped"


class RemoteHiveSupervisor:
    def __init__(self, alias: str, *, host: Callable[[], RemoteHost], clients: Callable[[], Clients],
                 queen_url: Callable[[], str], workers: WorkerRegistry, worker_slots: int | None,
                 started_at: float | None = None) -> None:
        self.alias = alias
        self._host = host  # read at each use: hives.conf may change
        self._clients = clients  # read at each use: a reinstall gives the hive a new token
        self._queen_url = queen_url
        self._workers = workers
        self._worker_slots = worker_slots
        self.phase = Phase.CONNECTING
        self.url: str | None = None  # the hive's, through the link's forward
        self.started_at = started_at  # wall clock; kept when the same hive is adopted again
        self.link: HiveLink | None = None
        self.notes: collections.deque[dict[str, Any]] = collections.deque(maxlen=NOTES_KEPT)
        self.problem: str | None = None  # why it is not running, in words
        self.peer: PeerVersion | None = None  # the rbee the hive runs, as its /health says
        self.strays: list[dict[str, Any]] = []  # hives of its install holding no lock (from before the lock file)
        self.unreachable_since: float | None = None  # monotonic, for "how long"
        self.unreachable_at: float | None = None  # wall clock, for `rbee hive status`
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[str, str], None]] = []
        self._restarts: list[float] = []
        self._task: asyncio.Task | None = None
        self._connected_once = False
        self._hung_said = False
        self.gpus: list[dict[str, Any]] | None = None  # as the hive's last /health told them
        self.gpus_at: float | None = None  # wall clock

    @property
    def host(self) -> RemoteHost:
        """hives.conf as it is now (an edit, say a fixed IdentityFile, applies at the next connection)."""
        return self._host()

    @property
    def clients(self) -> Clients:
        return self._clients()

    # -- what others see ---------------------------------------------------------------------------------

    def note(self, human: str, level: str = "info") -> None:
        self.notes.append({"at": time.time(), "level": level, "human": human})
        getattr(log, "warning" if level != "info" else "info")("%s: %s", self.alias, human)
        for listener in list(self._listeners):
            listener(human, level)

    def _set(self, phase: Phase, problem: str | None = None) -> None:
        self.phase, self.problem = phase, problem
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self) -> None:
        """Start supervising, unless it is already (a task that ended, for whatever reason, is replaced)."""
        if self._task is None or self._task.done():
            self._restarts.clear()
            self._set(Phase.CONNECTING)
            self._task = detached_task(self._run(), name=f"supervise-{self.alias}")

    async def stop(self) -> None:
        """Stop supervising (the hive itself keeps running: see RemoteHive.stop for that)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.link is not None:
            await self.link.close()
            self.link = None
        self._set(Phase.STOPPED, "it was stopped")

    async def wait_up(self, timeout: float, *, narrate_action: str | None = None) -> str:
        """The hive's URL once it runs; fails at once when it is unreachable or given up on. Meanwhile the
        supervisor's notes are narrated to the waiting job (in the job's own context)."""
        job_context = contextvars.copy_context()

        def tell(human: str, level: str) -> None:
            job_context.run(narrate, narrate_action or "hive_check", human, target=self.alias,
                            level=level)

        if narrate_action:
            self._listeners.append(tell)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.phase is Phase.RUNNING and self.url:
                    return self.url
                if self.phase is Phase.UNREACHABLE:
                    since = time.monotonic() - (self.unreachable_since or time.monotonic())
                    raise HiveUnavailable(
                        f"Hive {self.alias} is unreachable: {self.problem} ({since:.0f} s ago). rbee keeps "
                        f"reconnecting to {self.host.where} by itself; its workers come back with the link.",
                        code="HIVE_UNREACHABLE")
                if self._task is None or self._task.done():
                    self._set(Phase.GAVE_UP, self.problem or "its supervision ended")
                if self.phase in (Phase.GAVE_UP, Phase.STOPPED):
                    raise HiveUnavailable(f"Hive {self.alias} is not running: {self.problem}. "
                                          f"`rbee hive start {self.alias}` tries again.")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HiveUnavailable(f"Hive {self.alias} did not come up within {timeout:g} s "
                                          f"({self.problem or self.phase.value}).")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        finally:
            if narrate_action:
                self._listeners.remove(tell)

    # -- the loop ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0  # attempts in a row that did not bring the hive up
        while True:
            if failures:
                await asyncio.sleep(RECONNECT_BACKOFF_S[min(failures - 1, len(RECONNECT_BACKOFF_S) - 1)])
            failures += 1
            try:
                self.link = await HiveLink.open(self.host)
            except RbeeError as exc:
                if exc.code in PERMANENT_SSH:
                    return self._give_up(exc.message)
                self._lost(exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - asyncssh errors raised while setting up
                self._lost(_describe(exc))
                continue
            link = self.link
            try:
                was_unreachable = self.phase is Phase.UNREACHABLE
                await self._bring_up(link)
                if was_unreachable:
                    self.note(f"Reconnected to {self.host.where}; hive {self.alias} serves again")
                failures = 0
                await self._watch(link)
            except LinkLost as exc:
                self._lost(str(exc))
            except (asyncssh.Error, OSError) as exc:  # the link broke under a command or a forward
                await self._closing(link)
                self._lost(link.close_reason if link.closed else _describe(exc))
            except RbeeError as exc:
                if await self._closing(link):
                    self._lost(link.close_reason)
                elif isinstance(exc, GiveUp) or exc.code in PERMANENT_SSH or failures >= ATTEMPTS:
                    return self._give_up(exc.message)
                else:  # a timeout, a refusal: the link is up, so try again shortly
                    self.note(f"Could not bring hive {self.alias} up: {exc.message}; trying again", "warn")
                    self._set(Phase.CONNECTING, exc.message)
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the supervision
                log.exception("supervising %s failed", self.alias)
                self._lost(f"unexpected error: {exc!r}")
            finally:
                if self.link is not None:
                    await self.link.close()
                    self.link = None

    def _give_up(self, why: str) -> None:
        self.note(f"Gave up on hive {self.alias}: {why}", "error")
        self._set(Phase.GAVE_UP, why)

    @staticmethod
    async def _closing(link: HiveLink, within: float = 1.0) -> bool:
        """Whether the link is going down: a failure over a dying link is the link's, not the hive's."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(link.wait_closed(), within)
        return link.closed

    def _lost(self, reason: str) -> None:
        what = "lost the connection to" if self._connected_once else "cannot connect to"
        if self.phase is not Phase.UNREACHABLE:
            self.unreachable_since = time.monotonic()
            self.unreachable_at = time.time()
            self.note(f"{what.capitalize()} {self.alias} ({self.host.where}): {reason}; trying again by itself",
                      "warn")
            self._workers.mark_hive(self.alias, WorkerStatus.UNREACHABLE, only_alive=True)
        self._set(Phase.UNREACHABLE, f"{what} {self.host.where} ({reason})")

    async def _bring_up(self, link: HiveLink) -> None:
        queen_url = await link.forward_queen(self._queen_url())
        found = await link.control("status")
        self.strays = found.get("strays") or []
        for stray in self.strays:
            self.note(stray_note(self.alias, stray), "warn")
        for _ in range(50):  # a hive between taking its lock and publishing its port
            if not found.get("starting"):
                break
            await asyncio.sleep(0.1)
            found = await link.control("status")
        if found.get("running") and found.get("verified"):
            url = await link.local_url(f"http://127.0.0.1:{found['port']}")
            if await self._ours(url):
                self.url = url
                self.note(f"Found hive {self.alias} running (pid {found['pid']}); adopted it")
            else:
                self.note(f"The hive running on {self.alias} (pid {found['pid']}) refuses the token the queen "
                          "holds for it (installed by another queen?); stopping it and starting it again", "warn")
                await link.control("stop")
                await self._start_hive(link, queen_url)
        else:
            await self._start_hive(link, queen_url)
        self._connected_once = True
        await self._check_version()
        await self.clients.daemon(self.url).request("PUT", "/v1/queen", {"url": queen_url}, timeout=5)
        await self._adopt_workers(link)
        self.started_at = self.started_at or time.time()
        self._set(Phase.RUNNING)

    async def _check_version(self) -> None:
        """Nothing is sent to a hive whose protocol this queen cannot speak: supervision stops, saying why."""
        health = await self.clients.daemon(self.url).health(timeout=10)
        self.peer = PeerVersion.of(health)
        if (why := incompatibility(f"Hive {self.alias}", self.peer, fix=f"rbee hive upgrade {self.alias}")) is not None:
            raise GiveUp(why)
        if self.peer.skewed:
            self.note(f"Hive {self.alias} runs {self.peer.label}, this queen {THIS.label}: they work together; "
                      f"`rbee hive upgrade {self.alias}` brings it to this version", "warn")

    async def _ours(self, url: str) -> bool:
        """Whether the hive holding the lock takes our token for it (health is public: a request that needs
        the token proves it). Anything but a refusal (slow, starting) is raised, to be tried again."""
        try:
            await self.clients.daemon(url).request("GET", "/v1/capabilities", timeout=10)
        except ServerError as exc:
            if exc.status == 401:
                return False
            raise
        return True

    async def _start_hive(self, link: HiveLink, queen_url: str) -> None:
        self.note(f"Starting rbee-hive on {self.alias}")
        answer = await link.control("start", "--", "--host", "127.0.0.1", "--port", str(self.host.hive_port),
                                    "--hive-id", self.alias, "--queen-url", queen_url, "--relay-heartbeats",
                                    *worker_slots_args(self._worker_slots))
        if not answer.get("running"):
            tail = "\n".join(answer.get("log_tail") or []) or "(no log)"
            raise GiveUp(f"rbee-hive on {self.alias} exited right after starting "
                                  f"(exit code {answer.get('exit_code')}):\n{tail}")
        self.url = await link.local_url(f"http://127.0.0.1:{answer['port']}")
        self.started_at = time.time()
        self.note(f"Hive {self.alias} is up (pid {answer['pid']}, port {answer['port']} on its loopback)")

    async def _adopt_workers(self, link: HiveLink) -> None:
        """The hive's running workers, registered (or re-registered, with this link's forwards) at once:
        warm workers are used again, not spawned anew."""
        listed: list[dict[str, Any]] = []

        def collect(event: Event) -> None:
            if isinstance(event, Data) and event.action == "worker_list":
                listed.extend(event.payload.get("workers") or [])

        await run_remote_job(self.clients.jobs(self.url), WorkerList(hive_id=self.alias), on_event=collect)
        running = {w["id"] for w in listed if w.get("state") in ("ready", "busy")}
        for known in self._workers.all():  # what the queen thought ran there but no longer does
            if known.hive_id == self.alias and known.worker_id not in running:
                self._workers.mark(known.worker_id, WorkerStatus.STOPPED)
        for w in listed:
            if w.get("state") not in ("ready", "busy") or not w.get("url"):
                continue
            self._workers.heartbeat(Heartbeat(
                worker_id=w["id"], hive_id=self.alias, url=await link.local_url(w["url"]), model=w["model"],
                state=EngineState(w["state"]), pid=w.get("pid"), slots=w.get("slots") or 1,
                device=w.get("device") or "cpu", embedding=bool(w.get("embedding")),
                version=self.peer.version if self.peer else None, protocol=self.peer.protocol if self.peer else 0))
        if listed:
            self.note(f"{len(listed)} worker(s) running on {self.alias}: "
                      + ", ".join(f"{w['id']} ({w['model']})" for w in listed))

    async def _watch(self, link: HiveLink) -> None:
        failures = 0
        while True:
            closed = asyncio.ensure_future(link.wait_closed())
            try:
                await asyncio.wait({closed}, timeout=HEALTH_EVERY_S)
            finally:
                closed.cancel()
            if link.closed:
                raise LinkLost(link.close_reason)
            if (health := await hive_health(self.clients.daemon(self.url), self.alias)) is not None:
                failures, self._hung_said = 0, False
                self.peer = PeerVersion.of(health)
                if health.get("gpus") is not None:  # the hive's GPUs, as its heartbeat each second tells them
                    self.gpus, self.gpus_at = health["gpus"], time.time()
                continue
            failures += 1
            if link.closed:
                raise LinkLost(link.close_reason)
            if failures >= HEALTH_FAILURES:
                await self._restart(link)
                failures = 0

    async def _restart(self, link: HiveLink) -> None:
        if await self._closing(link):
            raise LinkLost(link.close_reason)
        found = await link.control("status")
        if found.get("running"):  # slow or hung, not gone: say so once
            if not self._hung_said:
                self._hung_said = True
                self.note(f"Hive {self.alias} does not answer, but its process (pid {found.get('pid')}) is "
                          "alive; waiting for it", "warn")
            return
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S]
        if len(self._restarts) >= RESTARTS:
            raise HiveUnavailable(f"it died {RESTARTS} times within {RESTART_WINDOW_S / 60:.0f} minutes; "
                                  f"its log is {link.home}/state/hive.log on {self.alias}")
        delay = RESTART_BACKOFF_S[min(len(self._restarts), len(RESTART_BACKOFF_S) - 1)]
        self._restarts.append(now)
        self._workers.mark_hive(self.alias, WorkerStatus.CRASHED)  # its workers died with it
        self.note(f"Hive {self.alias} stopped answering and its process is gone; restarting it (attempt "
                  f"{len(self._restarts)} of {RESTARTS}{f', in {delay:g} s' if delay else ''})", "warn")
        self._set(Phase.CONNECTING, "restarting after it died")
        await asyncio.sleep(delay)
        await self._bring_up(link)


def stray_note(alias: str, stray: dict[str, Any]) -> str:
    return (f"An rbee-hive from before the lock file runs on {alias} (pid {stray.get('pid')}, listening on "
            f"{stray.get('host')}:{stray.get('port')}; `{stray.get('command')}`): `rbee hive upgrade {alias}` or "
            f"`rbee hive stop {alias}` stops it")


def _describe(exc: BaseException) -> str:
    return str(exc) or getattr(exc, "reason", "") or type(exc).__name__
