"""A test run stopped by SIGTERM leaves no process of its own behind (tests/support/sigterm.py): here an
inner pytest whose fixture started a process, which started another, and whose teardown would do nothing
(as after an event loop cut mid-test), is sent SIGTERM mid-test, and both processes must be gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

INNER = '''
import os, subprocess, time
import pytest

@pytest.fixture
def daemon(tmp_path):
    yield subprocess.Popen(["sh", "-c", 'sleep 600 & echo $! > "$PID_FILE"; wait'])

def test_runs_long(daemon):
    time.sleep(600)
'''


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_run_stopped_by_sigterm_tears_its_fixtures_down(tmp_path: Path, slow) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    pid_file = tmp_path / "pid"
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.sigterm",
                            "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "inner"),
                            str(tmp_path / "test_inner.py")],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "PID_FILE": str(pid_file)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60,
                   what="the inner test to start its process")
        pid = int(pid_file.read_text())
        assert alive(pid)  # the grandchild
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
        assert not alive(pid), f"the inner run's process outlived it:\n{out}"
        assert "KeyboardInterrupt" in out or "stopped by signal" in out, out
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if pid_file.exists() and alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)
