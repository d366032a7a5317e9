"""Finding, starting and stopping an rbee-hive by the lock it holds in its RBEE_HOME.

A running hive holds an exclusive `flock` on `<state dir>/hive.lock` for its whole life and writes its pid
and port into it; the kernel drops the lock the moment the process dies. So "is a hive running here,
and which process is it?" is answered by the lock, never by a pid file that may name a process that
reused the pid. A stop also checks the holder's command line before sending any signal.

Standard library only, and runnable as a script: the queen pipes this file into the remote's own
`python3 - status|start|stop ...` over SSH, so it works even when the remote's venv is half installed.
Each command prints one JSON line.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

LOCK_FILE = "hive.lock"
LOG_FILE = "hive.log"
HIVE_MODULE = "hive.main"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
PUBLISH_WAIT_S = 10.0  # a hive publishes its pid and port right after binding; longer is not a starting hive


class HiveLockBusy(Exception):
    def __init__(self, record: dict) -> None:
        super().__init__(f"another rbee-hive (pid {record.get('pid', '?')}) is running with this RBEE_HOME")
        self.record = record


def state_dir(home: Path) -> Path:
    """The state dir under an RBEE_HOME (as shared/paths.py lays it out; this file imports nothing of rbee)."""
    return Path(home) / "state"


class HiveLock:
    """Held by the hive process itself (rbee-hive's main), in its state dir."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait_s: float = 5.0) -> None:
        """Take the lock; a hive that is still exiting gets `wait_s` to let go of it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    record = _read_record(self.path)
                    os.close(fd)
                    raise HiveLockBusy(record) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        self._fd = fd

    def publish(self, **record) -> None:
        """What a controller reads back: written only while holding the lock, so it is always ours."""
        assert self._fd is not None, "publish() before acquire()"
        data = json.dumps({"pid": os.getpid(), "started_at": time.time(), **record}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_hive_process(pid: int, venv: str | None = None) -> bool:
    """The pid runs `python -m hive.main` (or the rbee-hive script), from `venv` when given."""
    argv = [a for a in _command_line(pid) if a]
    if not argv:
        return False
    is_hive = HIVE_MODULE in argv or any(os.path.basename(a) == "rbee-hive" for a in argv[:2])
    return is_hive and (venv is None or any(a.startswith(venv.rstrip("/") + "/") for a in argv[:2]))


def status(home: Path, venv: str | None = None, *, with_strays: bool = False) -> dict:
    """{"running": False} or the running hive's record (pid, port, hive_id, started_at); `with_strays` (and
    `venv`): also the hives of that install that hold no lock (started before there was one, with nohup),
    found by reading /proc, so only when asked (not in the loops that wait for a start)."""
    path = state_dir(home) / LOCK_FILE
    found: dict = {"running": False}
    if _lock_held(path):
        record = _read_record(path)
        pid = record.get("pid")
        if not isinstance(pid, int) or "port" not in record:
            found = {"running": True, "starting": True}  # locked, not published yet
        else:
            found = {"running": True, "verified": is_hive_process(pid, venv), **record}
    if with_strays and venv is not None:
        found["strays"] = strays(venv, but=found.get("pid"))
    return found


def strays(venv: str, but: int | None = None) -> list[dict]:
    """Hive processes of the install at `venv` other than `but` (the lock's holder): pid, port, host and
    command line, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (but, os.getpid()):
            continue
        pid = int(entry.name)
        if is_hive_process(pid, venv):
            argv = [a for a in _command_line(pid) if a]
            found.append({"pid": pid, "port": _option(argv, "--port"), "host": _option(argv, "--host") or "127.0.0.1",
                          "command": " ".join(argv)})
    return found


def _option(argv: list[str], name: str) -> str | None:
    for k, arg in enumerate(argv):
        if arg == name and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _stop_strays(venv: str | None, but: int | None, timeout: float) -> list[int]:
    """SIGTERM (then SIGKILL) the install's hives that hold no lock; each pid checked again before a signal."""
    if venv is None:
        return []
    pids = [s["pid"] for s in strays(venv, but)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_hive_process(pid, venv) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if is_hive_process(pid, venv):
            _signal(pid, signal.SIGKILL)
    return pids


def _wait_released(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _lock_held(path):
            return True
        time.sleep(0.1)
    return not _lock_held(path)


def _published(home: Path, venv: str | None, wait_s: float | None = None) -> dict:
    """The status, once a hive that holds the lock has published its pid and port (it does so right after
    binding its port), or once the lock is free."""
    deadline = time.monotonic() + (PUBLISH_WAIT_S if wait_s is None else wait_s)
    found = status(home, venv)
    while found.get("starting") and time.monotonic() < deadline:
        time.sleep(0.1)
        found = status(home, venv)
    return found


def _signal(pid: int, signum: int) -> str | None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return None  # it went by itself meanwhile
    except PermissionError:
        return f"not allowed to signal pid {pid} (another user's process)"
    return None


def stop(home: Path, venv: str | None = None, timeout: float = STOP_TIMEOUT_S) -> dict:
    """SIGTERM the hive that holds the lock (it stops its workers first), SIGKILL if it does not go; and the
    install's hives from before the lock (strays). Nothing is signalled unless the lock is held and the
    holder's command line is a hive's, or the process runs this install's hive."""
    path = state_dir(home) / LOCK_FILE
    found = _published(home, venv)
    stray_pids = _stop_strays(venv, found.get("pid") if found.get("running") else None, timeout)
    found_strays = {"strays_stopped": stray_pids} if stray_pids else {}
    if found.get("starting"):
        return {"stopped": False, "reason": "a hive holds the lock but never said its pid; left alone", **found_strays}
    if not found["running"]:
        return {"stopped": bool(stray_pids), "reason": "no rbee-hive holds the lock", **found_strays}
    pid = found.get("pid")
    if not found.get("verified") or not isinstance(pid, int):
        return {"stopped": False, "reason": f"the lock's holder (pid {pid}) is not an rbee-hive of this install; "
                                            "left alone"}
    if (problem := _signal(pid, signal.SIGTERM)) is not None:
        return {"stopped": False, "pid": pid, "reason": problem, **found_strays}
    if _wait_released(path, timeout):
        return {"stopped": True, "pid": pid, "signal": "SIGTERM", **found_strays}
    if is_hive_process(pid, venv):  # checked again: the pid is only trusted while it is still the hive
        _signal(pid, signal.SIGKILL)
    return {"stopped": _wait_released(path, 5.0), "pid": pid, "signal": "SIGKILL", **found_strays}


def start(home: Path, python: str, hive_args: list[str], timeout: float = START_TIMEOUT_S) -> dict:
    """Start a hive in its own session (it outlives this SSH command and the connection), or report
    the one already running. Returns once it has published its port."""
    home = Path(home)
    venv = str(Path(python).parent.parent)
    found = _published(home, venv)
    if found.get("starting"):
        return {"running": False, "exit_code": None, "log_tail": _tail(state_dir(home) / LOG_FILE, 8),
                "reason": "another hive holds the lock but has not said its port"}
    if found["running"]:
        return {**found, "already_running": True}
    state_dir(home).mkdir(parents=True, exist_ok=True)
    log_path = state_dir(home) / LOG_FILE
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([python, "-m", HIVE_MODULE, *hive_args], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, cwd="/", start_new_session=True, env={**os.environ, "RBEE_HOME": str(home)})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = status(home, venv)
        if found["running"] and not found.get("starting") and found.get("pid") == proc.pid:
            return {**found, "already_running": False}
        code = proc.poll()
        if code is not None:
            return {"running": False, "exit_code": code, "log_tail": _tail(log_path, 8)}
        time.sleep(0.05)
    proc.kill()
    return {"running": False, "exit_code": None, "log_tail": _tail(log_path, 8),
            "reason": f"it did not publish its port within {timeout:g} s"}


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hive_control", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["status", "start", "stop"])
    parser.add_argument("--home", required=True, help="the hive's RBEE_HOME")
    parser.add_argument("--python", help="the venv's python that runs the hive (start; also identifies it)")
    args, hive_args = parser.parse_known_args(argv)
    venv = str(Path(args.python).parent.parent) if args.python else None
    if args.command == "status":
        result = status(Path(args.home), venv, with_strays=True)
    elif args.command == "stop":
        result = stop(Path(args.home), venv)
    else:
        if not args.python:
            parser.error("start needs --python")
        result = start(Path(args.home), args.python, [a for a in hive_args if a != "--"])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
