"""rbee.toml through the real programs: the queen and its local hive start with it, flags override it, a bad
file stops a daemon with the key and line named, and `rbee config show` tells each value and its source."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from shared.paths import RbeePaths
from tests.support.keeper import running_keeper
from tests.support.processes import BIN, daemon_env

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

SETTINGS = """# what this machine's rbee starts with
[queen]
worker_idle_timeout = 120

[hive]
worker_ctx_size = 1024
"""


def config_dir(home: Path) -> Path:
    path = RbeePaths.from_env({"RBEE_HOME": str(home)}).config_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def worker_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_the_queen_and_its_hive_start_with_rbee_toml_and_say_where_each_value_came_from(tmp_path):
    home = tmp_path / "home"
    (config_dir(home) / "rbee.toml").write_text(SETTINGS)
    with running_keeper(home) as rbee:
        shown = rbee("config", "show")
        assert shown.returncode == 0, shown.stderr
        assert "no queen runs at" in shown.stdout  # what a queen would start with
        assert re.search(r"\n  worker_idle_timeout +120 +file, line 3\n", shown.stdout), shown.stdout
        started = rbee("queen", "start")
        assert started.returncode == 0, started.stderr
        answer = rbee("infer", "--max-tokens", "4", "Hi")
        assert answer.returncode == 0, answer.stderr
        said = json.loads(rbee("--json", "config", "show").stdout.splitlines()[-1])
        assert said["queen"]["worker_idle_timeout"] == {"value": 120.0, "source": "file", "line": 3}
        assert said["queen"]["local_hive_port"] == {"value": 0, "source": "env"}  # $RBEE_LOCAL_HIVE_PORT
        assert said["queen"]["port"]["source"] == "flag"  # rbee starts it on its URL's port
        assert said["queen"]["heartbeat_timeout"] == {"value": 15.0, "source": "default"}
        assert said["hive"]["worker_ctx_size"] == {"value": 1024, "source": "file", "line": 6}
        assert said["queen_from"].startswith("the queen running at") and said["hive_from"] == "its local hive"
        workers = rbee.queen(lambda client: client.request("GET", "/v1/workers"))["workers"]
        cmd = worker_cmdline(workers[0]["pid"])
        assert cmd[cmd.index("--ctx-size") + 1] == "1024"
        human = rbee("config", "show").stdout
        assert "[queen]  the queen running at" in human and "worker_ctx_size" in human and "file, line 6" in human


def test_a_bad_file_stops_the_daemons_naming_the_key_and_the_line(tmp_path):
    home = tmp_path / "home"
    (config_dir(home) / "rbee.toml").write_text("[queen]\nworker_idle_timeout = 120\nworker_slots = 0\n")
    queen = subprocess.run([str(BIN / "queen-rbee"), "--port", "0"], capture_output=True, text=True, timeout=60,
                           env=daemon_env(home))
    assert queen.returncode == 2 and "Traceback" not in queen.stderr
    assert "rbee.toml, line 3: [queen] worker_slots must be between 1 and 64, not 0." in queen.stderr
    flagged = subprocess.run([str(BIN / "queen-rbee"), "--port", "0", "--worker-slots", "4"], capture_output=True,
                             text=True, timeout=60, env=daemon_env(home))
    assert flagged.returncode == 2 and "line 3" in flagged.stderr  # the whole file is checked, flags or not
    (config_dir(home) / "rbee.toml").write_text("[hive]\nkv_cache_type = 'q8_0'\nflash_attn = 'off'\n")
    hive = subprocess.run([str(BIN / "rbee-hive"), "--port", "0"], capture_output=True, text=True, timeout=60,
                          env=daemon_env(home))
    assert hive.returncode == 2 and "flash_attn from file (line 3)" in hive.stderr
    started = time.monotonic()
    ok = subprocess.Popen([str(BIN / "rbee-hive"), "--port", "0", "--flash-attn", "on"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=daemon_env(home))
    try:
        line = ok.stdout.readline()  # the flag overrides the file: it starts
        assert "listening on" in line, ok.stderr.read() if ok.poll() is not None else line
    finally:
        ok.terminate()
        ok.wait(30)
    assert time.monotonic() - started < 30
    with running_keeper(home) as rbee:
        (config_dir(home) / "rbee.toml").write_text("[queen]\nworker_slot = 2\n")
        shown = rbee("config", "show")
        assert shown.returncode == 1 and "line 2: [queen] has no setting 'worker_slot'" in shown.stderr
