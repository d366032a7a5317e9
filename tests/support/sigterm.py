"""A test run stopped by SIGTERM (a CI job's timeout, `kill`) leaves nothing behind: every process it started
(queens, hives, workers, sshd, what they spawned, and the hives that detach into a session of their own,
found by this run's temporary directory in their environment or command line) is asked to stop (SIGCONT
for one a test froze, SIGTERM, then SIGKILL after STOP_WAIT_S), then the run ends as Ctrl+C ends it.
Python's default for SIGTERM is to die on the spot, and a fixture's teardown cannot be counted on after an
interrupt (an event loop cut mid-test), so the processes are stopped here first."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from shared.process import pid_alive
from tests.support.processes import children_of

STOP_WAIT_S = 5.0
_run: dict[str, bytes] = {}  # this run's temporary directory, set when the run starts


def _started(pid: int) -> str | None:
    """When a process started (its identity: a pid is reused once its process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _of_this_run(pid: int, marker: bytes) -> bool:
    for part in ("environ", "cmdline"):
        try:
            if marker in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            pass
    return False


def this_runs_processes() -> dict[int, str]:
    """pid -> start time of every process of this run but itself: its descendants, and the detached ones."""
    me = os.getpid()
    found = set(children_of(me))
    if marker := _run.get("tmp"):
        found |= {int(e.name) for e in Path("/proc").iterdir()
                  if e.name.isdigit() and int(e.name) != me and _of_this_run(int(e.name), marker)}
    return {pid: started for pid in found if (started := _started(pid)) is not None}


def stop_this_runs_processes() -> None:
    seen: dict[int, str] = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + STOP_WAIT_S
        while True:
            seen.update(this_runs_processes())  # looked for again: one may spawn another while it stops
            left = {pid: started for pid, started in seen.items() if pid_alive(pid) and _started(pid) == started}
            if not left or time.monotonic() >= deadline:
                break
            for pid in left:
                for each in ((signal.SIGCONT, sig) if sig == signal.SIGTERM else (sig,)):
                    try:
                        os.kill(pid, each)
                    except ProcessLookupError:
                        pass
            time.sleep(0.05)
        if not left:
            return


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM kills at once
    try:
        stop_this_runs_processes()
    finally:  # even if pytest-timeout's alarm interrupts the stopping: the run must end
        raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        _run["tmp"] = str(factory.getbasetemp()).encode() + b"/"
    signal.signal(signal.SIGTERM, _stop)
