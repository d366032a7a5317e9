"""The hives the queen knows: `localhost` always (started on first use, no SSH); remote ones later.

The queen owns the local hive process it starts: its log goes to the state dir, it dies with the queen
(--exit-with-parent), and `close()` stops it (its workers with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from queen.config import QueenConfig
from queen.errors import HiveUnavailable, UnknownHive
from shared.events import detached_task, narrate
from shared.operations import LOCAL_HIVE

STOP_TIMEOUT_S = 20.0


@dataclass(eq=False)
class HiveHandle:
    alias: str
    local: bool
    url: str | None = None
    state: str = "stopped"  # stopped | starting | running | unreachable | crashed
    process: asyncio.subprocess.Process | None = None
    started_at: float | None = None
    capabilities: dict[str, Any] | None = None
    exit_code: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "local": self.local, "url": self.url, "state": self.state,
            "pid": self.process.pid if self.process and self.process.returncode is None else None,
            "started_by_queen": self.process is not None, "started_at": self.started_at,
            "exit_code": self.exit_code, "capabilities": self.capabilities,
        }


class HiveRegistry:
    def __init__(self, config: QueenConfig, token: str, session: aiohttp.ClientSession,
                 queen_url: Callable[[], str]) -> None:
        self.config = config
        self._token = token
        self._session = session
        self._queen_url = queen_url
        self._hives: dict[str, HiveHandle] = {LOCAL_HIVE: HiveHandle(LOCAL_HIVE, local=True)}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def get(self, alias: str) -> HiveHandle:
        hive = self._hives.get(alias)
        if hive is None:
            known = ", ".join(self._hives)
            raise UnknownHive(f"Unknown hive '{alias}'. Known hives: {known}. (Remote hives over SSH are "
                              "configured in hives.conf once that lands.)")
        return hive

    def all(self) -> list[HiveHandle]:
        return list(self._hives.values())

    async def healthy(self, hive: HiveHandle) -> bool:
        if not hive.url:
            return False
        try:
            async with self._session.get(hive.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200 and (await resp.json()).get("hive_id") == hive.alias
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False

    async def ensure_running(self, alias: str) -> str:
        """The hive's URL, starting the local hive first when it is not running."""
        hive = self.get(alias)
        if hive.state == "running" and hive.url and (hive.process is None or hive.process.returncode is None):
            return hive.url
        async with hive.lock:
            if hive.url and await self.healthy(hive):
                hive.state = "running"
                return hive.url
            if not hive.local:
                raise HiveUnavailable(f"Hive '{alias}' is not running; start it with hive_start.")
            await self._start_local(hive)
            assert hive.url
            return hive.url

    async def start(self, alias: str) -> HiveHandle:
        hive = self.get(alias)
        if await self.healthy(hive):
            narrate("hive_start", f"Hive {alias} is already running at {hive.url}", target=alias)
            return hive
        await self.ensure_running(alias)
        return hive

    async def _start_local(self, hive: HiveHandle) -> None:
        port = self.config.local_hive_port
        if port:  # a hive left by an earlier queen may already answer on the fixed port: adopt it
            hive.url = f"http://127.0.0.1:{port}"
            if await self.healthy(hive):
                hive.state = "running"
                narrate("hive_start", f"Found hive {hive.alias} already running at {hive.url}", target=hive.alias)
                return
        narrate("hive_start", f"Starting hive {hive.alias}", target=hive.alias)
        hive.state = "starting"
        log_dir = self.config.paths.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"hive-{hive.alias}.log"
        started = time.monotonic()
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hive.main", "--hive-id", hive.alias, "--host", "127.0.0.1",
                "--port", str(port), "--queen-url", self._queen_url(), "--exit-with-parent",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_file)
        hive.process = proc
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self.config.hive_start_timeout_s)  # type: ignore[union-attr]
        except asyncio.TimeoutError:
            line = b""
        m = re.search(rb"listening on (http://\S+)", line)
        if not m:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            hive.state, hive.process = "crashed", None
            tail = _tail(log_path)
            raise HiveUnavailable(f"Hive {hive.alias} did not start (exit code {proc.returncode}). "
                                  f"Its log {log_path} ends with:\n{tail}")
        hive.url = m.group(1).decode()
        hive.state = "running"
        hive.started_at = time.time()
        hive.exit_code = None
        detached_task(self._watch(hive, proc), name=f"watch-hive-{hive.alias}")
        narrate("hive_start", f"Hive {hive.alias} is up at {hive.url} ({time.monotonic() - started:.2f} s)",
                target=hive.alias)

    async def _watch(self, hive: HiveHandle, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(Exception):
            async for _ in proc.stdout:  # type: ignore[union-attr]
                pass
        code = await proc.wait()
        if hive.process is proc:
            hive.exit_code = code
            hive.state = "stopped" if code == 0 else "crashed"
            hive.url = None
            hive.process = None

    async def stop(self, alias: str) -> HiveHandle:
        hive = self.get(alias)
        proc = hive.process
        if not hive.url and proc is None:
            narrate("hive_stop", f"Hive {alias} is not running", target=alias)
            return hive
        narrate("hive_stop", f"Stopping hive {alias} (and its workers)", target=alias)
        if hive.url:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self._session.post(hive.url + "/v1/shutdown", headers=self.auth,
                                              timeout=aiohttp.ClientTimeout(total=5)):
                    pass
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                narrate("hive_stop", f"Hive {alias} did not stop in {STOP_TIMEOUT_S:g} s; killing it",
                        target=alias, level="warn")
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
        hive.state, hive.url, hive.process = "stopped", None, None
        narrate("hive_stop", f"Hive {alias} stopped", target=alias)
        return hive

    async def status(self, alias: str) -> dict[str, Any]:
        hive = self.get(alias)
        info = hive.to_dict()
        if hive.url:
            info["state"] = "running" if await self.healthy(hive) else "unreachable"
        return info

    async def refresh_capabilities(self, alias: str) -> dict[str, Any]:
        url = await self.ensure_running(alias)
        async with self._session.get(url + "/v1/capabilities", headers=self.auth,
                                     timeout=aiohttp.ClientTimeout(total=30)) as resp:
            caps = await resp.json()
        self.get(alias).capabilities = caps
        return caps

    async def close(self) -> None:
        """Stop the hives this queen started."""
        await asyncio.gather(*(self.stop(h.alias) for h in self._hives.values() if h.process is not None),
                             return_exceptions=True)


def _tail(path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"
