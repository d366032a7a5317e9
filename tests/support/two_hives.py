"""A queen with two hives: its own `localhost`, and `second`, a remote hive reached the only way remote
hives are: over SSH (a real sshd on loopback, tests/support/sshd.py), with its own token and RBEE_HOME.

Installing takes half a minute, so `second` is set up as an install would leave it, from this checkout's
venv (a symlink), and the queen adopts it as a hive it should keep running when it starts. Installing for
real is tested in test_remote_hive.py and test_multi_host.py.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared import hive_control
from shared.builtin_model import builtin_model_path
from shared.paths import RbeePaths
from tests.support.processes import Daemon, start_queen
from tests.support.sshd import SshServer, sshd_binary, start_sshd
from tests.support.waiting import wait_until

SECOND = "second"
BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


@dataclass
class TwoHives:
    queen: Daemon
    sshd: SshServer
    queen_paths: RbeePaths
    second_home: Path
    second_only_model: str  # a file: reference registered on the second hive only

    def stop(self) -> None:
        try:
            self.queen.stop(30)
        finally:
            hive_control.stop(self.second_home)  # remote hives outlive their queen
            self.sshd.stop()


def require_sshd() -> None:
    if sshd_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("sshd is missing under CI: .ci/run must install openssh-server")
        pytest.skip("OpenSSH server (sshd) is not installed; `apt-get install openssh-server` to run these")


def start_two_hives(tmp_path: Path, *queen_args: str, cpus: tuple[set[int], set[int]] | None = None) -> TwoHives:
    """`cpus`: the cores of the queen with its own hive, and those of `second`, as if they were two machines
    (each hive then gives its workers its own cores only, and two llama.cpp thread pools never share one)."""
    require_sshd()
    sshd = start_sshd(tmp_path / "sshd")
    if cpus is not None:  # what sshd starts (the second hive, its workers) inherits its cores
        os.sched_setaffinity(sshd.proc.pid, cpus[1])
    install = tmp_path / "second-install"
    home = install / "home"
    (home / "config").mkdir(parents=True)
    os.symlink(sys.prefix, install / "venv")  # this checkout's venv stands in for the uploaded one
    (install / "rbee-install.json").write_text(json.dumps({"alias": SECOND, "state": "installed"}))
    token = secrets.token_urlsafe(32)
    (home / "config" / "token").write_text(token + "\n")
    queen_home = tmp_path / "queen-home"
    queen_paths = RbeePaths.from_env({"RBEE_HOME": str(queen_home)})
    queen_paths.config_dir.mkdir(parents=True)
    (queen_paths.config_dir / "hives.conf").write_text(
        f"Host {SECOND}\n    HostName 127.0.0.1\n    Port {sshd.port}\n    User {getpass.getuser()}\n"
        f"    IdentityFile {sshd.client_key}\n    UserKnownHostsFile {sshd.known_hosts}\n    HivePort 0\n"
        f"    InstallDir {install}\n    Python {BASE_PYTHON}\n")
    (queen_paths.config_dir / "remote-hives.json").write_text(
        json.dumps({SECOND: {"token": token, "keep_running": True}}))
    if cpus is None:
        queen = start_queen(queen_home, *queen_args)
    else:  # started from this thread with its cores (its hive and workers inherit them), then this thread's back
        own, before = os.sched_getaffinity(0), {t.native_id for t in threading.enumerate()}
        os.sched_setaffinity(0, cpus[0])
        try:
            queen = start_queen(queen_home, *queen_args)
        finally:
            os.sched_setaffinity(0, own)
            for thread in threading.enumerate():  # the threads that read its output inherited the cores too
                if thread.native_id not in before and thread.native_id is not None:
                    os.sched_setaffinity(thread.native_id, own)
    wait_until(lambda: hive_control.status(home).get("port"), timeout=60, what="the queen to start hive second")
    model = tmp_path / "models" / "only-on-second.gguf"
    model.parent.mkdir()
    shutil.copy(builtin_model_path(), model)
    return TwoHives(queen, sshd, queen_paths, home, f"file:{model}")
