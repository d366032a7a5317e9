"""Start and stop real rbee daemons for tests, with their own RBEE_HOME; never leave one running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.builtin_model import builtin_model_path
from shared.paths import RbeePaths
from shared.process import pid_alive  # noqa: F401  (tests import it from here)
from shared.token import load_or_create_token

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


def _drain(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))


def start_daemon(cmd: list[str], home: Path, *, env: dict[str, str] | None = None) -> Daemon:
    """Start a daemon, read its `listening on URL` line, keep draining its output."""
    token = load_or_create_token(RbeePaths.from_env({"RBEE_HOME": str(home)}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=daemon_env(home, **(env or {})))
    daemon = Daemon(proc, "", token)
    threading.Thread(target=_drain, args=(proc.stderr, daemon.stderr_lines), daemon=True).start()
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.wait(10)
        time.sleep(0.1)
        raise RuntimeError(f"{cmd[0]} did not start: {line!r} {daemon.stderr_lines}")
    daemon.url = m.group(1)
    threading.Thread(target=_drain, args=(proc.stdout, []), daemon=True).start()
    return daemon


def start_worker(home: Path, *args: str, model: Path | None = None, wait_ready: bool = True,
                 timeout: float = 60.0) -> Daemon:
    cmd = [str(BIN / "llm-worker-rbee"), "--worker-id", "test-worker", "--model",
           str(model or builtin_model_path()), "--model-ref", "smollm2-135m", "--port", "0", *args]
    daemon = start_daemon(cmd, home)
    if wait_ready:
        deadline = time.monotonic() + timeout
        while (health := daemon.health()) is None or health["state"] != "ready":
            if daemon.proc.poll() is not None or time.monotonic() > deadline:
                daemon.stop()
                raise RuntimeError(f"worker never became ready: {daemon.stderr_lines}")
            time.sleep(0.05)
    return daemon


def start_hive(home: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    return start_daemon([str(BIN / "rbee-hive"), "--port", "0", *args], home, env=env)


def start_queen(home: Path, *args: str) -> Daemon:
    return start_daemon([str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0", *args], home)


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
