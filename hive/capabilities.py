"""What this machine offers: CPU, cores, RAM, its NVIDIA GPUs and whether this hive's llama.cpp can use them.

GPUs come from one nvidia-smi call (index, name, compute capability, VRAM total/free/used, utilisation),
kept for a couple of seconds: free VRAM and utilisation move, and nvidia-smi takes 50-300 ms. Whether
llama.cpp can offload is asked once per process, in a child Python (the hive never imports llama_cpp: it
is heavy). Everything here blocks: the hive calls it in a thread (asyncio.to_thread), except `latest`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from shared.events import narrate
from shared.meminfo import ram_bytes
from shared.operations import LOCAL_HIVE

log = logging.getLogger("rbee.hive.capabilities")

GPU_FIELDS = ("index", "name", "compute_cap", "memory.total", "memory.free", "memory.used", "utilization.gpu")
OLD_DRIVER_FIELDS = tuple(f for f in GPU_FIELDS if f != "compute_cap")  # compute_cap came with driver 510
NVIDIA_SMI_TIMEOUT_S = 10.0  # its first call after boot initialises the driver: seconds, not milliseconds
GPU_READING_TTL_S = 2.0  # a reading younger than this is current enough for a plan
GPU_STALE_S = 5.0  # health checks and scrapes serve the latest reading; older than this, read again behind them
OFFLOAD_PROBE_TIMEOUT_S = 60.0
# Prints "True", "False", or "missing" when llama_cpp itself is not installed (one of its own imports
# failing is a broken install, not a missing one: that exits non-zero with its traceback on stderr).
OFFLOAD_PROBE = """\
import sys
try:
    import llama_cpp
except ModuleNotFoundError as exc:
    if exc.name != "llama_cpp":
        raise
    print("missing")
    sys.exit(0)
print(bool(llama_cpp.llama_supports_gpu_offload()))
"""
_COMPUTE_CAP = re.compile(r"^\d+\.\d+$")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- nvidia-smi ----------------------------------------------------------------------------------------

def _number(text: str) -> float | None:
    """A figure nvidia-smi gave, or None for its "[N/A]", "[Not Supported]", "[Unknown Error]" and the like."""
    try:
        return float(text)
    except ValueError:
        return None


def _whole(text: str) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


def parse_gpu_csv(text: str, fields: Sequence[str] = GPU_FIELDS) -> tuple[list[dict[str, Any]], int]:
    """The GPUs in `nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits` output, and how many of
    its lines were not understood (they are left out, never guessed at). Sizes are MiB, as nvidia-smi
    gives them; a figure it cannot tell is None."""
    gpus: list[dict[str, Any]] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        extra = len(parts) - len(fields)
        if extra < 0:
            skipped += 1
            continue
        if extra and "name" in fields:  # the one free-text field: a comma in a name is not a column
            at = fields.index("name")
            parts[at:at + extra + 1] = [", ".join(parts[at:at + extra + 1])]
        row = dict(zip(fields, parts))
        if not row.get("index", "").isdigit() or len(parts) != len(fields):
            skipped += 1
            continue
        index = int(row["index"])
        cap = row.get("compute_cap", "")
        name = row.get("name", "")
        gpus.append({
            "index": index,
            "device": f"cuda:{index}",
            "name": name if name and not name.startswith("[") else "NVIDIA GPU",
            "compute_capability": cap if _COMPUTE_CAP.match(cap) else None,
            "memory_total_mb": _whole(row.get("memory.total", "")),
            "memory_free_mb": _whole(row.get("memory.free", "")),
            "memory_used_mb": _whole(row.get("memory.used", "")),
            "utilization_pct": _whole(row.get("utilization.gpu", "")),
        })
    return gpus, skipped


@dataclass(frozen=True)
class GpuReading:
    """What nvidia-smi said at one moment (`at`: time.monotonic()), and a note saying how we know."""

    gpus: list[dict[str, Any]]
    note: str
    at: float = field(default_factory=time.monotonic)

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.at


class _NvidiaSmiFailed(Exception):
    """nvidia-smi did not answer, or answered with an error; the message says which, in its words."""


def _unknown_field(message: str) -> bool:
    """Whether nvidia-smi refused a field of the query (drivers before 510 do not know compute_cap)."""
    return "compute_cap" in message or "not a valid field" in message.lower()


class GpuReader:
    """This machine's NVIDIA GPUs, read again when the last reading is older than asked; thread-safe (one
    nvidia-smi at a time: a second caller waits for the first's answer and takes it)."""

    def __init__(self, *, ttl_s: float = GPU_READING_TTL_S, timeout_s: float = NVIDIA_SMI_TIMEOUT_S,
                 command: str = "nvidia-smi") -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.command = command
        self.last: GpuReading | None = None
        self._fields: tuple[str, ...] = GPU_FIELDS
        self._lock = threading.Lock()

    def read(self, max_age_s: float | None = None) -> GpuReading:
        """A reading at most `max_age_s` old (default: the reader's ttl); blocks while nvidia-smi runs."""
        max_age = self.ttl_s if max_age_s is None else max_age_s
        with self._lock:
            if self.last is None or self.last.age_s > max_age:
                self.last = self._query()
            return self.last

    def _query(self) -> GpuReading:
        exe = shutil.which(self.command)
        if exe is None:
            return GpuReading([], "no GPU: nvidia-smi is not installed")
        try:
            try:
                out = self._run(exe, self._fields)
            except _NvidiaSmiFailed as exc:
                if "compute_cap" not in self._fields or not _unknown_field(str(exc)):
                    raise
                self._fields = OLD_DRIVER_FIELDS
                log.info("this driver's nvidia-smi does not report compute capability; asking without it")
                out = self._run(exe, self._fields)
        except _NvidiaSmiFailed as exc:
            return GpuReading([], f"no GPU: {exc}")
        gpus, skipped = parse_gpu_csv(out, self._fields)
        if not gpus:
            note = "no GPU: nvidia-smi lists none"
        else:
            note = f"{len(gpus)} NVIDIA GPU{'s' if len(gpus) != 1 else ''} found by nvidia-smi"
            if "compute_cap" not in self._fields:
                note += " (its driver does not report compute capability)"
        if skipped:
            note += f"; {skipped} line{'s' if skipped != 1 else ''} of its output not understood"
        return GpuReading(gpus, note)

    def _run(self, exe: str, fields: Sequence[str]) -> str:
        argv = [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise _NvidiaSmiFailed(f"nvidia-smi did not answer within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise _NvidiaSmiFailed(f"nvidia-smi could not be run ({exc.strerror or exc})") from None
        if out.returncode != 0:
            said = " ".join((out.stderr.strip() or out.stdout.strip()).split())[:300] or "no message"
            raise _NvidiaSmiFailed(f"nvidia-smi failed (exit {out.returncode}: {said})")
        return out.stdout


# --- llama.cpp's GPU offload ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OffloadSupport:
    """Whether this Python's llama_cpp can offload to a GPU: True, False, or None when llama_cpp is not
    installed or there is no GPU to ask about; `problem`: why it could not be told, when it could not."""

    supported: bool | None
    problem: str | None = None


def probe_gpu_offload(python: str = sys.executable, timeout_s: float = OFFLOAD_PROBE_TIMEOUT_S) -> OffloadSupport:
    """Ask a child `python` what llama_cpp.llama_supports_gpu_offload() says (importing llama_cpp here would
    load all of llama.cpp into the hive)."""
    try:
        out = subprocess.run([python, "-c", OFFLOAD_PROBE], capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return OffloadSupport(False, f"importing llama_cpp took over {timeout_s:g} s")
    except OSError as exc:
        return OffloadSupport(False, f"{python} could not be run ({exc.strerror or exc})")
    said = out.stdout.strip().splitlines()
    answer = said[-1].strip() if said else ""
    if out.returncode == 0 and answer in ("True", "False"):
        return OffloadSupport(answer == "True")
    if out.returncode == 0 and answer == "missing":
        return OffloadSupport(None)
    last_error = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    return OffloadSupport(False, f"llama_cpp does not load in this hive's Python ({last_error[:300]})")


def offload_problem(gpus: Sequence[dict[str, Any]], offload: OffloadSupport, hive_id: str | None) -> str | None:
    """What to tell when this machine has GPUs its llama.cpp cannot use, with the command that fixes it."""
    if not gpus or offload.supported is not False:
        return None
    found = ", ".join(f"{g['device']} ({g['name']})" for g in gpus)
    fix = "RBEE_LLAMA_BACKEND=cuda ./bootstrap.sh (this machine)"
    fix += f" or `rbee hive install {hive_id if hive_id and hive_id != LOCAL_HIVE else 'ALIAS'}` (a remote hive)"
    why = offload.problem or "this hive's llama.cpp was built without GPU support"
    return f"{found} found, but {why}: workers run on the CPU. Fix: {fix}"


# --- the machine, as this process sees it --------------------------------------------------------------

class Machine:
    """This process's machine: its GPUs (a GpuReader) and its llama.cpp's offload support (asked once).
    A hive tells it its id (`hive_id`), which the fix for a CPU-only llama.cpp names."""

    def __init__(self, gpus: GpuReader | None = None, *, python: str = sys.executable) -> None:
        self.gpus = gpus or GpuReader()
        self.hive_id: str | None = None
        self._python = python
        self._offload: OffloadSupport | None = None
        self._offload_lock = threading.Lock()
        self._refreshing: asyncio.Future[GpuReading] | None = None
        self._warned: str | None = None
        self._narrated = False

    def gpu_offload(self) -> OffloadSupport:
        """Asked once, then kept (a hive's llama.cpp does not change under it); blocks the first time."""
        with self._offload_lock:
            if self._offload is None:
                self._offload = probe_gpu_offload(self._python)
            return self._offload

    def gpu_problem(self, gpus: Sequence[dict[str, Any]] | None = None) -> str | None:
        """The CPU-only llama.cpp warning, from what is known now (never blocks)."""
        if self._offload is None:
            return None
        listed = gpus if gpus is not None else (self.gpus.last.gpus if self.gpus.last else [])
        return offload_problem(listed, self._offload, self.hive_id)

    def capabilities(self) -> dict[str, Any]:
        """Everything, read now (GPUs: a reading at most the reader's ttl old); blocks."""
        reading = self.gpus.read()
        # Asked only where there is a GPU to use: the child Python's import of llama.cpp costs a CPU-only
        # machine 0.3 s of its cold start for an answer that changes nothing there.
        offload = self.gpu_offload() if reading.gpus or self._offload is not None else OffloadSupport(None)
        problem = offload_problem(reading.gpus, offload, self.hive_id)
        if problem and problem != self._warned:
            log.warning("%s", problem)  # once per process (again only if what it says changes)
            self._warned = problem
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            cores = os.cpu_count() or 1
        return {
            "cpu": {"model": cpu_model(), "cores": cores, "arch": platform.machine()},
            "ram_bytes": ram_bytes(),
            "ram_available_bytes": ram_bytes("MemAvailable"),
            "gpus": [dict(g) for g in reading.gpus],
            "gpu_note": reading.note,
            "gpu_offload": offload.supported,
            "gpu_problem": problem,
            "devices": ["cpu"] + [g["device"] for g in reading.gpus],
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
        }

    def latest(self) -> GpuReading | None:
        """The latest GPU reading without waiting (health checks, scrapes: a hung nvidia-smi must not hang
        them); when it is older than GPU_STALE_S, a new one is read in a thread behind this answer. Call
        it on the event loop."""
        reading = self.gpus.last
        if (reading is None or reading.age_s > GPU_STALE_S) and (self._refreshing is None or self._refreshing.done()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return reading
            self._refreshing = loop.run_in_executor(None, self.gpus.read, GPU_STALE_S)
        return reading

    def narrate_gpu_problem_once(self) -> None:
        """Tell the current job (once per process) that the GPUs here go unused, and how to fix that."""
        problem = self.gpu_problem()
        if problem and not self._narrated:
            self._narrated = True
            narrate("gpu_offload", problem, target=self.hive_id, level="warn")


MACHINE = Machine()


def detect_capabilities() -> dict[str, Any]:
    """This machine's capabilities now (blocks: call it in a thread)."""
    return MACHINE.capabilities()
