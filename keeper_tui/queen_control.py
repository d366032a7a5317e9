"""Finding, waking and stopping the queen. A woken queen runs detached (its own session, its log in the
state dir), so it outlives the keeper and keeps workers warm."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from keeper_tui.errors import QueenNotRunning, QueenStartFailed
from shared.errors import ServerError
from shared.job_client import JobClient
from shared.paths import RbeePaths
from shared.ports import DEFAULT_QUEEN_URL, LOOPBACK_HOSTS
from shared.process import CHILD_CWD, keep_files_private, pid_alive, tail_file
from shared.tls import client_ssl, fingerprint

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def default_queen_url() -> str:
    return os.environ.get("RBEE_QUEEN_URL", DEFAULT_QUEEN_URL)


def tls_files(paths: RbeePaths) -> tuple[Path, Path]:
    """Where `rbee queen tls-init` puts this machine's queen certificate and key."""
    return paths.config_dir / "tls" / "queen.crt", paths.config_dir / "tls" / "queen.key"


def queen_ssl(url: str) -> Any:
    """How the keeper checks an https queen: $RBEE_QUEEN_FINGERPRINT (pinned), else $RBEE_QUEEN_CA, else,
    for a queen on this machine, the certificate `rbee queen tls-init` made here, else the system's CAs."""
    if urlsplit(url).scheme != "https":
        return True
    pinned, ca = os.environ.get("RBEE_QUEEN_FINGERPRINT"), os.environ.get("RBEE_QUEEN_CA")
    if not pinned and not ca and urlsplit(url).hostname in LOOPBACK_HOSTS:
        cert, _ = tls_files(RbeePaths.from_env())
        if cert.exists():
            pinned = fingerprint(cert.read_bytes())
    return client_ssl(pinned, ca)


def queen_api(url: str, token: str | None = None) -> JobClient:
    """The one client the keeper talks to the queen with (its TLS check included)."""
    return JobClient(url, token, ssl=queen_ssl(url))


async def queen_health(url: str) -> dict | None:
    async with queen_api(url) as queen:
        return await queen.health_or_none()


async def ensure_queen(url: str, paths: RbeePaths, *, autostart: bool, say: Callable[[str], None]) -> None:
    if await queen_health(url) is not None:
        return
    if not autostart:
        raise QueenNotRunning(f"No queen answers at {url}. Start one with `rbee queen start`, "
                              "or leave out --no-autostart to let rbee start it.")
    await start_queen(url, paths, say)


async def start_queen(url: str, paths: RbeePaths, say: Callable[[str], None]) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in LOOPBACK_HOSTS:
        raise QueenNotRunning(f"No queen answers at {url}, and rbee only starts a queen on this machine. "
                              "Start queen-rbee on that host, or use a local --queen-url.")
    tls: list[str] = []
    if parts.scheme == "https":
        cert, key = tls_files(paths)
        if not cert.exists() or not key.exists():
            raise QueenNotRunning(f"No queen answers at {url}, and there is no certificate to start one with https: "
                                  "`rbee queen tls-init` makes one.")
        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    say("queen is asleep, waking queen")
    keep_files_private()  # the log and pid file it writes here
    paths.make_private()
    log_path = paths.log_dir / "queen.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "queen.main", "--host", host, "--port", str(port), *tls],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C in this terminal must not reach the queen
            cwd=CHILD_CWD,  # not the user's directory: a `shared/` folder there would be imported
        )
    (paths.state_dir / "queen.pid").write_text(f"{proc.pid}\n")
    delay = 0.05
    while time.monotonic() - started < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise QueenStartFailed(f"queen-rbee exited with code {proc.returncode} while starting. "
                                   f"The end of {log_path}:\n{tail_file(log_path, 15)}")
        if await queen_health(url) is not None:
            say(f"queen is awake at {url} ({time.monotonic() - started:.1f} s, log: {log_path})")
            return proc.pid
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    proc.terminate()
    raise QueenStartFailed(f"queen-rbee did not answer at {url} within {START_TIMEOUT_S:g} s. "
                           f"The end of {log_path}:\n{tail_file(log_path, 15)}")


async def stop_queen(url: str, token: str, say: Callable[[str], None]) -> bool:
    """Ask the queen to shut down (it stops its hives and workers); False when none was running."""
    if await queen_health(url) is None:
        return False
    say("asking the queen to stop (its hives and workers stop with it)")
    async with queen_api(url, token) as queen:
        try:
            info = await queen.request("GET", "/v1/info", timeout=10)
            await queen.shutdown(timeout=10)
        except ServerError as exc:
            raise QueenNotRunning(f"The queen at {url} refused to stop: {exc.message}") from exc
    pid = info.get("pid") if isinstance(info, dict) else None
    local = urlsplit(url).hostname in LOOPBACK_HOSTS
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        # Done when the process is gone (it stops its hives first), not merely when it stops answering.
        gone = not pid_alive(pid) if (local and pid) else await queen_health(url) is None
        if gone:
            return True
        await asyncio.sleep(0.1)
    raise QueenNotRunning(f"The queen at {url} still answers {STOP_TIMEOUT_S:g} s after being asked to stop.")
