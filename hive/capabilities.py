"""What this machine offers: CPU, cores, RAM, and NVIDIA GPUs (via nvidia-smi) or an honest "no GPU"."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_bytes(field: str = "MemTotal") -> int | None:
    """A /proc/meminfo figure in bytes: MemTotal, or MemAvailable (what new processes can have without
    swapping: free memory plus reclaimable caches)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def nvidia_gpus() -> tuple[list[dict[str, Any]], str]:
    """(GPUs, a note saying how we know)."""
    if not shutil.which("nvidia-smi"):
        return [], "no GPU: nvidia-smi is not installed"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"no GPU: nvidia-smi failed ({exc})"
    if out.returncode != 0:
        return [], f"no GPU: nvidia-smi failed ({(out.stderr or out.stdout).strip()[:200]})"
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"device": f"cuda:{parts[0]}", "name": parts[1], "memory_total_mb": int(float(parts[2])),
                         "memory_free_mb": int(float(parts[3]))})
    return gpus, f"{len(gpus)} NVIDIA GPU(s) found by nvidia-smi" if gpus else "no GPU: nvidia-smi lists none"


def detect_capabilities() -> dict[str, Any]:
    gpus, gpu_note = nvidia_gpus()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    return {
        "cpu": {"model": cpu_model(), "cores": cores, "arch": platform.machine()},
        "ram_bytes": ram_bytes(),
        "ram_available_bytes": ram_bytes("MemAvailable"),
        "gpus": gpus,
        "gpu_note": gpu_note,
        "devices": ["cpu"] + [g["device"] for g in gpus],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
