"""Start and stop real rbee daemons for tests, with their own RBEE_HOME; never leave one running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.builtin_model import builtin_model_path
from shared.handshake import listening_url
from shared.paths import RbeePaths
from shared.process import pid_alive  # noqa: F401  (tests import it from here)
from shared.token import load_or_create_token
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent


def daemon_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "HF_"))}
    env.update(RBEE_HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Daemon:
    proc: subprocess.Popen
    url: str
    token: str
    stderr_lines: list[str] = field(default_factory=list)
    stderr_closed: threading.Event = field(default_factory=threading.Event)  # every stderr line is in

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _drain(stream, sink: list[str], closed: threading.Event | None = None) -> None:
    try:
        for line in stream:
            sink.append(line.rstrip("\n"))
    finally:
        if closed is not None:
            closed.set()


def start_daemon(cmd: list[str], home: Path, *, env: dict[str, str] | None = None) -> Daemon:
    """Start a daemon, read its start-up handshake (shared/handshake.py), keep draining its output."""
    token = load_or_create_token(RbeePaths.from_env({"RBEE_HOME": str(home)}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=daemon_env(home, **(env or {})))
    daemon = Daemon(proc, "", token)
    threading.Thread(target=_drain, args=(proc.stderr, daemon.stderr_lines, daemon.stderr_closed),
                     daemon=True).start()
    line = proc.stdout.readline()
    url = listening_url(line)
    if url is None:
        proc.wait(10)
        daemon.stderr_closed.wait(5)  # so the message below holds everything it said
        raise RuntimeError(f"{cmd[0]} did not start: {line!r} {daemon.stderr_lines}")
    daemon.url = url
    threading.Thread(target=_drain, args=(proc.stdout, []), daemon=True).start()
    return daemon


def start_worker(home: Path, *args: str, model: Path | None = None, wait_ready: bool = True,
                 timeout: float = 60.0) -> Daemon:
    cmd = [str(BIN / "llm-worker-rbee"), "--worker-id", "test-worker", "--model",
           str(model or builtin_model_path()), "--model-ref", "smollm2-135m", "--port", "0", *args]
    daemon = start_daemon(cmd, home)
    if wait_ready:

        def ready() -> bool:
            if daemon.proc.poll() is not None:
                raise _Exited
            health = daemon.health()
            return health is not None and health["state"] == "ready"

        try:
            wait_until(ready, timeout=timeout, interval=0.05, what="the worker to become ready")
        except (_Exited, AssertionError):
            daemon.stop()
            daemon.stderr_closed.wait(5)
            raise RuntimeError(f"worker never became ready: {daemon.stderr_lines}") from None
    return daemon


class _Exited(Exception):
    """The process being waited on is gone: stop waiting now."""


def start_hive(home: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    return start_daemon([str(BIN / "rbee-hive"), "--port", "0", *args], home, env=env)


def start_queen(home: Path, *args: str) -> Daemon:
    return start_daemon([str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0", *args], home)


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB (from /proc)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} reports no VmRSS")


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (from /proc), to check nothing is left behind."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
