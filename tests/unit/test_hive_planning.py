"""The hive's executor turns what it sees of its GPUs into a worker's plan (hive/executor.py over
hive/device_plan.py): only GPUs its llama.cpp can use and no worker holds (one worker per GPU), the
hive's VRAM budget, an embedding worker kept on the CPU, and `if_gpus_freed` for the queen's eviction.

The GPUs are what this machine cannot have: their capabilities are given as a hive with a CUDA build and
nvidia-smi would report them (tests/integration/test_gpu_hive.py reads a stand-in nvidia-smi for real).
A held GPU is held by a real process (`sleep`), as a worker's would be."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from hive.catalog import CatalogEntry
from hive.config import HiveConfig
from hive.device_plan import NoFit, NoGpuOffload
from hive.errors import HiveError
from hive.executor import HiveExecutor
from hive.workers import WorkerProcess, WorkerSupervisor
from shared.builtin_model import BUILTIN_MODEL, builtin_model_path
from tests.support.gguf_headers import LLAMA_31_8B, write_header_gguf

MIB = 1 << 20


def gpu(index: int, total_mb: int, free_mb: int | None, name: str = "NVIDIA GeForce RTX 4090") -> dict:
    return {"index": index, "device": f"cuda:{index}", "name": name, "compute_capability": "8.9",
            "memory_total_mb": total_mb, "memory_free_mb": free_mb,
            "memory_used_mb": None if free_mb is None else total_mb - free_mb, "utilization_pct": 0}


def capabilities(gpus: list[dict], *, offload: bool | None = True, ram_mb: int = 64 * 1024) -> dict:
    return {"cpu": {"cores": 16}, "ram_available_bytes": ram_mb * MIB, "gpus": gpus, "gpu_offload": offload,
            "gpu_note": f"{len(gpus)} NVIDIA GPUs found by nvidia-smi", "devices": ["cpu"] + [g["device"] for g in gpus]}


def executor(tmp_path: Path, caps: dict, **config) -> HiveExecutor:
    cfg = HiveConfig(**config)  # paths from the test's own RBEE_HOME
    ex = HiveExecutor(cfg, store=None, supervisor=WorkerSupervisor(cfg, "t", queen=None, heartbeat_url=lambda: None),
                      capabilities=caps)

    async def as_seen_now():  # what nvidia-smi and a CUDA build would say now
        return ex.capabilities
    ex.refresh_capabilities = as_seen_now  # type: ignore[method-assign]
    return ex


def entry(path: Path | str, model: str = BUILTIN_MODEL) -> CatalogEntry:
    return CatalogEntry(id=model, reference=model, path=str(path), size=Path(path).stat().st_size, sha256="",
                        added_at=0.0, downloaded=True)


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory) -> CatalogEntry:
    path = write_header_gguf(tmp_path_factory.mktemp("gguf") / LLAMA_31_8B.name, LLAMA_31_8B)
    return entry(path, "llama-3.1-8b")


BUILTIN = entry(builtin_model_path())
F16 = {"kv_cache_type": "f16", "flash_attn": "auto"}


async def test_auto_puts_a_model_that_fits_on_the_gpu_with_the_most_room(tmp_path):
    ex = executor(tmp_path, capabilities([gpu(0, 8192, 2000), gpu(1, 24564, 20000)]))
    plan = await ex.plan(BUILTIN, "auto", **F16)
    assert (plan.kind, plan.gpus, plan.gpu_layers) == ("gpu", (1,), 31)
    assert plan.describe().startswith("All 31 layers on cuda:1: 0.8 of 24.0 GiB")


async def test_a_cpu_only_build_or_no_gpu_plans_the_cpu_and_says_why(tmp_path):
    plan = await executor(tmp_path, capabilities([gpu(0, 24564, 20000)], offload=False)).plan(BUILTIN, "auto", **F16)
    assert (plan.kind, plan.gpus) == ("cpu", ())
    assert plan.reason == "this hive's llama.cpp cannot offload to a GPU"
    assert (await executor(tmp_path, capabilities([])).plan(BUILTIN, "auto", **F16)).reason == "no GPU"
    with pytest.raises(NoGpuOffload):
        await executor(tmp_path, capabilities([gpu(0, 24564, 20000)], offload=False)).resolve_device("cuda:0")


async def test_a_gpu_whose_memory_nvidia_smi_cannot_tell_is_not_planned_on(tmp_path):
    plan = await executor(tmp_path, capabilities([gpu(0, 24564, None)])).plan(BUILTIN, "auto", **F16)
    assert plan.kind == "cpu"


async def test_the_vram_budget_caps_each_gpu_so_a_large_model_offloads_part(tmp_path, llama8b):
    caps = capabilities([gpu(0, 24564, 24000)])
    assert (await executor(tmp_path, caps).plan(llama8b, "auto", **F16)).kind == "gpu"
    plan = await executor(tmp_path, caps, vram_budget_bytes=3000 * MIB).plan(llama8b, "auto", **F16)
    assert plan.kind == "partial" and 1 < plan.gpu_layers < 33
    assert plan.per_device["cuda:0"] <= 3000 * MIB


async def test_an_embedding_worker_stays_on_the_cpu_unless_a_gpu_is_named(tmp_path):
    ex = executor(tmp_path, capabilities([gpu(0, 24564, 20000)]))
    assert (await ex.plan(BUILTIN, "auto", embedding=True, **F16)).kind == "cpu"
    assert (await ex.plan(BUILTIN, "cuda:0", embedding=True, **F16)).kind == "gpu"


async def test_the_model_list_plan_and_its_refusal_when_nothing_fits(tmp_path, llama8b):
    ex = executor(tmp_path, capabilities([gpu(0, 24564, 20000)]))
    described = await ex.describe_plan(BUILTIN)
    assert described["kind"] == "gpu" and set(described["needs_mb"]) == {"cpu", "cuda:0"}
    assert "estimate" not in described and "if_gpus_freed" not in described
    small = executor(tmp_path, capabilities([], ram_mb=1024))
    refused = await small.describe_plan(llama8b)
    assert refused["code"] == "NO_FIT" and "does not fit this hive" in refused["error"]
    with pytest.raises(NoFit):
        await small.plan(llama8b, "auto", **F16)


@pytest.fixture
async def holder(slow):
    """A real process standing for a worker that holds a GPU."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    yield proc
    proc.kill()
    await proc.wait()


async def test_one_worker_per_gpu_a_held_gpu_is_skipped_and_refused_by_name(tmp_path, holder, llama8b):
    ex = executor(tmp_path, capabilities([gpu(0, 24564, 20000), gpu(1, 8192, 7000)]))
    held_plan = await ex.plan(llama8b, "cuda:0", **F16)
    ex.supervisor._workers["worker-held"] = WorkerProcess("worker-held", "llama-3.1-8b", "", "cuda:0", holder,
                                                          gpus=(0,), plan=held_plan)
    assert ex.gpus_held() == {0: "worker-held"}
    plan = await ex.plan(BUILTIN, "auto", **F16)
    assert plan.gpus == (1,)  # not cuda:0, though it has the most room
    with pytest.raises(HiveError) as refused:
        await ex.resolve_device("cuda:0")
    assert refused.value.code == "GPU_IN_USE" and "worker-held" in refused.value.message
    assert await ex.resolve_device("cuda:1") == "cuda:1"


async def test_if_gpus_freed_says_when_stopping_a_gpu_worker_would_give_the_model_a_whole_gpu(tmp_path, holder,
                                                                                              llama8b):
    ex = executor(tmp_path, capabilities([gpu(0, 24564, 20000)]))
    held_plan = await ex.plan(BUILTIN, "cuda:0", **F16)
    ex.supervisor._workers["worker-held"] = WorkerProcess("worker-held", BUILTIN_MODEL, "", "cuda:0", holder,
                                                          gpus=(0,), plan=held_plan)
    # nvidia-smi counts what the holder uses; its GPU is not planned on (one worker per GPU) all the same
    ex.capabilities = capabilities([gpu(0, 24564, 14000)])
    described = await ex.describe_plan(llama8b)
    assert described["kind"] == "cpu" and described["if_gpus_freed"] == "gpu"
    # a GPU that would not hold the model whole even freed: nobody to stop for it
    ex.capabilities = capabilities([gpu(0, 8192, 1000)])
    assert "if_gpus_freed" not in await ex.describe_plan(llama8b)
    # a model a free GPU holds whole needs nobody stopped either
    ex.capabilities = capabilities([gpu(0, 24564, 14000), gpu(1, 24564, 24000)])
    described = await ex.describe_plan(llama8b)
    assert described["gpus"] == [1] and "if_gpus_freed" not in described
