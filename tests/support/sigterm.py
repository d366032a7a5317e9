"""A test run stopped by SIGTERM (a CI job's timeout, `kill`) leaves nothing behind: every process it started,
and theirs (queens, hives, workers, sshd and what they spawned), is asked to stop (SIGTERM, then SIGKILL
after STOP_WAIT_S), then the run ends as Ctrl+C ends it. Python's default for SIGTERM is to die on the spot,
and a fixture's teardown cannot be counted on after an interrupt (an event loop cut mid-test), so the
processes are stopped here first, whatever the fixtures then manage."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from tests.support.processes import children_of

STOP_WAIT_S = 10.0


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def stop_descendants() -> None:
    pids = children_of(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_WAIT_S
        while (pids := [p for p in pids if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM kills at once
    stop_descendants()
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
