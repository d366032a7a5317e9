"""The hive on the queen's own machine: no SSH, started on first use as the queen's child process.

The queen owns the process it starts: its log goes to the state dir, it dies with the queen
(--exit-with-parent), and closing the queen stops it (its workers with it). With a fixed port, a hive
an earlier queen left there is adopted when it takes our token.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from queen.config import QueenConfig
from queen.errors import HiveUnavailable, QueenError
from queen.forwarding import hive_health
from queen.hives.backend import HiveState
from queen.machines import LocalMachine, Machine
from shared.errors import RbeeError
from shared.events import detached_task, narrate
from shared.handshake import listening_url, listening_version
from shared.job_client import Clients
from shared.kv_cache import worker_slots_args
from shared.process import CHILD_CWD, tail_file
from shared.version import PeerVersion, incompatibility

STOP_TIMEOUT_S = 20.0


class LocalHive:
    local = True

    def __init__(self, alias: str, config: QueenConfig, clients: Clients, queen_url: Callable[[], str]) -> None:
        self.alias = alias
        self._config = config
        self._clients = clients
        self._queen_url = queen_url
        self.url: str | None = None
        self.state = HiveState.STOPPED
        self.process: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        self.exit_code: int | None = None
        self.peer: PeerVersion | None = None  # the rbee it runs, as its start-up line or /health said
        self._lock = asyncio.Lock()

    @property
    def schedulable(self) -> bool:
        return True  # started on demand

    def clients(self) -> Clients:
        return self._clients  # the queen's token

    def heartbeat_token(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"host": None, "pid": self.process.pid if self.process and self.process.returncode is None else None,
                "started_by_queen": self.process is not None, "started_at": self.started_at,
                "exit_code": self.exit_code}

    def supervision(self) -> dict[str, Any]:
        return {}

    async def healthy(self) -> bool:
        url = self.url
        if not url:
            return False
        health = await hive_health(self._clients.daemon(url), self.alias)
        if health is not None:
            self.peer = PeerVersion.of(health)
        return health is not None

    async def _shares_our_token(self, url: str) -> bool:
        """A hive is ours only if it takes our token: an authenticated request proves it (health does not)."""
        try:
            await self._clients.daemon(url).request("GET", "/v1/jobs", timeout=5)
        except RbeeError:
            return False
        return True

    async def ensure_running(self) -> str:
        """The hive's URL, starting it first when it is not running."""
        if self.state is HiveState.RUNNING and self.url and (self.process is None or self.process.returncode is None):
            return self.url
        async with self._lock:
            if self.url and await self.healthy():
                self.state = HiveState.RUNNING
                return self.url
            return await self._start_process()

    async def _replaced_if_incompatible(self, url: str) -> bool:
        """A hive an earlier queen left on the fixed port, running an rbee this queen cannot speak to, is
        stopped (it is this machine's, and this queen's to replace) so that ours starts there."""
        why = incompatibility(f"The hive at {url}", self.peer or PeerVersion(None, 0), fix="rbee queen restart")
        if why is None:
            return False
        narrate("hive_start", f"{why.split(': they')[0]}: stopping it and starting this queen's", target=self.alias,
                level="warn")
        with contextlib.suppress(RbeeError):
            await self._clients.daemon(url).shutdown()
        for _ in range(int(STOP_TIMEOUT_S * 10)):
            if await self._clients.daemon(url).health_or_none(timeout=0.5) is None:
                break
            await asyncio.sleep(0.1)
        return True

    async def start(self) -> None:
        if await self.healthy():
            self.state = HiveState.RUNNING
            narrate("hive_start", f"Hive {self.alias} is already running at {self.url}", target=self.alias)
            return
        await self.ensure_running()

    async def _start_process(self) -> str:
        port = self._config.local_hive_port
        if port:  # a hive left by an earlier queen may already answer on the fixed port: adopt it if it is ours
            url = self.url = f"http://127.0.0.1:{port}"
            if await self.healthy():
                if not await self._shares_our_token(url):
                    narrate("hive_start", f"The hive at {url} answers with another token (another user's, or "
                                          "another rbee home): starting our own on a free port", target=self.alias,
                            level="warn")
                    port = 0
                elif not await self._replaced_if_incompatible(url):
                    self.state = HiveState.RUNNING
                    narrate("hive_start", f"Found hive {self.alias} already running at {url}", target=self.alias)
                    return url
            self.url = None
        narrate("hive_start", f"Starting hive {self.alias}", target=self.alias)
        self.state = HiveState.STARTING
        log_dir = self._config.paths.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"hive-{self.alias}.log"
        started = time.monotonic()
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hive.main", "--hive-id", self.alias, "--host", "127.0.0.1",
                "--port", str(port), "--queen-url", self._queen_url(), "--exit-with-parent",
                *worker_slots_args(self._config.worker_slots),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_file, cwd=CHILD_CWD)
        self.process = proc
        assert proc.stdout is not None  # stdout=PIPE
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self._config.hive_start_timeout_s)
        except asyncio.TimeoutError:
            line = b""
        listening = listening_url(line)
        if listening is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self.state, self.process = HiveState.CRASHED, None
            tail = tail_file(log_path, 10)
            raise HiveUnavailable(f"Hive {self.alias} did not start (exit code {proc.returncode}). "
                                  f"Its log {log_path} ends with:\n{tail}")
        self.url = url = listening
        self.peer = listening_version(line)
        self.state = HiveState.RUNNING
        self.started_at = time.time()
        self.exit_code = None
        detached_task(self._watch(proc), name=f"watch-hive-{self.alias}")
        narrate("hive_start", f"Hive {self.alias} is up at {url} ({time.monotonic() - started:.2f} s)",
                target=self.alias)
        return url

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is not None:  # drained, so the hive never blocks writing to it
            with contextlib.suppress(Exception):
                async for _ in proc.stdout:
                    pass
        code = await proc.wait()
        if self.process is proc:
            self.exit_code = code
            self.state = HiveState.STOPPED if code == 0 else HiveState.CRASHED
            self.url = None
            self.process = None

    async def stop(self) -> None:
        proc = self.process
        if not self.url and proc is None:
            narrate("hive_stop", f"Hive {self.alias} is not running", target=self.alias)
            return
        narrate("hive_stop", f"Stopping hive {self.alias} (and its workers)", target=self.alias)
        if self.url:
            with contextlib.suppress(RbeeError):  # not answering: the process is stopped below
                await self._clients.daemon(self.url).shutdown()
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                narrate("hive_stop", f"Hive {self.alias} did not stop in {STOP_TIMEOUT_S:g} s; killing it",
                        target=self.alias, level="warn")
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
        self.state, self.url, self.process = HiveState.STOPPED, None, None
        narrate("hive_stop", f"Hive {self.alias} stopped", target=self.alias)

    async def refresh(self) -> None:
        if self.url:
            self.state = HiveState.RUNNING if await self.healthy() else HiveState.UNREACHABLE

    async def lost_contact(self) -> None:
        self.state = HiveState.UNREACHABLE  # the next ensure_running checks its health, starting it if need be

    async def workers_known(self) -> None:
        return None  # its workers report themselves by heartbeat

    async def machine(self) -> Machine:
        return LocalMachine(self._config.paths.model_dir, name=self.alias)

    async def worker_url(self, url: str) -> str:
        return url  # the workers listen on this machine

    async def link_lost(self, within: float) -> str | None:
        return None  # no link to lose

    def resume(self) -> None:
        return None  # started on first use

    async def close(self) -> None:
        """Stop the hive this queen started (its workers with it)."""
        if self.process is not None:
            await self.stop()

    async def inspect(self) -> None:
        return None  # the queen's own child: nothing to look for over SSH

    async def upgrade(self, data_dir: Path, drain: Callable[[], Awaitable[Any]],
                      installed: Callable[[dict[str, Any]], None]) -> None:
        raise QueenError(f"'{self.alias}' runs the queen's own code: after a `git pull && ./bootstrap.sh`, "
                         "`rbee queen restart` restarts both on it.", code="LOCAL_HIVE")

    def _needs_no_ssh(self) -> QueenError:
        return QueenError(f"'{self.alias}' is the queen's own machine; it needs no SSH (it starts on first use).",
                          code="LOCAL_HIVE")

    async def ssh_test(self) -> dict[str, Any]:
        raise self._needs_no_ssh()

    async def install(self, data_dir: Path, installed: Callable[[dict[str, Any]], None]) -> None:
        raise self._needs_no_ssh()

    async def uninstall(self) -> dict[str, Any]:
        raise self._needs_no_ssh()
