"""The real `rbee` executable against real daemons: human and --json output, auto-start, Ctrl+C."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import daemon_env, pid_alive
from tests.support.waiting import wait_until

RBEE = str(Path(sys.executable).parent / "rbee")
FRANCE = ["--temperature", "0", "--max-tokens", "12", "The capital of France is"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keeper:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = daemon_env(home, RBEE_LOCAL_HIVE_PORT="0", RBEE_QUEEN_URL=self.url)

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RBEE, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              stdin=subprocess.DEVNULL)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([RBEE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, stdin=subprocess.DEVNULL)

    def queen_pid(self) -> int | None:
        pid_file = self.home / "state" / "queen.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None


def json_lines(stdout: str) -> list[dict]:
    lines = stdout.strip().splitlines()
    return [json.loads(line) for line in lines]  # every line must parse


@pytest.fixture
def keeper(tmp_path):
    k = Keeper(tmp_path / "home")
    yield k
    pid = k.queen_pid()
    k("queen", "stop", timeout=60)
    if pid is not None:
        wait_until(lambda: not pid_alive(pid), timeout=20, interval=0.1,
                   what="the queen to exit after `rbee queen stop`")


def test_autostart_and_human_stdout_holds_exactly_the_answer(keeper):
    human = keeper("infer", *FRANCE)
    assert human.returncode == 0, human.stderr
    assert "queen is asleep, waking queen" in human.stderr
    assert "Starting hive localhost" in human.stderr and "is ready" in human.stderr
    machine = keeper("--json", "infer", *FRANCE)
    assert machine.returncode == 0, machine.stderr
    result = json_lines(machine.stdout)[-1]
    assert human.stdout == result["text"]  # the answer, nothing else
    assert "Paris" in human.stdout


def test_json_infer_is_one_object_per_line_ending_in_the_result(keeper):
    out = keeper("--json", "infer", *FRANCE)
    assert out.returncode == 0, out.stderr
    events = json_lines(out.stdout)
    types = [e["type"] for e in events]
    assert types[-1] == "result" and types[-2] == "end" and "token" in types and "narration" in types
    result = events[-1]
    assert result["state"] == "completed" and result["job_id"].startswith("job-")
    assert result["text"] == "".join(e["t"] for e in events if e["type"] == "token")
    assert result["tokens_out"] == 12


def test_chat_mode_uses_the_models_template(keeper):
    out = keeper("--json", "infer", "--chat", "--max-tokens", "16", "--temperature", "0", "What is 2+2?")
    assert out.returncode == 0, out.stderr
    events = json_lines(out.stdout)
    result = events[-1]
    assert result["state"] == "completed" and result["prompt_tokens"] > 10  # the template wraps the question
    assert "<|im_start|>" not in result["text"]  # the template's markers stop generation, never leak


def test_no_autostart_without_a_queen_fails_clearly(keeper):
    out = keeper("--no-autostart", "infer", "hello")
    assert out.returncode == 3
    assert out.stdout == ""
    assert f"No queen answers at {keeper.url}" in out.stderr and "Traceback" not in out.stderr
    status = keeper("--json", "queen", "status")
    assert status.returncode == 3 and json_lines(status.stdout) == [
        {"type": "result", "queen_url": keeper.url, "state": "stopped"}]


def test_ctrl_c_cancels_the_job_on_the_queen(keeper):
    assert keeper("infer", "--max-tokens", "4", "warm up").returncode == 0
    proc = keeper.popen("--json", "infer", "--temperature", "0", "--max-tokens", "1000",
                        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,")
    job_id = None
    for line in proc.stdout:
        event = json.loads(line)
        job_id = event.get("job_id") or job_id
        if event["type"] == "token" and event["i"] >= 2:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted: cancelled job" in err
    assert json.loads(rest.strip().splitlines()[-1])["state"] == "cancelled"
    shown = keeper("--json", "jobs", "show", job_id)
    assert json_lines(shown.stdout)[-1]["state"] == "cancelled"


@pytest.mark.parametrize("command", [
    ["model", "list"], ["worker", "list"], ["hive", "list"], ["status"], ["jobs", "list"], ["queen", "status"],
])
def test_listing_commands_in_both_modes(keeper, command):
    assert keeper("infer", "--max-tokens", "2", "hi").returncode == 0  # something to list
    human = keeper(*command)
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip()
    machine = keeper("--json", *command)
    assert machine.returncode == 0, machine.stderr
    assert json_lines(machine.stdout)[-1]["type"] == "result"


def test_lists_read_as_tables(keeper):
    assert keeper("infer", "--max-tokens", "2", "hi").returncode == 0
    models = keeper("model", "list").stdout.splitlines()
    assert models[0].split() == ["ID", "SIZE", "NEEDS", "SHA256", "DOWNLOADED", "PATH"]
    assert models[1].startswith("smollm2-135m") and "MiB (2048×4)" in models[1]  # its memory estimate
    workers = keeper("worker", "list").stdout.splitlines()
    assert workers[0].split()[:3] == ["ID", "MODEL", "STATE"] and "ready" in workers[1]


def test_a_failed_job_exits_non_zero_with_the_reason(keeper):
    out = keeper("infer", "--hive", "nowhere", "hello")
    assert out.returncode == 1
    assert "Unknown hive 'nowhere'" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("args, fragment", [
    (["infer"], "the following arguments are required: prompt"),
    (["infer", "--max-tokens", "0", "hi"], "rbee: error: --max-tokens must be at least 1, not 0"),
    (["infer", "--temperature", "hot", "hi"], "argument --temperature: invalid float value: 'hot'"),
    (["worker", "get"], "worker get needs a worker id"),
    (["model", "download"], "model download needs a model reference"),
    (["jobs", "show"], "jobs show needs a job id"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_bad_arguments_are_usage_errors(keeper, args, fragment):
    out = keeper(*args)
    assert out.returncode == 2
    assert fragment in out.stderr and "Traceback" not in out.stderr
    assert keeper.queen_pid() is None  # nothing was started for a usage error


def test_every_command_has_help_with_an_example(keeper):
    for command in ("infer", "status", "queen", "hive", "worker", "model", "jobs"):
        out = keeper(command, "--help")
        assert out.returncode == 0 and "example:" in out.stdout and "rbee " in out.stdout


def test_the_cli_does_not_import_textual():
    code = "import sys, keeper_tui.cli; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
