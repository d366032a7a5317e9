"""No process a test run started outlives it, however it ends (tests/support/run_reaper.py): an inner pytest
whose fixture started a process that started another, and one that detached into a session of its own (as
a hive does), all with RBEE_HOME in the run's temporary directory as every test here has it, and whose
teardown does nothing (as after an event loop cut mid-test), is stopped mid-test by SIGTERM or SIGKILL;
all three processes must then be gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.process import pid_alive
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

INNER = '''
import os, subprocess, time
import pytest

@pytest.fixture
def daemons(tmp_path):
    env = {**os.environ, "RBEE_HOME": str(tmp_path / "home")}
    child = subprocess.Popen(["sh", "-c", 'sleep 600 & echo $! > "$PIDS/grandchild"; wait'], env=env)
    subprocess.run(["sh", "-c", 'setsid sleep 600 >/dev/null 2>&1 & echo $! > "$PIDS/detached"'], check=True, env=env)
    open(os.path.join(os.environ["PIDS"], "child"), "w").write(str(child.pid))
    yield child

def test_runs_long(daemons):
    time.sleep(600)
'''
NAMES = ("child", "grandchild", "detached")


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_run_leaves_no_process_behind(tmp_path: Path, sig: signal.Signals, slow) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                            "tests.support.run_reaper", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "inner"),
                            str(tmp_path / "test_inner.py")],
                           cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT), "PIDS": str(pids)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: all(read_pid(pids / n) for n in NAMES), timeout=60,
                   what="the inner test to start its processes")
        started = {n: read_pid(pids / n) for n in NAMES}
        assert all(pid_alive(pid) for pid in started.values() if pid)
        run.send_signal(sig)
        out, _ = run.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert "stopped by signal" in out, out  # ended as Ctrl+C ends it, with its summary
        wait_until(lambda: not any(pid and pid_alive(pid) for pid in started.values()), timeout=20,
                   what=f"the inner run's processes to be stopped after it ended:\n{out}")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for name in NAMES:
            if (pid := read_pid(pids / name)) and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
