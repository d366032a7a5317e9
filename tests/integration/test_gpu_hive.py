"""A real rbee-hive on a machine with two GPUs, as a stand-in nvidia-smi first on PATH describes them
(tests/support/fake_nvidia_smi.py): every figure of each GPU in /health, /v1/capabilities, /metrics and
`rbee hive status`, figures that move seen moving, and the warning that this machine's llama.cpp (a CPU
build) cannot use them, with the command that fixes it. Then nvidia-smi's failure modes, read for real."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hive.capabilities import GPU_FIELDS, GpuReader, probe_gpu_offload
from shared.events import Data, Error, Narration
from shared.job_client import JobClient
from tests.support.fake_nvidia_smi import FakeNvidiaSmi, gpu
from tests.support.processes import start_hive
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("slow")

GPUS = [gpu("NVIDIA GeForce RTX 4090", "8.9", 24564, free_mb=20582, used_mb=3982, util_pct=35),
        gpu("NVIDIA GeForce RTX 3090", "8.6", 24576, free_mb=24276, used_mb=300, util_pct=0)]
EXPECTED = [
    {"index": 0, "device": "cuda:0", "name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
     "memory_total_mb": 24564, "memory_free_mb": 20582, "memory_used_mb": 3982, "utilization_pct": 35},
    {"index": 1, "device": "cuda:1", "name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6",
     "memory_total_mb": 24576, "memory_free_mb": 24276, "memory_used_mb": 300, "utilization_pct": 0},
]
NO_OFFLOAD = "built without GPU support: workers run on the CPU"
FIX = "RBEE_LLAMA_BACKEND=cuda ./bootstrap.sh"


@pytest.fixture
def smi(tmp_path):
    return FakeNvidiaSmi.install(tmp_path / "bin", GPUS)


@pytest.fixture
async def hive(tmp_path, smi):
    daemon = await asyncio.to_thread(start_hive, tmp_path / "home", env=smi.env())
    yield daemon
    await asyncio.to_thread(daemon.stop)


async def get(daemon, path, *, auth=True):
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url + path, headers=daemon.auth if auth else {}) as resp:
            assert resp.status == 200, await resp.text()
            return await (resp.json() if path != "/metrics" else resp.text())


def test_this_machines_llama_cpp_is_a_cpu_build():
    """What the warning below relies on (a CUDA build here would make those tests say the opposite)."""
    assert probe_gpu_offload().supported is False


async def test_every_gpu_with_every_figure_in_health_and_capabilities(hive, smi):
    caps = await get(hive, "/v1/capabilities")
    assert caps["gpus"] == EXPECTED
    assert caps["devices"] == ["cpu", "cuda:0", "cuda:1"]
    assert caps["gpu_note"] == "2 NVIDIA GPUs found by nvidia-smi"
    health = await get(hive, "/health", auth=False)
    assert health["gpus"] == EXPECTED
    asked = [c for c in smi.calls() if c[0].startswith("--query-gpu")]
    assert asked[0] == [f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits"]
    before = len(smi.calls())
    for _ in range(5):
        await get(hive, "/health", auth=False)
    assert len(smi.calls()) <= before + 1  # health checks serve the last reading; nvidia-smi is not run for each


async def test_free_memory_and_utilisation_that_move_are_seen_moving(hive, smi):
    assert (await get(hive, "/v1/capabilities"))["gpus"][0]["memory_free_mb"] == 20582
    smi.update(0, free_mb=4096, used_mb=20468, util_pct=97)

    async def capabilities_moved():
        first = (await get(hive, "/v1/capabilities"))["gpus"][0]
        return first if first["memory_free_mb"] == 4096 else None

    first = await until(capabilities_moved, timeout=15, interval=0.2, what="/v1/capabilities to see cuda:0's free VRAM fall")
    assert (first["memory_used_mb"], first["utilization_pct"]) == (20468, 97)

    async def health_moved():
        return (await get(hive, "/health", auth=False))["gpus"][0]["utilization_pct"] == 97 or None

    await until(health_moved, timeout=15, interval=0.2, what="/health to see cuda:0's new figures")


async def test_a_cpu_only_llama_cpp_says_once_that_the_gpus_go_unused_and_how_to_fix_it(hive):
    caps = await get(hive, "/v1/capabilities")
    assert caps["gpu_offload"] is False
    problem = caps["gpu_problem"]
    assert problem.startswith("cuda:0 (NVIDIA GeForce RTX 4090), cuda:1 (NVIDIA GeForce RTX 3090) found")
    assert NO_OFFLOAD in problem and FIX in problem and "rbee hive install" in problem
    assert (await get(hive, "/health", auth=False))["gpu_problem"] == problem
    await get(hive, "/v1/capabilities")
    assert sum(NO_OFFLOAD in line for line in hive.stderr_lines) == 1  # logged once, however often it is asked

    async with JobClient(hive.url, hive.token) as client:
        stories = []
        for _ in range(2):  # the second is refused (the first worker holds every core): it is not told again
            job = await client.submit({"operation": "worker_spawn", "model": "smollm2-135m", "device": "cpu"})
            stories.append([e async for e in client.stream(job.job_id)])
    told = [[e for e in events if isinstance(e, Narration) and e.action == "gpu_offload"] for events in stories]
    assert len(told[0]) == 1 and told[0][0].level == "warn" and told[0][0].human == problem
    assert told[1] == []
    assert stories[0][-1].state == "completed", stories[0]


async def test_a_cpu_only_llama_cpp_plans_the_cpu_says_why_and_hides_the_gpus_from_its_worker(hive):
    async with JobClient(hive.url, hive.token) as client:
        job = await client.submit({"operation": "model_list"})
        listed = next(e for e in [e async for e in client.stream(job.job_id)] if isinstance(e, Data))
        plan = listed.payload["models"][0]["plan"]
        assert (plan["kind"], plan["reason"]) == ("cpu", "this hive's llama.cpp cannot offload to a GPU")
        assert list(plan["needs_mb"]) == ["cpu"] and "if_gpus_freed" not in plan

        job = await client.submit({"operation": "worker_spawn", "model": "smollm2-135m", "device": "cuda:1"})
        events = [e async for e in client.stream(job.job_id)]
        refused = next(e for e in events if isinstance(e, Error))
        assert (refused.code, refused.status) == ("NO_GPU_OFFLOAD", 409) and "--device cpu" in refused.message

        job = await client.submit({"operation": "worker_spawn", "model": "smollm2-135m"})  # device auto
        events = [e async for e in client.stream(job.job_id)]
    said = [e.human for e in events if isinstance(e, Narration) and e.action == "device_plan"]
    assert said == ["smollm2-135m: On the CPU: 374 MB of RAM (this hive's llama.cpp cannot offload to a GPU)"]
    worker = next(e for e in events if isinstance(e, Data) and e.action == "worker_spawn").payload
    assert (worker["device"], worker["gpus"], worker["plan"]["kind"]) == ("cpu", [], "cpu")
    environ = dict(item.split("=", 1) for item in open(f"/proc/{worker['pid']}/environ").read().split("\0") if "=" in item)
    assert environ["CUDA_VISIBLE_DEVICES"] == ""  # a CUDA build would otherwise still use a GPU it sees


async def test_metrics_have_gauges_per_gpu(hive):
    await get(hive, "/v1/capabilities")
    samples = {(s.name, s.labels.get("gpu")): (s.value, s.labels)
               for family in text_string_to_metric_families(await get(hive, "/metrics"))
               for s in family.samples if s.name.startswith("rbee_gpu_")}
    assert samples[("rbee_gpu_memory_total_bytes", "cuda:1")] == (
        24576 * 2**20, {"hive": "localhost", "gpu": "cuda:1", "name": "NVIDIA GeForce RTX 3090"})
    assert samples[("rbee_gpu_memory_free_bytes", "cuda:1")][0] == 24276 * 2**20
    assert samples[("rbee_gpu_memory_used_bytes", "cuda:0")][0] == 3982 * 2**20
    assert samples[("rbee_gpu_utilization_percent", "cuda:0")][0] == 35
    assert len(samples) == 8  # four figures of two GPUs


def test_rbee_hive_status_shows_a_line_per_gpu(keeper, tmp_path):
    smi = FakeNvidiaSmi.install(tmp_path / "bin", GPUS)
    keeper.env.update(smi.env())  # the queen it wakes, and the hive that queen starts, find this nvidia-smi
    assert keeper("hive", "start", "localhost").returncode == 0
    shown = keeper("hive", "status", "localhost")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    at = lines.index("gpus (2 NVIDIA GPUs found by nvidia-smi):")
    assert lines[at + 1:at + 3] == ["  cuda:0  NVIDIA GeForce RTX 4090 (8.9)  free 20.1 of 24.0 GiB  util 35 %",
                                    "  cuda:1  NVIDIA GeForce RTX 3090 (8.6)  free 23.7 of 24.0 GiB  util 0 %"]
    assert lines[at + 3].startswith("warning: cuda:0 (NVIDIA GeForce RTX 4090)") and FIX in lines[at + 3]


# --- nvidia-smi as it fails, read for real (the stand-in, in this process's PATH) ------------------------

@pytest.fixture
def on_path(monkeypatch, tmp_path):
    def install(gpus, **options):
        smi = FakeNvidiaSmi.install(tmp_path / "bin", gpus, **options)
        monkeypatch.setenv("PATH", smi.env()["PATH"])
        return smi
    return install


def test_an_old_driver_is_asked_again_without_compute_capability_and_only_that_once(on_path):
    smi = on_path(GPUS, old_driver=True)
    reader = GpuReader()
    reading = reader.read()
    assert [g["compute_capability"] for g in reading.gpus] == [None, None]
    assert [g["memory_free_mb"] for g in reading.gpus] == [20582, 24276]
    assert reading.note == "2 NVIDIA GPUs found by nvidia-smi (its driver does not report compute capability)"
    reader.read(max_age_s=0)
    queries = [c[0] for c in smi.calls()]
    assert len(queries) == 3 and "compute_cap" in queries[0] and "compute_cap" not in queries[1] + queries[2]


def test_a_failing_nvidia_smi_is_quoted_not_a_traceback(on_path):
    on_path(GPUS, fail="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    reading = GpuReader().read()
    assert reading.gpus == []
    assert reading.note == ("no GPU: nvidia-smi failed (exit 9: NVIDIA-SMI has failed because it couldn't "
                            "communicate with the NVIDIA driver.)")


def test_a_hung_nvidia_smi_is_given_up_on(on_path):
    on_path(GPUS, hang_s=5)
    reading = GpuReader(timeout_s=0.5).read()
    assert reading.gpus == [] and reading.note == "no GPU: nvidia-smi did not answer within 0.5 s"


def test_figures_it_cannot_tell_reach_the_hive_as_unknown(on_path):
    on_path([gpu("Tesla K80", None, 11441, free_mb="[N/A]", used_mb="[N/A]", util_pct="[Not Supported]")])
    assert GpuReader().read().gpus == [{
        "index": 0, "device": "cuda:0", "name": "Tesla K80", "compute_capability": None, "memory_total_mb": 11441,
        "memory_free_mb": None, "memory_used_mb": None, "utilization_pct": None}]


def test_the_stand_in_answers_list_and_refuses_what_the_real_one_refuses(smi):
    listed = subprocess.run([str(smi.path), "-L"], capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].startswith(
        "GPU 1: NVIDIA GeForce RTX 3090 (UUID: GPU-")
    for refused in (["--bogus"], ["--query-gpu=index,colour", "--format=csv"], ["--query-gpu=index"], ["-i", "7", "-L"]):
        assert subprocess.run([str(smi.path), *refused], capture_output=True, text=True).returncode != 0, refused
