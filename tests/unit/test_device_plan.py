"""hive/device_plan.py: where a worker goes, against numbers worked out by hand from the models' layouts.

Models: the built-in SmolLM2-135M (Q4_1 layers, Q8_0 token_embd tied to the output) and header-only
GGUFs with the layouts of Llama-3.1-8B and Qwen2.5-32B Q4_K_M (tests/support/gguf_headers.py).

What llama.cpp places (hive/memory_estimate.py): with n_gpu_layers = g of n_layer + 1, the output layer
goes to a GPU first, then the last g - 1 repeating layers; token_embd stays in RAM. A GPU holds its
layers' weights and KV, its compute buffer (the output layer's GPU: n_ubatch x (n_embd + n_vocab) f32
logits + attention scratch n_ubatch x ctx x 6; a layers-only GPU: n_ubatch x per-token activations +
the same scratch) and CUDA's 457 MiB. A GPU's room: free less max(5 % of total, 256 MiB).
"""

from __future__ import annotations

import pytest

from hive.device_plan import GpuState, NoFit, NoGpuOffload, _shares, gpu_margin, plan_worker
from hive.errors import DeviceNotFound, HiveError
from hive.gguf import read_gguf
from hive.memory_estimate import (
    CUDA_HOST_BYTES,
    CUDA_OVERHEAD_BYTES,
    MIB,
    RUNTIME_BYTES,
    VOCAB_BYTES_PER_TOKEN,
    estimate_devices,
    estimate_worker_memory,
)
from shared.builtin_model import builtin_model_path
from tests.support.gguf_headers import LLAMA_31_8B, QWEN25_32B, write_header_gguf

GIB = 1 << 30
CUDA = 457 * MIB
assert CUDA_OVERHEAD_BYTES == CUDA and CUDA_HOST_BYTES == 256 * MIB


def gpu(index: int, total_gib: float, free_gib: float, name: str = "GPU") -> GpuState:
    return GpuState(index, name, int(total_gib * GIB), int(free_gib * GIB), "8.9")


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    return read_gguf(write_header_gguf(tmp_path_factory.mktemp("gguf") / LLAMA_31_8B.name, LLAMA_31_8B))


@pytest.fixture(scope="module")
def qwen32b(tmp_path_factory):
    return read_gguf(write_header_gguf(tmp_path_factory.mktemp("gguf") / QWEN25_32B.name, QWEN25_32B))


# -- the layouts ---------------------------------------------------------------------------------------

# Llama-3.1-8B Q4_K_M, rows of 4096 values: Q4_K 4096/256 x 144 = 2,304 bytes a row, Q6_K 16 x 210 = 3,360.
L8_Q4_LAYER = (2 * 4096 * 4            # attn_norm, ffn_norm (f32)
               + 2 * 4096 * 2304       # attn_q, attn_output: 4096 rows
               + 1024 * 2304           # attn_k: 1024 rows (8 kv heads x 128)
               + 1024 * 2304           # attn_v (Q4_K)
               + 2 * 14336 * 2304      # ffn_gate, ffn_up: 14336 rows
               + 4096 * 56 * 144)      # ffn_down: 4096 rows of 14336 (56 blocks) (Q4_K)
L8_Q6_LAYER = L8_Q4_LAYER + 1024 * (3360 - 2304) + 4096 * 56 * (210 - 144)  # attn_v, ffn_down in Q6_K
L8_EMBD = 128256 * 2304  # token_embd Q4_K
L8_OUTPUT = 128256 * 3360 + 4096 * 4  # output.weight Q6_K, output_norm
# Q4_K_M's use_more_bits(i, 32): i < 4, i >= 28, (i - 4) % 3 == 2 -> 16 of the 32 layers in Q6_K
L8_Q6 = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}


def test_llama_8b_header_weighs_what_the_real_file_does(llama8b):
    assert (L8_Q4_LAYER, L8_Q6_LAYER) == (122_716_160, 138_936_320)
    total = 16 * L8_Q4_LAYER + 16 * L8_Q6_LAYER + L8_EMBD + L8_OUTPUT + 64 * 4  # + rope_freqs (f32)
    assert llama8b.tensor_data_bytes == total == 4_912_898_304  # 4.58 GiB, as Meta-Llama-3.1-8B-Instruct-Q4_K_M
    layout = estimate_devices(llama8b, ctx_size=2048, slots=4).weights
    assert [layout.layers[i] for i in range(32)] == [L8_Q6_LAYER if i in L8_Q6 else L8_Q4_LAYER for i in range(32)]
    assert (layout.input, layout.output, layout.other, layout.tied_output) == (L8_EMBD, L8_OUTPUT, 256, False)
    # llama.cpp's own log for this file, all layers offloaded: "CUDA0 model buffer size = 4403.49 MiB"
    assert (sum(layout.layers) + layout.output) / MIB == pytest.approx(4403.49, abs=0.01)


def test_qwen_32b_header_weighs_what_the_real_file_does(qwen32b):
    # rows of 5120: Q4_K 20 x 144 = 2,880 bytes, Q6_K 20 x 210 = 4,200; ffn_down rows of 27648: 108 blocks
    q4 = 2 * 5120 * 4 + (5120 + 1024 + 1024) * 4 + 2 * 5120 * 2880 + 2 * 1024 * 2880 + 2 * 27648 * 2880 \
        + 5120 * 108 * 144  # norms, q/k/v biases, q/o, k/v, gate/up, down
    q6 = q4 + 1024 * (4200 - 2880) + 5120 * 108 * (210 - 144)
    assert (q4, q6) == (274_337_792, 312_184_832)
    total = 32 * q4 + 32 * q6 + 152064 * 2880 + 152064 * 4200 + 5120 * 4
    assert qwen32b.tensor_data_bytes == total == 19_845_357_568  # 18.48 GiB, as Qwen2.5-32B-Instruct-Q4_K_M


# -- the built-in model ----------------------------------------------------------------------------------

# SmolLM2-135M: 30 layers of 576, n_ff 1536, 9 heads, 3 kv heads of 64, vocabulary 49,152, tied output.
B_LAYER = 2 * 576 * 4 + 3 * 1536 * 360 + 2 * 192 * 360 + 2 * 576 * 360  # Q4_1 rows of 576: 18 x 20 = 360
B_EMBD = 49152 * 18 * 34  # Q8_0
B_KV = 2048 * 4 * 384 * 2  # per layer: ctx 2048 x 4 slots x (3 kv heads x 64) x K and V x f16
B_OUTPUT_COMPUTE = 512 * (576 + 49152) * 4 + 512 * 2048 * 6  # a batch's logits + attention scratch
B_RUNTIME = RUNTIME_BYTES + 49152 * VOCAB_BYTES_PER_TOKEN + 2 * 4 * 49152 * 4  # + logits read back per slot


def test_builtin_model_all_on_the_gpu_with_the_most_room():
    plan = plan_worker(builtin_model_path(), gpus=[gpu(0, 4, 1.0), gpu(1, 8, 7.5)], ram_free_bytes=8 * GIB,
                       ctx_size=2048, slots=4)
    assert B_LAYER == 2_216_448
    # 30 x (layer + KV) + output (output_norm + token_embd again: tied) + compute + CUDA
    gpu_need = 30 * (B_LAYER + B_KV) + (576 * 4 + B_EMBD) + B_OUTPUT_COMPUTE + CUDA
    # token_embd + input compute (a batch's embeddings twice, f32, and the f16 mask) + runtime + CUDA's host side
    ram_need = B_EMBD + 512 * (2 * 576 * 4 + 2048 * 2) + B_RUNTIME + 256 * MIB
    assert (gpu_need, ram_need) == (872_654_080, 389_349_376)
    assert (plan.kind, plan.device, plan.gpus, plan.cuda_visible_devices) == ("gpu", "cuda:0", (1,), "1")
    assert (plan.gpu_layers, plan.n_layer, plan.tensor_split) == (31, 30, ())
    assert plan.per_device == {"cuda:1": gpu_need, "cpu": ram_need}
    assert plan.describe() == "All 31 layers on cuda:1: 0.8 of 8.0 GiB"
    wire = plan.to_dict()
    assert wire["needs_mb"] == {"cpu": 371.3, "cuda:1": 832.2} and wire["gpus"] == [1]
    assert wire["estimate"]["total_mb"] == round(plan.estimate.total / MIB, 1)


def test_builtin_model_on_the_cpu_is_the_cpu_estimate():
    plan = plan_worker(builtin_model_path(), gpus=[], ram_free_bytes=8 * GIB, ctx_size=2048, slots=4)
    # weights (the whole tensor data) + KV 30 layers + touched compute (a batch through a layer + scratch +
    # logits) + runtime: the figure tests/integration/test_memory_estimate.py holds to a real worker's RSS
    compute = 512 * ((3 * 576 + 3 * 1536) * 4 + 1536 * 2) + 512 * 2048 * 6 + 2 * 4 * 49152 * 4
    total = 96_576_768 + 30 * B_KV + compute + RUNTIME_BYTES + 49152 * VOCAB_BYTES_PER_TOKEN
    assert total == 392_537_344 == estimate_worker_memory(builtin_model_path(), ctx_size=2048, slots=4).total
    assert (plan.kind, plan.device, plan.gpus, plan.gpu_layers, plan.cuda_visible_devices) == ("cpu", "cpu", (), 0, "")
    assert plan.per_device == {"cpu": total}
    assert plan.describe() == "On the CPU: 374 MB of RAM (no GPU)"


def test_a_cpu_only_build_plans_the_cpu_and_refuses_a_gpu():
    gpus = [gpu(0, 24, 23)]
    plan = plan_worker(builtin_model_path(), gpus=gpus, ram_free_bytes=8 * GIB, ctx_size=2048, slots=4,
                       can_offload=False)
    assert plan.kind == "cpu" and plan.describe().endswith("(this hive's llama.cpp cannot offload to a GPU)")
    with pytest.raises(NoGpuOffload, match="built for the CPU only.*--device cpu"):
        plan_worker(builtin_model_path(), gpus=gpus, ram_free_bytes=8 * GIB, ctx_size=2048, slots=4,
                    can_offload=False, device="cuda:0")


def test_device_cpu_and_cuda_n_are_obeyed():
    gpus = [gpu(0, 24, 23), gpu(1, 8, 7.5)]
    cpu = plan_worker(builtin_model_path(), gpus=gpus, ram_free_bytes=8 * GIB, ctx_size=2048, slots=4, device="cpu")
    assert cpu.kind == "cpu" and cpu.describe() == "On the CPU: 374 MB of RAM (asked for)"
    on1 = plan_worker(builtin_model_path(), gpus=gpus, ram_free_bytes=8 * GIB, ctx_size=2048, slots=4,
                      device="cuda:1")
    assert (on1.kind, on1.device, on1.gpus) == ("gpu", "cuda:0", (1,))  # inside the worker its GPU is cuda:0
    with pytest.raises(DeviceNotFound, match=r"no cuda:2 on this hive \(GPUs here: cuda:0, cuda:1\)"):
        plan_worker(builtin_model_path(), gpus=gpus, ram_free_bytes=8 * GIB, ctx_size=2048, slots=4, device="cuda:2")


def test_a_gpu_without_room_for_even_the_output_layer_leaves_the_cpu():
    # room: 0.75 GiB free - 256 MiB margin = 512 MiB; the output layer alone (output_norm, token_embd
    # again, the logits' compute buffer, CUDA) needs 589 MiB
    plan = plan_worker(builtin_model_path(), gpus=[gpu(0, 2, 0.75)], ram_free_bytes=8 * GIB, ctx_size=2048, slots=4)
    alone = 576 * 4 + B_EMBD + B_OUTPUT_COMPUTE + CUDA
    assert alone == 617_416_960 > 512 * MIB
    assert plan.kind == "cpu"
    assert plan.reason == "no GPU has room: cuda:0 has 0.5 GiB after its margin, the output layer alone needs 0.6 GiB"


# -- Llama-3.1-8B ----------------------------------------------------------------------------------------

L8_KV_2048 = 2048 * 4 * (8 * 128 * 2) * 2  # per layer, ctx 2048 x 4 slots: 32 MiB
L8_KV_8192 = 4 * L8_KV_2048  # 128 MiB
L8_OUTPUT_COMPUTE_2048 = 512 * (4096 + 128256) * 4 + 512 * 2048 * 6  # 264.5 MiB
L8_OUTPUT_COMPUTE_8192 = 512 * (4096 + 128256) * 4 + 512 * 8192 * 6  # 282.5 MiB
L8_RUNTIME = RUNTIME_BYTES + 128256 * VOCAB_BYTES_PER_TOKEN + 2 * 4 * 128256 * 4
L8_RAM_OFFLOADED = L8_EMBD + 256 + L8_RUNTIME + 256 * MIB  # token_embd, rope_freqs, runtime, CUDA's host side


def test_llama_8b_all_on_a_24_gib_gpu(llama8b):
    plan = plan_worker(llama8b, gpus=[gpu(0, 24, 23.5, "RTX 4090")], ram_free_bytes=32 * GIB, ctx_size=2048,
                       slots=4)
    # weights 4403.5 MiB + KV 32 x 32 MiB + compute 264.5 MiB + CUDA 457 MiB
    need = 16 * L8_Q4_LAYER + 16 * L8_Q6_LAYER + L8_OUTPUT + 32 * L8_KV_2048 + L8_OUTPUT_COMPUTE_2048 + CUDA
    ram = L8_RAM_OFFLOADED + 512 * (2 * 4096 * 4 + 2048 * 2)
    assert (need, ram) == (6_447_685_632, 700_197_120)
    assert plan.per_device == {"cuda:0": need, "cpu": ram} and plan.gpu_layers == 33
    assert plan.describe() == "All 33 layers on cuda:0: 6.0 of 24.0 GiB"


def test_llama_8b_partial_on_an_8_gib_gpu(llama8b):
    """ctx 8192 x 4 slots: 4 GiB of KV, 9.0 GiB in all, on a GPU with 7.1 GiB of room."""
    g = gpu(0, 8, 7.5, "RTX 4060")
    room = int(7.5 * GIB) - int(8 * GIB * 0.05)  # 5 % of 8 GiB > 256 MiB
    assert room == 7_623_566_951 and gpu_margin(g) == 429_496_729
    plan = plan_worker(llama8b, gpus=[g], ram_free_bytes=32 * GIB, ctx_size=8192, slots=4)
    # on the GPU whatever its layers: the output layer, its compute (the logits' buffer outweighs a layer's
    # 512 x 249,856 + scratch = 146 MiB) and CUDA: 1,206,378,496 bytes, leaving 6,417,188,455 for layers.
    fixed = L8_OUTPUT + L8_OUTPUT_COMPUTE_8192 + CUDA
    assert fixed == 1_206_378_496
    # from the top: 31..27 Q6_K, 26, 25 Q4_K, 24 Q6_K, ... layers 8..31 (8 Q4_K + 16 Q6_K ... counted below)
    # take 6,344,835,072 bytes; one more (layer 7) would make 6,601,768,960 > 6,417,188,455.
    top24 = sum((L8_Q6_LAYER if i in L8_Q6 else L8_Q4_LAYER) + L8_KV_8192 for i in range(8, 32))
    assert top24 == 6_344_835_072 and top24 + L8_Q4_LAYER + L8_KV_8192 > room - fixed
    # RAM: token_embd etc., layers 0..7 (0-3 and 6 in Q6_K) and their KV, input compute, a layer's compute
    ram = L8_RAM_OFFLOADED + 5 * L8_Q6_LAYER + 3 * L8_Q4_LAYER + 8 * L8_KV_8192 \
        + 512 * (2 * 4096 * 4 + 8192 * 2) + 512 * ((3 * 4096 + 3 * 14336) * 4 + 14336 * 2) + 512 * 8192 * 6
    assert ram == 2_996_152_576
    assert (plan.kind, plan.gpu_layers, plan.per_device) == ("partial", 25, {"cuda:0": fixed + top24, "cpu": ram})
    assert plan.describe() == ("Offloading 24 of 32 layers and the output layer to cuda:0: 7.0 of 8.0 GiB; the "
                               "other 8 in RAM: 2.8 GiB (all 33 layers would need 9.0 GiB, 7.1 GiB is free after "
                               "the margin)")


def test_llama_8b_split_over_two_8_gib_gpus(llama8b):
    plan = plan_worker(llama8b, gpus=[gpu(0, 8, 7.5), gpu(1, 8, 7.5)], ram_free_bytes=32 * GIB, ctx_size=8192,
                       slots=4)
    layer_compute = 512 * ((3 * 4096 + 3 * 14336) * 4 + 14336 * 2) + 512 * 8192 * 6
    # room for layers: cuda:0 7,623,566,951 - CUDA - a layer's compute = 6,991,275,623; cuda:1 (the output's)
    # 7,623,566,951 - 1,206,378,496 = 6,417,188,455: 52.1 % of the 8,481,406,976 bytes of layers and KV go to
    # cuda:0 = 4,422 MB: 17 layers (0..16: 8 in Q6_K) make 4,498 MB, the nearest.
    first17 = sum((L8_Q6_LAYER if i in L8_Q6 else L8_Q4_LAYER) + L8_KV_8192 for i in range(17))
    last15 = sum((L8_Q6_LAYER if i in L8_Q6 else L8_Q4_LAYER) + L8_KV_8192 for i in range(17, 32))
    assert (first17, last15) == (4_497_637_376, 3_983_769_600)
    need0 = first17 + layer_compute + CUDA
    need1 = last15 + L8_OUTPUT + L8_OUTPUT_COMPUTE_8192 + CUDA
    assert (plan.kind, plan.device, plan.gpus, plan.gpu_layers, plan.layers_per_gpu) == \
        ("split", "cuda:0", (0, 1), 33, (17, 15))
    assert plan.tensor_split == (0.5, 0.5)  # llama.cpp: layer il to cuda:0 while il / 33 < 16.5 / 33
    assert plan.per_device == {"cuda:0": need0, "cuda:1": need1, "cpu": L8_RAM_OFFLOADED + 512 * (2 * 4096 * 4 + 8192 * 2)}
    assert plan.describe() == ("Split over cuda:0 and cuda:1 (17 and 15 layers, the output layer on the last): "
                               "4.8 of 8.0 GiB and 4.8 of 8.0 GiB")


def test_llama_8b_q8_0_kv_cache_fits_where_f16_does_not(llama8b):
    g = [gpu(0, 8, 7.7)]  # room: 8,267,812,044 free - 429,496,729 = 7,838,315,315
    assert plan_worker(llama8b, gpus=g, ram_free_bytes=32 * GIB, ctx_size=8192, slots=4).kind == "partial"
    # KV 4 GiB x 34/64 = 2,281,701,376: + weights 4,617,396,224 + compute 296,222,720 + CUDA 479,199,232
    plan = plan_worker(llama8b, gpus=g, ram_free_bytes=32 * GIB, ctx_size=8192, slots=4, cache_type="q8_0")
    need = 16 * L8_Q4_LAYER + 16 * L8_Q6_LAYER + L8_OUTPUT + 32 * L8_KV_8192 * 34 // 64 + L8_OUTPUT_COMPUTE_8192 + CUDA
    assert (plan.kind, plan.per_device["cuda:0"]) == ("gpu", need) and need == 7_674_519_552


def test_a_quantized_kv_cache_needs_flash_attention(llama8b):
    with pytest.raises(HiveError, match="q8_0 KV cache needs flash attention in llama.cpp"):
        plan_worker(llama8b, gpus=[], ram_free_bytes=None, ctx_size=2048, slots=4, cache_type="q8_0", flash_attn="off")


def test_flash_attention_off_reserves_the_scores(llama8b):
    """Without it, a layer's compute holds every head's f32 scores: 512 x 8192 x 32 x 4 = 512 MiB."""
    on = estimate_devices(llama8b, ctx_size=8192, slots=1)
    off = estimate_devices(llama8b, ctx_size=8192, slots=1, flash_attn="off")
    assert off.gpu_layer_compute == 512 * 8192 * 32 * 4 + 3 * 512 * 4096 * 4 + 512 * 8192 * 6
    # llama.cpp logs "CUDA0 compute buffer size = 560.00 MiB" for this model at n_ctx 8192 without it
    assert off.gpu_layer_compute / MIB == 560.0
    assert on.gpu_output_compute == off.gpu_output_compute == L8_OUTPUT_COMPUTE_8192


# -- Qwen2.5-32B -----------------------------------------------------------------------------------------

Q_KV = 2048 * 4 * (8 * 128 * 2) * 2  # 32 MiB a layer
Q_OUTPUT = 152064 * 4200 + 5120 * 4
Q_OUTPUT_COMPUTE = 512 * (5120 + 152064) * 4 + 512 * 2048 * 6
Q_WHOLE = 19_845_357_568 - 152064 * 2880 - Q_OUTPUT + Q_OUTPUT + 64 * Q_KV + Q_OUTPUT_COMPUTE + CUDA


def test_qwen_32b_whole_on_24_gib_only_with_the_margin_kept(qwen32b):
    assert Q_WHOLE == 22_362_300_416  # 20.8 GiB
    plan = plan_worker(qwen32b, gpus=[gpu(0, 24, 23.5)], ram_free_bytes=32 * GIB, ctx_size=2048, slots=4)
    assert plan.kind == "gpu" and plan.per_device["cuda:0"] == Q_WHOLE
    assert plan.describe() == "All 65 layers on cuda:0: 20.8 of 24.0 GiB"
    # 22 GiB free - 1.2 GiB margin = 22,333,829,940 bytes: 28 MB short, so layers stay in RAM
    tight = plan_worker(qwen32b, gpus=[gpu(0, 24, 22)], ram_free_bytes=32 * GIB, ctx_size=2048, slots=4)
    assert tight.kind == "partial" and tight.gpu_layers == 64


def test_qwen_32b_on_80_gib_at_32k_context(qwen32b):
    plan = plan_worker(qwen32b, gpus=[gpu(0, 80, 79, "A100")], ram_free_bytes=64 * GIB, ctx_size=32768, slots=4)
    kv = 64 * 32768 * 4 * 2048 * 2  # 32 GiB
    compute = 512 * (5120 + 152064) * 4 + 512 * 32768 * 6
    assert plan.per_device["cuda:0"] == Q_WHOLE - 64 * Q_KV - Q_OUTPUT_COMPUTE + kv + compute
    assert plan.describe() == "All 65 layers on cuda:0: 50.9 of 80.0 GiB"


def test_qwen_32b_split_over_16_and_8_gib(qwen32b):
    """Neither holds it; together they do. The 16 GiB GPU has the most room: it goes last, with the output."""
    plan = plan_worker(qwen32b, gpus=[gpu(0, 16, 15.5), gpu(1, 8, 7.5)], ram_free_bytes=32 * GIB, ctx_size=2048,
                       slots=4)
    assert (plan.kind, plan.gpus, plan.device, plan.cuda_visible_devices) == ("split", (1, 0), "cuda:0", "1,0")
    # cuda:1's room for layers: 7,623,566,951 - CUDA - a layer's compute (512 x 448,512 + scratch) =
    # 6,908,438,119; by the rooms' proportion it would take 22 layers (0..21, 12 in Q6_K: 7,227,793,408), too
    # many, so it is filled: 20 layers (0..19: 12 in Q6_K, 8 in Q4_K) = 6,612,008,960; cuda:0 the other 44.
    q4, q6 = 274_337_792 + Q_KV, 312_184_832 + Q_KV
    layer_compute = 512 * ((3 * 5120 + 3 * 27648) * 4 + 27648 * 2) + 512 * 2048 * 6
    need1 = 12 * q6 + 8 * q4 + layer_compute + CUDA
    need0 = 20 * q6 + 24 * q4 + Q_OUTPUT + Q_OUTPUT_COMPUTE + CUDA
    assert plan.layers_per_gpu == (20, 44) and plan.tensor_split == (0.3, 0.7)  # 19.5 / 65 = 0.3
    assert plan.per_device["cuda:1"] == need1 == 7_327_137_792 and plan.per_device["cuda:0"] == need0
    assert need0 <= plan.room["cuda:0"] == int(15.5 * GIB) - int(16 * GIB * 0.05)


def test_nothing_fits_names_every_device_and_what_to_do(qwen32b):
    with pytest.raises(NoFit) as caught:
        plan_worker(qwen32b, gpus=[gpu(0, 8, 7.5, "RTX 4060")], ram_free_bytes=8 * GIB, ctx_size=2048, slots=4)
    err = caught.value
    assert (err.code, err.status) == ("NO_FIT", 409)
    assert str(err) == (
        "Qwen2.5-32B-Instruct-Q4_K_M.gguf does not fit this hive at 2048 tokens × 4 slots (f16 KV cache): "
        "cuda:0 (RTX 4060) has 7.5 of 8.0 GiB free, 7.1 after its margin; all 65 layers need 20.8 GiB there, "
        "the output layer alone 1.3 GiB; RAM: 8.0 GiB available; with 18 layers and the output layer on cuda:0 "
        "it needs 14.9 GiB, on the CPU alone 20.8 GiB. Try a smaller --ctx-size or fewer slots, --kv-cache-type "
        "q8_0 (half the KV cache), stopping idle workers, or another hive.")
    with pytest.raises(NoFit, match="RAM: 4.0 GiB available, the CPU needs 20.8 GiB"):
        plan_worker(qwen32b, gpus=[], ram_free_bytes=4 * GIB, ctx_size=2048, slots=4)
    with pytest.raises(NoFit, match="cuda:0 .* all 65 layers need 20.8 GiB there"):  # a GPU asked for: no CPU
        plan_worker(qwen32b, gpus=[gpu(0, 2, 1)], ram_free_bytes=64 * GIB, ctx_size=2048, slots=4, device="cuda:0")


def test_the_hive_budget_caps_a_gpu(llama8b):
    plan = plan_worker(llama8b, gpus=[gpu(0, 24, 23.5)], ram_free_bytes=32 * GIB, ctx_size=2048, slots=4,
                       vram_budget_bytes=4 * GIB)
    assert plan.kind == "partial" and plan.per_device["cuda:0"] <= 4 * GIB < 6_447_685_632


@pytest.mark.parametrize("counts", [(20, 44), (1, 63), (63, 1), (16, 17, 17, 14), (16, 16, 16, 16), (32, 32)])
def test_the_tensor_split_gives_llama_cpp_exactly_these_layers(counts, qwen32b):
    est = estimate_devices(qwen32b, ctx_size=512, slots=1)
    placed = est.place(65, _shares(list(counts), 65))
    assert placed.layers_on == counts and placed.output_on == len(counts) - 1
