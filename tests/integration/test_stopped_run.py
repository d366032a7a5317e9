"""A test run stopped by SIGTERM leaves no process of its own behind (tests/support/sigterm.py): an inner
pytest whose fixture started a process that started another, and one that detached into a session of its
own (as a hive does), and whose teardown does nothing (as after an event loop cut mid-test), is sent SIGTERM
mid-test, and all three must be gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.process import pid_alive
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

INNER = '''
import os, subprocess, time
import pytest

@pytest.fixture
def daemons(tmp_path):
    child = subprocess.Popen(["sh", "-c", 'sleep 600 & echo $! > "$PIDS/grandchild"; wait'])
    subprocess.run(["sh", "-c", 'setsid sleep 600 >/dev/null 2>&1 & echo $! > "$PIDS/detached"'], check=True,
                   env={**os.environ, "RBEE_HOME": str(tmp_path / "home")})
    yield child

def test_runs_long(daemons):
    time.sleep(600)
'''


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else None


def test_a_run_stopped_by_sigterm_stops_every_process_it_started(tmp_path: Path, slow) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.sigterm",
                            "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "inner"),
                            str(tmp_path / "test_inner.py")],
                           cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT), "PIDS": str(pids)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    names = ("grandchild", "detached")
    try:
        wait_until(lambda: all(read_pid(pids / n) for n in names), timeout=60,
                   what="the inner test to start its processes")
        started = {n: read_pid(pids / n) for n in names}
        assert all(pid_alive(pid) for pid in started.values() if pid)
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
        left = [n for n, pid in started.items() if pid and pid_alive(pid)]
        assert not left, f"the inner run's {left} outlived it:\n{out}"
        assert "stopped by signal" in out, out
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for name in names:
            if (pid := read_pid(pids / name)) and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
