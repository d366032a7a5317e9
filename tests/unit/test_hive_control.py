"""The lock a hive holds is the only way rbee finds (and stops) it: real processes, real flocks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from shared import hive_control
from shared.hive_control import HiveLock, HiveLockBusy

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)


@pytest.fixture
def home(tmp_path):
    (tmp_path / "state").mkdir()
    return tmp_path


def hold_lock_in_child(home, argv0: str = sys.executable) -> subprocess.Popen:
    """A process that takes the lock as a hive does, then waits (its command line is not a hive's)."""
    code = textwrap.dedent(f"""
        import sys, time
        from shared.hive_control import HiveLock
        lock = HiveLock({str(home / 'state')!r}); lock.acquire(); lock.publish(port=4242, hive_id="h")
        print("locked", flush=True); time.sleep(60)
    """)
    proc = subprocess.Popen([argv0, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_nothing_runs_without_the_lock_whatever_the_files_say(home):
    assert hive_control.status(home) == {"running": False}
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (home / "state" / "hive.lock").write_text(json.dumps({"pid": bystander.pid, "port": 1}))
        assert hive_control.status(home) == {"running": False}
        assert hive_control.stop(home)["stopped"] is False
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_holder_that_is_not_a_hive_is_never_signalled(home):
    holder = hold_lock_in_child(home)
    try:
        found = hive_control.status(home)
        assert found["running"] and found["pid"] == holder.pid and found["port"] == 4242
        assert found["verified"] is False  # `python -c ...` is not rbee-hive
        answer = hive_control.stop(home)
        assert answer["stopped"] is False and "left alone" in answer["reason"]
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    assert hive_control.status(home) == {"running": False}  # the kernel dropped the lock with the process


def test_a_second_hive_in_the_same_home_is_refused(home):
    holder = hold_lock_in_child(home)
    try:
        with pytest.raises(HiveLockBusy, match=f"pid {holder.pid}"):
            HiveLock(home / "state").acquire(wait_s=0.2)
    finally:
        holder.kill()
        holder.wait()
    lock = HiveLock(home / "state")
    lock.acquire(wait_s=0.2)  # free again once the holder is gone
    lock.release()


def test_is_hive_process_checks_the_command_line_and_the_install():
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)",
                             "hive.main"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"  # exec'd: its command line is its own now
        venv = str(__import__("pathlib").Path(sys.executable).parent.parent)
        assert hive_control.is_hive_process(proc.pid)
        assert hive_control.is_hive_process(proc.pid, venv)
        assert not hive_control.is_hive_process(proc.pid, "/somewhere/else")
    finally:
        proc.kill()
        proc.wait()


def test_a_holder_that_never_publishes_is_waited_for_then_left_alone(home, monkeypatch):
    monkeypatch.setattr(hive_control, "PUBLISH_WAIT_S", 0.3)
    code = ("import time; from shared.hive_control import HiveLock; "
            f"HiveLock({str(home / 'state')!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert hive_control.status(home) == {"running": True, "starting": True}
        answer = hive_control.stop(home)
        assert answer["stopped"] is False and "left alone" in answer["reason"]
        started = hive_control.start(home, sys.executable, ["--port", "0"])
        assert started["running"] is False and "has not said its port" in started["reason"]  # no duplicate
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
