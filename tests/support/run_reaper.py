"""No process a test run started outlives it, however the run ends (finished, Ctrl+C, SIGTERM from a CI
timeout, SIGKILL): at its start a watchdog process is started that waits for the run's end (the end of a
pipe only pytest holds), then stops every process left with this run's temporary directory in its
environment or command line (every test has RBEE_HOME there, and every daemon a test starts inherits it;
a hive that detaches into a session of its own too): SIGCONT for one a test froze, SIGTERM, then SIGKILL
after STOP_WAIT_S. Fixtures still stop what they start; this is for when they cannot (a run killed, an
event loop cut mid-test, whose async teardown then fails). SIGTERM also ends the run as Ctrl+C does, with
its summary, where Python's default is to die on the spot."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from types import FrameType

import pytest

STOP_WAIT_S = 5.0

WATCHDOG = r"""
import os, signal, sys, time
from pathlib import Path

marker, wait_s, me = sys.argv[1].encode(), float(sys.argv[2]), os.getpid()
sys.stdin.buffer.read()  # returns at EOF: the test run has ended, however it ended


def stat_of(pid):  # the fields after the name: [0] the state, [19] the start time
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def ours():
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            try:
                mine = any(marker in (entry / part).read_bytes() for part in ("environ", "cmdline"))
            except OSError:
                continue
            stat = stat_of(int(entry.name))
            if mine and stat is not None and stat[0] != "Z":
                found[int(entry.name)] = stat[19]  # its start time: a pid is reused once its process is gone
    return found


seen = {}
for sig in (signal.SIGTERM, signal.SIGKILL):
    deadline = time.monotonic() + wait_s
    while True:
        seen.update(ours())  # looked for again: one may start another while it stops
        left = [pid for pid, when in seen.items() if (stat := stat_of(pid)) and stat[0] != "Z" and stat[19] == when]
        if not left or time.monotonic() >= deadline:
            break
        for pid in left:
            for each in (signal.SIGCONT, sig):
                try:
                    os.kill(pid, each)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)
    if not left:
        break
"""

_watchdog: list[subprocess.Popen] = []  # kept referenced: its stdin is the pipe whose end it waits for


def _end_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin's own, which makes the factory
def pytest_configure(config: pytest.Config) -> None:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None or _watchdog:
        return
    marker = str(factory.getbasetemp()) + "/"
    _watchdog.append(subprocess.Popen([sys.executable, "-c", WATCHDOG, marker, str(STOP_WAIT_S)],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))  # not in the run's process group: a Ctrl+C spares it
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _end_like_ctrl_c)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each test starts with SIGTERM ending the run again: a test that ran an event loop with its own
    SIGTERM handler (a daemon run in process) may have left that loop's in place."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is not \
            _end_like_ctrl_c and _watchdog:
        signal.signal(signal.SIGTERM, _end_like_ctrl_c)


def pytest_unconfigure(config: pytest.Config) -> None:
    """A run that ends normally tells the watchdog now (the pipe's end), and waits for it, so a test run's
    last process is gone by the time its exit status is."""
    for watchdog in _watchdog:
        if watchdog.stdin is not None:
            watchdog.stdin.close()
        try:
            watchdog.wait(2 * STOP_WAIT_S + 5)
        except subprocess.TimeoutExpired:
            pass
    _watchdog.clear()
