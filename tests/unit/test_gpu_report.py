"""Reading nvidia-smi's answer (every field, [N/A]s, old drivers, garbage), the CPU-only llama.cpp warning,
the GPU gauges, and how the keeper shows a hive's GPUs. The real hive with a stand-in nvidia-smi is in
tests/integration/test_gpu_hive.py."""

from __future__ import annotations

import io

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from hive.capabilities import (
    GPU_FIELDS,
    OLD_DRIVER_FIELDS,
    GpuReader,
    OffloadSupport,
    offload_problem,
    parse_gpu_csv,
)
from hive.metrics import gpu_gauges
from keeper_tui.output import gpu_lines, gpus_brief, render_data
from keeper_tui.tui.views.hives import COLUMNS, hive_row

RTX = {"index": 0, "device": "cuda:0", "name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
       "memory_total_mb": 24564, "memory_free_mb": 20582, "memory_used_mb": 3982, "utilization_pct": 35}


def test_every_field_of_a_gpu_is_read():
    gpus, skipped = parse_gpu_csv("0, NVIDIA GeForce RTX 4090, 8.9, 24564, 20582, 3982, 35\n"
                                  "1, NVIDIA A100-SXM4-80GB, 8.0, 81920, 81004, 916, 0\n")
    assert skipped == 0
    assert gpus[0] == RTX
    assert gpus[1] == {"index": 1, "device": "cuda:1", "name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0",
                       "memory_total_mb": 81920, "memory_free_mb": 81004, "memory_used_mb": 916, "utilization_pct": 0}


def test_figures_nvidia_smi_cannot_tell_are_none_not_zero():
    gpus, skipped = parse_gpu_csv("0, Tesla K80, [N/A], 11441, [N/A], [Unknown Error], [Not Supported]\n")
    assert skipped == 0
    assert gpus == [{"index": 0, "device": "cuda:0", "name": "Tesla K80", "compute_capability": None,
                     "memory_total_mb": 11441, "memory_free_mb": None, "memory_used_mb": None,
                     "utilization_pct": None}]


def test_an_old_driver_is_asked_without_compute_capability():
    assert "compute_cap" not in OLD_DRIVER_FIELDS and len(OLD_DRIVER_FIELDS) == len(GPU_FIELDS) - 1
    gpus, skipped = parse_gpu_csv("0, Tesla T4, 15360, 15000, 360, 3\n", OLD_DRIVER_FIELDS)
    assert skipped == 0
    assert gpus[0]["compute_capability"] is None and gpus[0]["memory_free_mb"] == 15000
    assert gpus[0]["utilization_pct"] == 3 and gpus[0]["name"] == "Tesla T4"


def test_lines_it_does_not_understand_are_counted_and_left_out():
    text = ("Unable to determine the device handle for GPU0000:02:00.0: Unknown Error\n"
            "\n"
            "0, NVIDIA L4, 8.9, 23034, 22000, 1034, 7\n"
            "x, NVIDIA L4, 8.9, 23034, 22000, 1034, 7\n"
            "1, NVIDIA L4, 8.9\n")
    gpus, skipped = parse_gpu_csv(text)
    assert [g["device"] for g in gpus] == ["cuda:0"]
    assert skipped == 3


def test_a_comma_in_a_name_stays_in_the_name_and_a_strange_capability_is_none():
    gpus, skipped = parse_gpu_csv("2, NVIDIA RTX 6000 Ada, Generation, 9.x, 49140, 49000, 140, 0\n")
    assert skipped == 0
    assert gpus[0]["name"] == "NVIDIA RTX 6000 Ada, Generation" and gpus[0]["compute_capability"] is None
    assert gpus[0]["device"] == "cuda:2" and gpus[0]["memory_total_mb"] == 49140


def test_fractional_figures_are_whole_mib():
    gpus, _ = parse_gpu_csv("0, GPU, 7.5, 16384.0, 100.7, 16283.3, 99\n")
    assert (gpus[0]["memory_total_mb"], gpus[0]["memory_free_mb"], gpus[0]["memory_used_mb"]) == (16384, 100, 16283)


def test_no_nvidia_smi_is_said_plainly():
    reading = GpuReader(command="rbee-test-no-such-nvidia-smi").read()
    assert reading.gpus == [] and reading.note == "no GPU: nvidia-smi is not installed"


def test_gpus_a_cpu_only_llama_cpp_cannot_use_are_named_with_the_fix():
    two = [RTX, {**RTX, "index": 1, "device": "cuda:1", "name": "NVIDIA GeForce RTX 3090"}]
    said = offload_problem(two, OffloadSupport(False), "gpu1")
    assert said == ("cuda:0 (NVIDIA GeForce RTX 4090), cuda:1 (NVIDIA GeForce RTX 3090) found, but this hive's "
                    "llama.cpp was built without GPU support: workers run on the CPU. Fix: RBEE_LLAMA_BACKEND=cuda "
                    "./bootstrap.sh (this machine) or `rbee hive install gpu1` (a remote hive)")
    assert "`rbee hive install ALIAS`" in offload_problem([RTX], OffloadSupport(False), "localhost")
    broken = offload_problem([RTX], OffloadSupport(False, "llama_cpp does not load in this hive's Python (boom)"), None)
    assert "but llama_cpp does not load in this hive's Python (boom): workers run on the CPU" in broken


def test_nothing_to_say_when_it_can_offload_has_no_gpu_or_has_no_llama_cpp():
    assert offload_problem([RTX], OffloadSupport(True), "gpu1") is None
    assert offload_problem([], OffloadSupport(False), "gpu1") is None
    assert offload_problem([RTX], OffloadSupport(None), "gpu1") is None


class _Families(Collector):
    def __init__(self, families):
        self.families = list(families)

    def collect(self):
        return self.families


def test_gpu_gauges_are_bytes_and_percent_per_hive_and_gpu_leaving_out_what_is_unknown():
    unknown = {**RTX, "index": 1, "device": "cuda:1", "memory_free_mb": None, "utilization_pct": None}
    registry = CollectorRegistry()
    registry.register(_Families(gpu_gauges("gpu1", [RTX, unknown])))
    text = generate_latest(registry).decode()
    assert '# TYPE rbee_gpu_memory_total_bytes gauge' in text
    assert 'rbee_gpu_memory_total_bytes{gpu="cuda:0",hive="gpu1",name="NVIDIA GeForce RTX 4090"}' in text
    assert registry.get_sample_value("rbee_gpu_memory_free_bytes", {"hive": "gpu1", "gpu": "cuda:0",
                                                                     "name": RTX["name"]}) == 20582 * 2**20
    assert registry.get_sample_value("rbee_gpu_memory_used_bytes", {"hive": "gpu1", "gpu": "cuda:0",
                                                                     "name": RTX["name"]}) == 3982 * 2**20
    assert registry.get_sample_value("rbee_gpu_utilization_percent", {"hive": "gpu1", "gpu": "cuda:0",
                                                                       "name": RTX["name"]}) == 35
    cuda1 = {"hive": "gpu1", "gpu": "cuda:1", "name": RTX["name"]}
    assert registry.get_sample_value("rbee_gpu_memory_total_bytes", cuda1) == 24564 * 2**20
    assert registry.get_sample_value("rbee_gpu_memory_free_bytes", cuda1) is None
    assert registry.get_sample_value("rbee_gpu_utilization_percent", cuda1) is None


def test_a_line_per_gpu_columns_aligned():
    assert gpu_lines([RTX]) == ["cuda:0  NVIDIA GeForce RTX 4090 (8.9)  free 20.1 of 24.0 GiB  util 35 %"]
    k80 = {"device": "cuda:1", "name": "Tesla K80", "compute_capability": None, "memory_total_mb": 11441,
           "memory_free_mb": None, "utilization_pct": None}
    assert gpu_lines([RTX, k80]) == [
        "cuda:0  NVIDIA GeForce RTX 4090 (8.9)  free 20.1 of 24.0 GiB  util 35 %",
        "cuda:1  Tesla K80                      free ? of 11.2 GiB     util ? %",
    ]


def test_hive_status_shows_its_gpus_and_why_they_go_unused():
    caps = {"cpu": {"cores": 16}, "gpus": [RTX], "gpu_note": "1 NVIDIA GPU found by nvidia-smi",
            "gpu_offload": False, "gpu_problem": "cuda:0 (NVIDIA GeForce RTX 4090) found, but … Fix: …",
            "devices": ["cpu", "cuda:0"]}
    out = io.StringIO()
    render_data("hive_status", {"alias": "gpu1", "state": "running", "capabilities": caps}, out)
    lines = out.getvalue().splitlines()
    assert lines[-3:] == ["gpus (1 NVIDIA GPU found by nvidia-smi):",
                          "  cuda:0  NVIDIA GeForce RTX 4090 (8.9)  free 20.1 of 24.0 GiB  util 35 %",
                          "warning: cuda:0 (NVIDIA GeForce RTX 4090) found, but … Fix: …"]
    assert "  gpu_offload  no" in lines and not any("memory_free_mb" in line for line in lines)

    out = io.StringIO()
    render_data("hive_status", {"alias": "gpu1", "state": "unreachable", "capabilities": caps}, out)
    assert "gpus (1 NVIDIA GPU found by nvidia-smi, as last reported):" in out.getvalue()

    out = io.StringIO()
    render_data("hive_refresh_capabilities", {"hive_id": "h", "gpus": [], "gpu_offload": None,
                                              "gpu_note": "no GPU: nvidia-smi is not installed"}, out)
    assert out.getvalue().splitlines()[-1] == "gpus  none (no GPU: nvidia-smi is not installed)"


def test_a_remote_hive_whose_capabilities_were_never_had_shows_the_gpus_of_its_last_heartbeat():
    out = io.StringIO()
    render_data("hive_status", {"alias": "gpu1", "state": "unreachable", "capabilities": None,
                                "gpus_reported": [RTX], "gpus_reported_at": 1.0}, out)
    lines = out.getvalue().splitlines()
    assert lines[-2:] == ["gpus (from its heartbeat, as last reported):",
                          "  cuda:0  NVIDIA GeForce RTX 4090 (8.9)  free 20.1 of 24.0 GiB  util 35 %"]
    assert not any("gpus_reported" in line for line in lines)


def test_the_hives_tab_shows_free_of_total_vram_and_utilisation():
    assert COLUMNS[-1] == "gpus"
    two = {"gpus": [RTX, {**RTX, "device": "cuda:1", "memory_free_mb": 1024, "utilization_pct": None}]}
    row = hive_row({"alias": "gpu1", "state": "running", "url": "http://x", "host": "gpu1", "capabilities": two})
    assert row == ("gpu1", "gpu1", "running", "", "http://x", "gpu1", "cuda:0 20.1/24.0 GiB 35 %, cuda:1 1.0/24.0 GiB")
    assert gpus_brief({"gpus": [], "gpu_note": "no GPU"}) == "none" and gpus_brief(None) == ""
    assert gpus_brief({"gpus": [RTX], "gpu_problem": "…"}).endswith("(CPU-only llama.cpp)")
