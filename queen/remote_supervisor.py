"""Keeping one remote hive running and reachable, for as long as the user wants it running.

A background task per remote hive: connect over SSH (HiveLink), find the hive through its lock and
adopt it, or start it; tell it where the queen is; register its running workers; then check its
health every second through the link. A hive that stops answering while the link is up is restarted
(bounded: RESTARTS within RESTART_WINDOW_S, with backoff). A link that dies (SSH keepalives) makes
the hive `unreachable` and its workers unschedulable at once; the task reconnects with backoff and,
when the link returns, adopts the hive and its workers again without any user action.

Every step is a note: logged, kept on the hive for `rbee hive status`, and narrated to a job that
is waiting for the hive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import asyncssh

from queen.errors import HiveUnavailable
from queen.forwarding import hive_answers, run_remote_job
from queen.hive_link import HiveLink
from queen.worker_registry import WorkerRegistry, WorkerStatus
from shared.errors import RbeeError
from shared.events import Data, Event, detached_task, narrate
from shared.heartbeat import EngineState, Heartbeat
from shared.job_client import Clients
from shared.operations import WorkerList
from shared.wire import WireEnum

if TYPE_CHECKING:
    from queen.hives import HiveHandle

log = logging.getLogger("rbee.queen.remote")

HEALTH_EVERY_S = 1.0
HEALTH_TIMEOUT_S = 2.0
HEALTH_FAILURES = 2  # failed checks in a row, the link up: the hive is gone
RESTARTS = 5  # restarts allowed within RESTART_WINDOW_S before giving up (until `rbee hive start`)
RESTART_WINDOW_S = 300.0
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 4.0, 8.0)
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 5.0)  # the last one repeats while the machine is away
NOTES_KEPT = 20


class LinkLost(Exception):
    pass


class Phase(WireEnum):
    CONNECTING = "connecting"
    RUNNING = "running"
    UNREACHABLE = "unreachable"
    GAVE_UP = "gave_up"
    STOPPED = "stopped"


class RemoteHiveSupervisor:
    def __init__(self, hive: "HiveHandle", *, clients: Clients, queen_url: Callable[[], str],
                 workers: WorkerRegistry, worker_slots: int) -> None:
        assert hive.remote is not None
        self.hive = hive
        self.host = hive.remote
        self.clients = clients
        self._queen_url = queen_url
        self._workers = workers
        self._worker_slots = worker_slots
        self.phase = Phase.CONNECTING
        self.link: HiveLink | None = None
        self.notes: collections.deque[dict[str, Any]] = collections.deque(maxlen=NOTES_KEPT)
        self.problem: str | None = None  # why it is not running, in words
        self.unreachable_since: float | None = None
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[str, str], None]] = []
        self._restarts: list[float] = []
        self._task: asyncio.Task | None = None

    # -- what others see ---------------------------------------------------------------------------------

    def note(self, human: str, level: str = "info") -> None:
        self.notes.append({"at": time.time(), "level": level, "human": human})
        getattr(log, "warning" if level != "info" else "info")("%s: %s", self.hive.alias, human)
        for listener in list(self._listeners):
            listener(human, level)

    def _set(self, phase: Phase, problem: str | None = None) -> None:
        self.phase, self.problem = phase, problem
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._restarts.clear()
            self._set(Phase.CONNECTING)
            self._task = detached_task(self._run(), name=f"supervise-{self.hive.alias}")

    async def stop(self) -> None:
        """Stop supervising (the hive itself keeps running: see HiveRegistry.stop for that)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.link is not None:
            await self.link.close()
            self.link = None
        self._set(Phase.STOPPED)

    async def wait_up(self, timeout: float, *, narrate_action: str | None = None) -> str:
        """The hive's URL once it runs; fails at once when it is unreachable or given up on."""
        def tell(human: str, level: str) -> None:
            narrate(narrate_action or "hive_check", human, target=self.hive.alias, level=level)  # type: ignore[arg-type]

        if narrate_action:
            self._listeners.append(tell)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.phase is Phase.RUNNING and self.hive.url:
                    return self.hive.url
                if self.phase is Phase.UNREACHABLE:
                    since = time.monotonic() - (self.unreachable_since or time.monotonic())
                    raise HiveUnavailable(
                        f"Hive {self.hive.alias} is unreachable: {self.problem} ({since:.0f} s ago). rbee keeps "
                        f"reconnecting to {self.host.where} by itself; its workers come back with the link.",
                        code="HIVE_UNREACHABLE")
                if self.phase in (Phase.GAVE_UP, Phase.STOPPED):
                    raise HiveUnavailable(f"Hive {self.hive.alias} is not running: {self.problem}. "
                                          f"`rbee hive start {self.hive.alias}` tries again.")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HiveUnavailable(f"Hive {self.hive.alias} did not come up within {timeout:g} s "
                                          f"({self.problem or self.phase.value}).")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        finally:
            if narrate_action:
                self._listeners.remove(tell)

    # -- the loop ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                self.link = await HiveLink.open(self.host)
            except RbeeError as exc:
                self._lost(exc.message)
                await asyncio.sleep(RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)])
                failures += 1
                continue
            failures = 0
            if self.phase is Phase.UNREACHABLE:
                self.note(f"Reconnected to {self.host.where}")
            try:
                await self._bring_up(self.link)
                await self._watch(self.link)
            except LinkLost as exc:
                self._lost(str(exc))
            except (asyncssh.Error, OSError) as exc:  # the link broke under a command or a forward
                await self._closing(self.link)
                self._lost(self.link.close_reason if self.link.closed else str(exc) or type(exc).__name__)
            except RbeeError as exc:
                if await self._closing(self.link):
                    self._lost(self.link.close_reason)
                else:
                    self.note(f"Gave up on hive {self.hive.alias}: {exc.message}", "error")
                    self._set(Phase.GAVE_UP, exc.message)
                    await self.link.close()
                    self.link = None
                    return
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the supervision
                log.exception("supervising %s failed", self.hive.alias)
                self._lost(f"unexpected error: {exc!r}")
                await asyncio.sleep(RECONNECT_BACKOFF_S[-1])
            finally:
                if self.link is not None:
                    await self.link.close()
                    self.link = None

    @staticmethod
    async def _closing(link: HiveLink, within: float = 1.0) -> bool:
        """Whether the link is going down: a failure over a dying link is the link's, not the hive's."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(link.wait_closed(), within)
        return link.closed

    def _lost(self, reason: str) -> None:
        if self.phase is not Phase.UNREACHABLE:
            self.unreachable_since = time.monotonic()
            self.note(f"Lost the connection to {self.hive.alias} ({self.host.where}): {reason}; reconnecting", "warn")
            self._workers.mark_hive(self.hive.alias, WorkerStatus.UNREACHABLE)
        self._set(Phase.UNREACHABLE, f"lost the connection to {self.host.where} ({reason})")

    async def _bring_up(self, link: HiveLink) -> None:
        queen_url = await link.forward_queen(self._queen_url())
        found = await link.control("status")
        for _ in range(50):  # a hive between taking its lock and publishing its port
            if not found.get("starting"):
                break
            await asyncio.sleep(0.1)
            found = await link.control("status")
        if found.get("running") and found.get("verified"):
            url = await link.local_url(f"http://127.0.0.1:{found['port']}")
            if await self._answers(url):
                self.hive.url = url
                self.note(f"Found hive {self.hive.alias} running (pid {found['pid']}); adopted it")
            else:
                self.note(f"A hive runs on {self.hive.alias} (pid {found['pid']}) but does not take this queen's "
                          "token; stopping it and starting ours", "warn")
                await link.control("stop")
                await self._start_hive(link, queen_url)
        else:
            await self._start_hive(link, queen_url)
        await self.clients.daemon(self.hive.url).request("PUT", "/v1/queen", {"url": queen_url}, timeout=5)
        await self._adopt_workers(link)
        self.hive.started_at = self.hive.started_at or time.time()
        self._set(Phase.RUNNING)

    async def _answers(self, url: str) -> bool:
        if not await hive_answers(self.clients.daemon(url), self.hive.alias):
            return False
        try:  # health is public; a request that needs the token proves the hive is ours
            await self.clients.daemon(url).request("GET", "/v1/capabilities", timeout=5)
        except RbeeError:
            return False
        return True

    async def _start_hive(self, link: HiveLink, queen_url: str) -> None:
        self.note(f"Starting rbee-hive on {self.hive.alias}")
        answer = await link.control("start", "--", "--host", "127.0.0.1", "--port", str(self.host.hive_port),
                                    "--hive-id", self.hive.alias, "--queen-url", queen_url,
                                    "--worker-slots", str(self._worker_slots))
        if not answer.get("running"):
            tail = "\n".join(answer.get("log_tail") or []) or "(no log)"
            raise HiveUnavailable(f"rbee-hive on {self.hive.alias} exited right after starting "
                                  f"(exit code {answer.get('exit_code')}):\n{tail}")
        self.hive.url = await link.local_url(f"http://127.0.0.1:{answer['port']}")
        self.hive.started_at = time.time()
        self.note(f"Hive {self.hive.alias} is up (pid {answer['pid']}, port {answer['port']} on its loopback)")

    async def _adopt_workers(self, link: HiveLink) -> None:
        """The hive's running workers, registered (or re-registered, with this link's forwards) at once:
        warm workers are used again, not spawned anew."""
        listed: list[dict[str, Any]] = []

        def collect(event: Event) -> None:
            if isinstance(event, Data) and event.action == "worker_list":
                listed.extend(event.payload.get("workers") or [])

        await run_remote_job(self.clients.jobs(self.hive.url), WorkerList(hive_id=self.hive.alias), on_event=collect)
        for w in listed:
            if w.get("state") not in ("ready", "busy") or not w.get("url"):
                continue
            self._workers.heartbeat(Heartbeat(
                worker_id=w["id"], hive_id=self.hive.alias, url=await link.local_url(w["url"]), model=w["model"],
                state=EngineState(w["state"]), pid=w.get("pid"), slots=w.get("slots") or 1,
                device=w.get("device") or "cpu"))
        if listed:
            self.note(f"{len(listed)} worker(s) running on {self.hive.alias}: "
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
            if await hive_answers(self.clients.daemon(self.hive.url), self.hive.alias):
                failures = 0
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
        if found.get("running"):
            return  # slow, not gone
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S]
        if len(self._restarts) >= RESTARTS:
            raise HiveUnavailable(f"it died {RESTARTS} times within {RESTART_WINDOW_S / 60:.0f} minutes; "
                                  f"its log is {link.home}/state/hive.log on {self.hive.alias}")
        delay = RESTART_BACKOFF_S[min(len(self._restarts), len(RESTART_BACKOFF_S) - 1)]
        self._restarts.append(now)
        self._workers.mark_hive(self.hive.alias, WorkerStatus.CRASHED)  # its workers died with it
        self.note(f"Hive {self.hive.alias} stopped answering and its process is gone; restarting it (attempt "
                  f"{len(self._restarts)} of {RESTARTS}{f', in {delay:g} s' if delay else ''})", "warn")
        self._set(Phase.CONNECTING, "restarting after it died")
        await asyncio.sleep(delay)
        await self._bring_up(link)
