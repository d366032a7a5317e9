"""How the hive launches a worker on a device: the arguments and environment a planner's choice becomes."""

from __future__ import annotations

import pytest

from hive.workers import WorkerLaunch

BASE = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_a_cpu_worker_gets_its_cache_settings_and_an_untouched_environment():
    launch = WorkerLaunch("cpu", "q8_0", "auto")
    assert launch.args() == ["--device", "cpu", "--kv-cache-type", "q8_0", "--flash-attn", "auto"]
    assert launch.env(BASE) is None  # inherited as it is: nothing to pin
    assert (launch.offloaded_layers, launch.gpus) == (0, ())


def test_an_unpinned_gpu_worker_offloads_every_layer_of_the_gpu_it_names():
    launch = WorkerLaunch("cuda:2")
    assert launch.args() == ["--device", "cuda:2", "--kv-cache-type", "f16", "--flash-attn", "auto"]
    assert launch.env(BASE) is None
    assert (launch.offloaded_layers, launch.gpus) == (-1, (2,))


def test_a_pinned_worker_sees_its_gpu_as_cuda_0_in_nvidia_smis_order():
    launch = WorkerLaunch("cuda:2", gpu_layers=20, visible_gpus=(2,))
    assert launch.args() == ["--device", "cuda:0", "--kv-cache-type", "f16", "--flash-attn", "auto",
                             "--gpu-layers", "20"]
    assert launch.env(BASE) == {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert (launch.offloaded_layers, launch.gpus) == (20, (2,))


def test_a_split_worker_gets_a_share_per_pinned_gpu():
    launch = WorkerLaunch("cuda:1", "q4_0", "on", tensor_split=(0.4, 0.6), visible_gpus=(1, 3))
    assert launch.args()[-2:] == ["--tensor-split", "0.4,0.6"]
    assert launch.args()[:2] == ["--device", "cuda:0"]
    assert launch.env({})["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert launch.gpus == (1, 3)
    assert WorkerLaunch("cuda:0", tensor_split=(1 / 3, 2 / 3)).args()[-1] == "0.333333,0.666667"


@pytest.mark.parametrize(("fields", "problem"), [
    (dict(device="cpu", gpu_layers=4), "a CPU worker offloads nothing"),
    (dict(device="cpu", visible_gpus=(0,)), "a CPU worker offloads nothing"),
    (dict(device="cpu", tensor_split=(1.0, 1.0)), "a CPU worker offloads nothing"),
    (dict(device="cuda:0", gpu_layers=-1), "gpu_layers must be None (every layer) or 0 or more"),
    (dict(device="cuda:0", tensor_split=(1.0, 1.0, 1.0), visible_gpus=(0, 1)), "needs one share per GPU"),
])
def test_impossible_launches_are_refused(fields, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        WorkerLaunch(**fields)


def test_zero_gpu_layers_on_the_cpu_is_no_offload():
    assert WorkerLaunch("cpu", gpu_layers=0).args() == ["--device", "cpu", "--kv-cache-type", "f16",
                                                         "--flash-attn", "auto"]
