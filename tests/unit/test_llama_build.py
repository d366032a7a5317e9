"""Which llama.cpp build a machine gets, from what the probe prints (written here as a fake nvidia-smi's
and nvcc's answers would make it), never by compiling."""

from __future__ import annotations

import shlex

import pytest

from shared.llama_build import TOOLKIT_WHEELS, Decision, LlamaBuildError, Probe, decide

BASE = "/home/me/.cache/rbee"

RTX_4090 = "gpu: 0, NVIDIA GeForce RTX 4090, 8.9, 550.54.15\n"
TWO_GPUS = "gpu: 0, NVIDIA GeForce RTX 4090, 8.9, 580.65.06\ngpu: 1, NVIDIA RTX A6000, 8.6, 580.65.06\n"
NVCC = "nvcc: /usr/local/cuda/bin/nvcc\nnvcc-release: 12.4\ncublas: /usr/local/cuda/include/cublas_v2.h\n"


def probe(*lines: str, backend: str = "", cores: int = 16) -> Probe:
    text = f"backend={backend}\nmachine=x86_64\ncores={cores}\n"
    if any(line.startswith(("gpu", "driver")) for line in lines):
        text += "nvidia-smi=yes\n"
    return Probe.parse(text + "".join(lines))


def test_no_driver_builds_for_the_cpu_exactly_as_before():
    decision = decide(probe(), "0.3.36", toolkit_base=BASE)
    assert decision.backend == "cpu" and decision.cmake_args == "" and decision.env == {}
    assert decision.why == "cpu: no nvidia-smi on this machine (no NVIDIA driver); building llama.cpp for the CPU"
    assert decision.cache_key == "0.3.36-cpu" and decision.warning is None


def test_nvidia_smi_without_gpus_is_the_cpu_too():
    decision = decide(Probe.parse("nvidia-smi=yes\ncores=2\n"), "0.3.36", toolkit_base=BASE)
    assert decision.backend == "cpu" and "nvidia-smi lists no GPU" in decision.why


def test_a_gpu_with_nvcc_builds_cuda_for_its_architecture_with_that_nvcc():
    decision = decide(probe(RTX_4090, NVCC), "0.3.36", toolkit_base=BASE)
    assert decision.backend == "cuda" and decision.toolkit == "nvcc"
    assert decision.why == ("cuda: nvidia-smi lists NVIDIA GeForce RTX 4090 (8.9); building llama.cpp with CUDA "
                            "for sm_89 using /usr/local/cuda/bin/nvcc (CUDA 12.4)")
    assert decision.cmake_args == "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89"
    assert decision.env == {"CMAKE_ARGS": decision.cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": "16",
                            "CUDACXX": "/usr/local/cuda/bin/nvcc"}
    assert decision.cache_key == "0.3.36-cuda-sm89"
    # 80 core-minutes for one architecture plus 12 for the CPU part, on 16 cores
    assert decision.estimate == "about 6 minutes on 16 cores"


def test_two_architectures_are_both_built_and_both_name_the_cache():
    decision = decide(probe(TWO_GPUS, NVCC.replace("12.4", "13.0")), "0.3.36", toolkit_base=BASE)
    assert decision.architectures == ["86", "89"]
    assert decision.cmake_args.endswith("-DCMAKE_CUDA_ARCHITECTURES=86;89")
    assert decision.cache_key == "0.3.36-cuda-sm86-sm89"
    assert "for sm_86, sm_89" in decision.why and "RTX A6000 (8.6)" in decision.why
    assert decide(probe(TWO_GPUS, NVCC, cores=2), "0.3.36", toolkit_base=BASE).estimate == \
        "about 86 minutes on 2 cores"  # (2 x 80 + 12) / 2


def test_no_nvcc_takes_the_cuda_13_wheels_where_the_driver_runs_them():
    decision = decide(probe(TWO_GPUS), "0.3.36", toolkit_base=BASE)
    assert decision.backend == "cuda" and decision.toolkit == "wheels"
    assert decision.toolkit_root == f"{BASE}/cuda-toolkit/13.0"
    home = f"{BASE}/cuda-toolkit/13.0/nvidia/cu13"
    assert decision.env["CUDACXX"] == f"{home}/bin/nvcc" and decision.env["CUDAToolkit_ROOT"] == home
    # their libcudart and libcublas are in no system library path: the libraries record where
    assert shlex.split(decision.env["CMAKE_ARGS"]) == [
        "-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=86;89", f"-DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath,{home}/lib"]
    assert decision.toolkit_wheels == list(TOOLKIT_WHEELS)
    assert {w.split("==")[0] for w in TOOLKIT_WHEELS} >= {"nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cublas",
                                                          "nvidia-cuda-cccl"}
    assert "nvidia-* wheels (no nvcc is installed)" in decision.why


def test_an_nvcc_without_cublas_gives_way_to_the_wheels():
    decision = decide(probe(TWO_GPUS, "nvcc: /usr/local/bin/nvcc\nnvcc-release: 13.0\n"), "0.3.36", toolkit_base=BASE)
    assert decision.toolkit == "wheels" and "/usr/local/bin/nvcc has no cuBLAS beside it" in decision.why


def test_a_gpu_with_no_toolkit_obtainable_stays_on_the_cpu_with_a_warning_under_auto():
    decision = decide(probe(RTX_4090), "0.3.36", toolkit_base=BASE)  # driver 550: no CUDA 13 wheels
    assert decision.backend == "cpu" and decision.cache_key == "0.3.36-cpu"
    assert "needs NVIDIA driver 580 or newer, and this one is 550.54.15" in decision.warning
    assert "Install the CUDA toolkit with cuBLAS" in decision.warning


def test_forced_cuda_without_a_toolkit_or_a_gpu_is_a_clear_error():
    with pytest.raises(LlamaBuildError, match="RBEE_LLAMA_BACKEND=cuda and nvidia-smi lists NVIDIA GeForce RTX 4090 "
                                              r"\(8.9\), but no nvcc is installed") as error:
        decide(probe(RTX_4090, backend="cuda"), "0.3.36", toolkit_base=BASE)
    assert error.value.code == "LLAMA_CUDA_NO_TOOLKIT" and "so that `nvcc` is on PATH" in error.value.message
    with pytest.raises(LlamaBuildError, match="no nvidia-smi on this machine.*Install the NVIDIA driver") as error:
        decide(probe(backend="cuda"), "0.3.36", toolkit_base=BASE)
    assert error.value.code == "LLAMA_CUDA_NO_GPU"
    with pytest.raises(LlamaBuildError, match="use cpu, cuda or auto"):
        decide(probe(backend="rocm"), "0.3.36", toolkit_base=BASE)


def test_forced_cpu_overrides_a_gpu():
    decision = decide(probe(RTX_4090, NVCC, backend="CPU"), "0.3.36", toolkit_base=BASE)
    assert decision.backend == "cpu" and decision.why.startswith("cpu: RBEE_LLAMA_BACKEND=cpu")


def test_an_nvcc_newer_than_the_driver_runs_is_not_used():
    nvcc13 = NVCC.replace("12.4", "13.0")
    decision = decide(probe(RTX_4090, nvcc13), "0.3.36", toolkit_base=BASE)  # driver 550 runs CUDA 12
    assert decision.backend == "cpu"
    assert "is CUDA 13.0 and driver 550.54.15 runs CUDA 12 at most" in decision.warning


def test_old_gpus_without_compute_cap_build_for_native_and_never_take_the_wheels():
    old = "gpu-l: GPU 0: Tesla P100-PCIE-16GB (UUID: GPU-abc)\ndriver: 470.82.01\n"
    assert probe(old).gpus[0].name == "Tesla P100-PCIE-16GB" and probe(old).gpus[0].arch is None
    decision = decide(probe(old, NVCC.replace("12.4", "11.4")), "0.3.36", toolkit_base=BASE)
    assert decision.cmake_args.endswith("-DCMAKE_CUDA_ARCHITECTURES=native")
    assert decision.cache_key == "0.3.36-cuda-native"
    assert decide(probe(old), "0.3.36", toolkit_base=BASE).backend == "cpu"
    pascal = "gpu: 0, Tesla P100, 6.0, 590.10\n"  # a new driver, an old GPU: CUDA 13 cannot build for it
    assert "7.5 and newer only" in decide(probe(pascal), "0.3.36", toolkit_base=BASE).warning


def test_the_shell_form_round_trips_through_a_shell_parser():
    decision = decide(probe(TWO_GPUS, NVCC.replace("12.4", "13.0")), "0.3.36", toolkit_base=BASE)
    values = dict(line.split("=", 1) for line in shlex.split(decision.shell(), posix=True))
    assert values["LLAMA_BACKEND"] == "cuda" and values["LLAMA_CACHE_KEY"] == "0.3.36-cuda-sm86-sm89"
    assert values["LLAMA_CMAKE_ARGS"] == "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=86;89"
    assert values["LLAMA_WHY"] == decision.why
    assert isinstance(Decision.to_dict(decision), dict)
