"""A GPU remote decides its llama.cpp build with its own nvidia-smi, over SSH: the remote's PATH (sshd's
SetEnv) holds a fake nvidia-smi and no nvcc. Nothing is compiled: a forced CUDA build with no toolkit to be
had fails with what to install, before any upload."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from shared.events import Error, Narration
from shared.job_client import JobClient
from tests.integration.test_remote_hive import error_of, host_block, queen, run, sshd  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *query-gpu=index*) echo "0, NVIDIA GeForce RTX 4090, 8.9, 550.54.15" ;;
  *-L*) echo "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-1)" ;;
esac
"""


async def test_a_gpu_remote_without_a_toolkit_gets_the_clear_error(sshd, queen, tmp_path):  # noqa: F811
    fake = tmp_path / "remote-bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(NVIDIA_SMI)
    (fake / "nvidia-smi").chmod(0o755)
    config = sshd.root / "sshd_config"
    original = config.read_text()
    config.write_text(original + f"SetEnv PATH={fake}:/usr/bin:/bin RBEE_NVCC_SEARCH= RBEE_LLAMA_BACKEND=cuda\n")
    os.kill(sshd.proc.pid, signal.SIGHUP)  # sshd re-executes itself with the new config
    await asyncio.sleep(1.0)
    with socket.create_connection(("127.0.0.1", sshd.port), timeout=5):
        pass
    try:
        (queen.home / "config" / "hives.conf").write_text(host_block("gpu1", sshd, tmp_path / "remote"))
        async with JobClient(queen.url, queen.token, request_timeout=60) as client:
            events = await run(client, {"operation": "hive_install", "alias": "gpu1"})
            error = error_of(events)
            assert error.code == "LLAMA_CUDA_NO_TOOLKIT", [e for e in events if isinstance(e, Error)]
            assert "RBEE_LLAMA_BACKEND=cuda and nvidia-smi lists NVIDIA GeForce RTX 4090 (8.9)" in error.message
            assert "Install the CUDA toolkit with cuBLAS" in error.message
            said = [e.human for e in events if isinstance(e, Narration)]
            assert not any("Uploading" in h for h in said)  # refused before any upload
    finally:
        config.write_text(original)
        os.kill(sshd.proc.pid, signal.SIGHUP)
        await asyncio.sleep(1.0)
