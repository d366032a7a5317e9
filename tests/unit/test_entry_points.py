"""Every console script of SPEC.md is installed and answers like a command-line tool."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

BIN = Path(sys.executable).parent
ALL = ["rbee", "rbee-keeper", "queen-rbee", "rbee-hive", "llm-worker-rbee"]


@pytest.mark.parametrize("script", ALL)
def test_help_works(script):
    out = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


@pytest.mark.parametrize("script", ["rbee", "rbee-keeper"])
def test_keeper_without_a_command_and_no_terminal_prints_help(script):
    out = subprocess.run([str(BIN / script)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "usage: rbee" in out.stdout and "infer" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--worker-id", "w", "--model", "m.gguf", "--port", "abc"], "argument --port: invalid int value: 'abc'"),
    (["--model", "m.gguf"], "the following arguments are required: --worker-id"),
    (["--worker-id", "w", "--model", __file__, "--port", "70000"], "argument --port: must be between 0 and 65535, not 70000"),
])
def test_worker_bad_arguments_are_usage_errors(args, fragment):
    out = subprocess.run([str(BIN / "llm-worker-rbee"), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert fragment in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--port", "99999"], "argument --port: must be between 0 and 65535, not 99999"),
    (["--hive-id", "a b"], "--hive-id may hold letters"),
    (["--port", "x"], "argument --port: invalid int value"),
])
def test_hive_bad_arguments_are_usage_errors(args, fragment):
    out = subprocess.run([str(BIN / "rbee-hive"), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert fragment in out.stderr and "Traceback" not in out.stderr


def test_tui_without_a_terminal_says_so():
    out = subprocess.run([str(BIN / "rbee"), "tui"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "the terminal UI needs a terminal" in out.stderr
