"""The measuring half of bench/gpu_check.sh (run by it, with the CUDA build's venv and RBEE_HOME set):
through rbee (queen -> hive -> worker) with the `rbee` CLI, on the GPU (--device auto), on the CPU, and
llama-cpp-python's own Llama (n_gpu_layers=-1) on the same build; the hive's VRAM plan vs nvidia-smi; a
forced partial offload (rbee-hive --vram-budget-mb); 10 spawn/delete cycles. The last line printed is
one JSON object with every figure and whether each goal is met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROMPT, Run, run_direct, run_over_http  # noqa: E402
from shared.builtin_model import builtin_model_path  # noqa: E402
from tests.support.processes import BIN, Daemon, start_daemon  # noqa: E402
from tests.support.sshd import free_port  # noqa: E402

MODEL = "smollm2-135m"
GOAL_RATIO = 0.95
GOAL_VRAM_PCT, GOAL_VRAM_MIB = 10.0, 256.0
OOM = re.compile(r"out of memory|CUDA error|cudaMalloc failed|OOM", re.I)


def log(text: str) -> None:
    print(f"[gpu_check] {text}", file=sys.stderr, flush=True)


def nvidia_smi(*query: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=30).stdout
    return [[p.strip() for p in line.split(",")] for line in out.splitlines() if line.strip()]


def used_vram_mib() -> float:
    return sum(float(row[0]) for row in nvidia_smi("--query-gpu=memory.used"))


def process_vram_mib(pid: int) -> float | None:
    """What nvidia-smi says process `pid` holds on the GPUs (MiB), None when it holds nothing there."""
    rows = [r for r in nvidia_smi("--query-compute-apps=pid,used_memory") if r and r[0] == str(pid)]
    return sum(float(r[1]) for r in rows) if rows else None


def rbee(queen: Daemon, *args: str, check: bool = True) -> list[dict]:
    """The `rbee` CLI with --json against this queen: its events, one dict a line."""
    done = subprocess.run([str(BIN / "rbee"), "--queen-url", queen.url, "--no-autostart", "--json", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RBEE_TOKEN": queen.token})
    events = []
    for line in done.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    if check and done.returncode != 0:
        raise RuntimeError(f"rbee {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return events


def payload(events: list[dict], action: str | None = None) -> dict:
    for event in events:
        if event.get("type") == "data" and (action is None or event.get("action") == action):
            return event.get("payload") or {}
    for event in events:
        if event.get("type") == "result":
            return event
    return {}


def planned_vram_mib(plan: dict) -> float | None:
    """What the hive's plan (hive/device_plan.py's WorkerPlan.to_dict) puts on GPUs, in MiB."""
    needs = plan.get("needs_mb") or {}
    on_gpus = [mb for device, mb in needs.items() if device.startswith("cuda:") and mb is not None]
    return round(sum(on_gpus), 1) if on_gpus else find_number(plan, r"vram|gpu.*(mib|mb|bytes)")


def find_number(data: Any, pattern: str) -> float | None:
    """The first number under a key matching `pattern` anywhere in `data` (the plan's keys are the hive's
    own: this reads whichever VRAM figure it gives)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and re.search(pattern, key, re.I):
                return float(value) / (1024 * 1024 if re.search("bytes$", key, re.I) else 1)
        for value in data.values():
            if (found := find_number(value, pattern)) is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            if (found := find_number(value, pattern)) is not None:
                return found
    return None


def worker_of(queen: Daemon, device: str) -> dict:
    spawned = payload(rbee(queen, "worker", "spawn", "--model", MODEL, "--device", device))
    worker_id = spawned.get("worker_id") or spawned.get("id")
    for worker in payload(rbee(queen, "worker", "list")).get("workers", []):
        if worker.get("worker_id", worker.get("id")) == worker_id or worker_id is None:
            return {**spawned, **worker}
    return spawned


def delete_workers(queen: Daemon) -> None:
    for worker in payload(rbee(queen, "worker", "list")).get("workers", []):
        rbee(queen, "worker", "delete", str(worker.get("worker_id", worker.get("id"))), check=False)
        pid = worker.get("pid")
        deadline = time.monotonic() + 30
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


async def through_rbee(queen: Daemon, device: str, rounds: int, max_tokens: int) -> list[Run]:
    auth = {"Authorization": f"Bearer {queen.token}"}
    body = {"operation": "infer", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "device": device}
    async with aiohttp.ClientSession() as session:
        await run_over_http(session, queen.url, "/v1/jobs", {**body, "max_tokens": 8}, auth)  # warm
        return [await run_over_http(session, queen.url, "/v1/jobs", body, auth) for _ in range(rounds)]


def median(runs: list[Run], field: str) -> float:
    return round(statistics.median(getattr(r, field) for r in runs), 2)


def start_stack(home: Path, *hive_args: str) -> tuple[Daemon, Daemon]:
    """rbee-hive first (with the flags under test), then a queen that adopts it as its local hive."""
    port = free_port()
    hive = start_daemon([str(BIN / "rbee-hive"), "--port", str(port), *hive_args], home)
    queen = start_daemon([str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", str(port)], home)
    return queen, hive


def hive_supports(flag: str) -> bool:
    return flag in subprocess.run([str(BIN / "rbee-hive"), "--help"], capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build-seconds", type=float, required=True)
    parser.add_argument("--build", required=True)
    parser.add_argument("--venv", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    home = Path(os.environ["RBEE_HOME"])
    result: dict[str, Any] = {"bench": "gpu_check", "build": args.build, "build_seconds": args.build_seconds,
                              "gpus": nvidia_smi("--query-gpu=index,name,compute_cap,memory.total,driver_version")}
    ooms = 0
    queen, hive = start_stack(home)
    try:
        listed = rbee(queen, "model", "list")
        result["model_list_plan"] = payload(listed)
        gpu_worker = worker_of(queen, "auto")
        result["plan"] = gpu_worker.get("plan") or gpu_worker
        result["device"] = gpu_worker.get("device")
        predicted = planned_vram_mib(result["plan"])
        gpu_runs = asyncio.run(through_rbee(queen, "auto", args.rounds, args.max_tokens))
        measured = process_vram_mib(int(gpu_worker["pid"])) if gpu_worker.get("pid") else None
        result.update(worker_gpu_tokens_per_s=median(gpu_runs, "tokens_per_s"), worker_gpu_ttft_ms=median(gpu_runs, "ttft_ms"),
                      vram_predicted_mib=predicted, vram_measured_mib=measured)
        log(f"GPU worker: {result['worker_gpu_tokens_per_s']} tokens/s, VRAM predicted {predicted} MiB, "
            f"measured {measured} MiB")

        from llama_cpp import Llama

        llm = Llama(model_path=str(builtin_model_path()), n_ctx=2048, n_gpu_layers=-1, verbose=False)
        run_direct(llm, 8)
        direct = [run_direct(llm, args.max_tokens) for _ in range(args.rounds)]
        del llm
        result.update(llama_gpu_tokens_per_s=median(direct, "tokens_per_s"), llama_gpu_ttft_ms=median(direct, "ttft_ms"))
        result["ratio_worker_to_llama"] = round(result["worker_gpu_tokens_per_s"] / result["llama_gpu_tokens_per_s"], 4)

        delete_workers(queen)
        cpu_runs = asyncio.run(through_rbee(queen, "cpu", args.rounds, args.max_tokens))
        result.update(worker_cpu_tokens_per_s=median(cpu_runs, "tokens_per_s"), worker_cpu_ttft_ms=median(cpu_runs, "ttft_ms"))
        delete_workers(queen)

        baseline = used_vram_mib()
        used_after = []
        for _ in range(args.cycles):
            try:
                worker_of(queen, "auto")
            except RuntimeError as error:
                ooms += bool(OOM.search(str(error)))
                log(f"cycle spawn failed: {error}")
            delete_workers(queen)
            time.sleep(0.5)
            used_after.append(used_vram_mib())
        result.update(cycles=args.cycles, vram_used_before_cycles_mib=baseline, vram_used_after_cycles_mib=used_after,
                      vram_growth_mib=round(used_after[-1] - baseline, 1) if used_after else None)
    finally:
        queen.stop()
        hive.stop()

    if hive_supports("--vram-budget-mb") and result.get("vram_predicted_mib"):
        # The built-in model's output layer alone (with CUDA's overhead and the compute buffer) is planned
        # at about 71 % of the whole worker: 85 % leaves room for about half its layers.
        budget = max(1, int(result["vram_predicted_mib"] * 0.85))
        queen, hive = start_stack(home, "--vram-budget-mb", str(budget))
        try:
            worker = worker_of(queen, "auto")
            runs = asyncio.run(through_rbee(queen, "auto", args.rounds, args.max_tokens))
            result["partial"] = {"budget_mib": budget, "plan": worker.get("plan") or worker,
                                 "measured_mib": process_vram_mib(int(worker["pid"])) if worker.get("pid") else None,
                                 "tokens_per_s": median(runs, "tokens_per_s")}
        except RuntimeError as error:
            ooms += bool(OOM.search(str(error)))
            result["partial"] = {"budget_mib": budget, "error": str(error)[-500:]}
        finally:
            queen.stop()
            hive.stop()
    else:
        result["partial"] = "not run: rbee-hive has no --vram-budget-mb, or no VRAM prediction"

    predicted, measured = result.get("vram_predicted_mib"), result.get("vram_measured_mib")
    result["ooms"] = ooms
    result["goals"] = {
        "worker_to_llama_ge_0_95": result.get("ratio_worker_to_llama", 0) >= GOAL_RATIO,
        "vram_prediction_within_10pct_or_256mib": bool(predicted and measured and abs(predicted - measured) <= max(
            GOAL_VRAM_MIB, measured * GOAL_VRAM_PCT / 100)),
        "no_ooms": ooms == 0,
        "no_vram_growth_over_cycles": result.get("vram_growth_mib") is not None and result["vram_growth_mib"] <= 64,
        "build_within_8_minutes": args.build_seconds <= 480,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
