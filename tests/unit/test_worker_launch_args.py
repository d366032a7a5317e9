"""The worker's launch arguments for the KV cache, flash attention and GPU offload, checked before anything
loads: what llama.cpp would refuse (or do silently wrong) is refused here with what to do instead."""

from __future__ import annotations

import pytest

from shared.builtin_model import builtin_model_path
from shared.kv_cache import kv_cache_problem
from worker.errors import WorkerStartError
from worker.main import build_config, parse_args, parse_tensor_split


def config(*extra: str):
    return build_config(parse_args(["--worker-id", "w1", "--model", str(builtin_model_path()), *extra]))


def refusal(*extra: str) -> str:
    with pytest.raises(WorkerStartError) as err:
        config(*extra)
    return err.value.message


def test_defaults_are_llama_cpps_f16_cache_auto_flash_attention_and_no_offload_on_cpu():
    cfg = config()
    assert (cfg.kv_cache_type, cfg.flash_attn, cfg.device) == ("f16", "auto", "cpu")
    assert cfg.gpu_layers is None and cfg.n_gpu_layers == 0 and cfg.tensor_split == ()


@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("fa", ["auto", "on"])
def test_every_cache_type_goes_with_flash_attention(kv, fa):
    cfg = config("--kv-cache-type", kv, "--flash-attn", fa)
    assert (cfg.kv_cache_type, cfg.flash_attn) == (kv, fa)


def test_f16_goes_without_flash_attention():
    assert config("--flash-attn", "off").flash_attn == "off"


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_a_quantized_cache_without_flash_attention_is_refused_saying_what_to_do(kv):
    message = refusal("--kv-cache-type", kv, "--flash-attn", "off")
    assert f"{kv} KV cache needs flash attention" in message
    assert "--flash-attn auto or on" in message and "--kv-cache-type f16" in message


def test_unknown_cache_types_and_modes_are_argparse_errors():
    for argv in (["--kv-cache-type", "q5_1"], ["--flash-attn", "yes"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--worker-id", "w1", "--model", "m.gguf", *argv])
        assert exit_.value.code == 2
    assert kv_cache_problem("bf16", "auto") == "the KV cache type must be one of f16, q8_0, q4_0, not 'bf16'"
    assert kv_cache_problem("f16", "maybe") == "flash attention must be one of auto, on, off, not 'maybe'"


def test_offload_flags_need_a_gpu_device():
    assert "--gpu-layers needs --device cuda:N" in refusal("--gpu-layers", "10")
    assert "--tensor-split needs --device cuda:N" in refusal("--tensor-split", "1,1")
    assert config("--gpu-layers", "0").n_gpu_layers == 0  # nothing offloaded: what the CPU does anyway


def test_negative_gpu_layers_are_refused():
    assert "--gpu-layers must be 0 or more, not -1" in refusal("--gpu-layers", "-1")


def test_a_cuda_device_on_a_build_without_gpu_offload_is_refused_with_the_fix():
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build offloads to a GPU")
    message = refusal("--device", "cuda:0", "--gpu-layers", "12", "--tensor-split", "3,1")
    assert "no GPU support" in message and "GGML_CUDA=on" in message


@pytest.mark.parametrize(("text", "shares"), [("3,1", (3.0, 1.0)), ("1", (1.0,)), ("0.5, 0.25,0.25", (0.5, 0.25, 0.25)),
                                              ("0,1", (0.0, 1.0))])
def test_tensor_split_reads_one_share_per_gpu(text, shares):
    assert parse_tensor_split(text) == shares


@pytest.mark.parametrize("text", ["", "3;1", "a,b", "1,,1", "-1,2", "0,0", "nan,1", "inf,1"])
def test_tensor_split_refuses_what_is_no_list_of_shares(text):
    with pytest.raises(WorkerStartError) as err:
        parse_tensor_split(text)
    assert "--tensor-split" in err.value.message and repr(text) in err.value.message


@pytest.mark.parametrize(("pinned", "device", "shown"), [
    (None, "cuda:1", "cuda:1"), ("2", "cuda:0", "cuda:2"), ("1,3", "cuda:1", "cuda:3"), ("", "cuda:0", "cuda:0"),
    ("GPU-5d1c", "cuda:0", "cuda:0"), ("2", "cpu", "cpu")])
def test_a_pinned_worker_reports_the_gpu_as_the_machine_numbers_it(monkeypatch, pinned, device, shown):
    from worker.main import machine_device

    if pinned is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", pinned)
    assert machine_device(device) == shown


def test_json_strings_in_a_schema_grammar_refuse_raw_control_characters():
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from worker.engine import LOOSE_JSON_CHAR, STRICT_JSON_CHAR, strict_json_strings

    raw = json_schema_to_gbnf('{"type": "object", "properties": {"name": {"type": "string"}}}')
    assert LOOSE_JSON_CHAR in raw or STRICT_JSON_CHAR in raw  # the converter still writes the rule this fixes
    fixed = strict_json_strings(raw)
    assert STRICT_JSON_CHAR in fixed and LOOSE_JSON_CHAR + "\n" not in fixed and LOOSE_JSON_CHAR + " " not in fixed
