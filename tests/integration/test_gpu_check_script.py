"""bench/gpu_check.sh on a machine with no GPU: it refuses at once, clearly, with exit 2 (it must run
unchanged later on a GPU machine, so here only its refusal and its syntax can be checked)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def run(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env={"PATH": path, "HOME": str(tmp_path)}, capture_output=True,
                          text=True, timeout=60)


def test_no_nvidia_smi_is_a_clear_refusal(tmp_path):
    done = run(tmp_path, "/usr/bin:/bin")
    assert done.returncode == 2
    assert "no nvidia-smi on this machine: this check needs an NVIDIA GPU and its driver." in done.stderr
    assert done.stdout == "" and not list(tmp_path.iterdir())  # nothing built, nothing left


def test_a_driver_that_lists_no_gpu_is_refused_too(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    done = run(tmp_path, f"{fake}:/usr/bin:/bin")
    assert done.returncode == 2 and "nvidia-smi lists no GPU" in done.stderr


def test_the_script_parses_and_is_shellcheck_clean():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
