import dataclasses

import pytest

from shared.errors import InvalidRequest, UnknownOperation
from shared.operations import (
    HIVE_OPERATIONS,
    OPERATIONS,
    Infer,
    ModelDownload,
    WorkerSpawn,
    parse_operation,
)

SPEC_OPERATIONS = {
    "status", "ssh_test", "hive_install", "hive_uninstall", "hive_start", "hive_stop", "hive_list",
    "hive_get", "hive_status", "hive_refresh_capabilities", "hive_import_ssh", "worker_spawn",
    "worker_list", "worker_get", "worker_delete", "model_download", "model_list", "model_get",
    "model_delete", "infer", "embed", "worker_drain", "hive_drain", "hive_upgrade",
    "model_push", "model_copy", "model_verify", "model_adopt", "model_digest",
}

# One complete example of every operation, every field set.
FULL = {
    "status": {},
    "ssh_test": {"alias": "gpu1"},
    "hive_install": {"alias": "gpu1"},
    "hive_uninstall": {"alias": "gpu1"},
    "hive_start": {"alias": "gpu1"},
    "hive_stop": {"alias": "gpu1"},
    "hive_list": {},
    "hive_get": {"alias": "gpu1"},
    "hive_status": {"alias": "gpu1"},
    "hive_refresh_capabilities": {"alias": "gpu1"},
    "hive_import_ssh": {"ssh_config_path": "/tmp/ssh_config", "default_hive_port": 7835},
    "worker_spawn": {"hive_id": "gpu1", "model": "smollm2-135m", "device": "cuda:1", "embedding": True,
                     "kv_cache_type": "q8_0", "flash_attn": "on"},
    "embed": {"model": "smollm2-135m", "input": ["one", "two"], "hive_id": "gpu1"},
    "worker_list": {"hive_id": "gpu1"},
    "worker_get": {"hive_id": "gpu1", "id": "worker-1"},
    "worker_delete": {"hive_id": "gpu1", "id": "worker-1"},
    "worker_drain": {"id": "worker-1", "deadline_s": 30.0},
    "hive_drain": {"alias": "gpu1", "deadline_s": 0.0},
    "hive_upgrade": {"alias": "gpu1", "all": False, "deadline_s": 30.0},
    "model_download": {"hive_id": "gpu1", "model": "hf:org/repo:file.gguf", "token": "hf_notreal", "alias": "mine"},
    "model_push": {"path": "/m/x.gguf", "hive_id": "gpu1", "all": False, "alias": "x", "copy": True,
                   "bwlimit_mb_s": 50.0},
    "model_copy": {"model": "x", "from_hive": "gpu1", "to_hive": "gpu2", "bwlimit_mb_s": 10.0},
    "model_verify": {"hive_id": "gpu1", "id": "x"},
    "model_digest": {"hive_id": "gpu1", "file": "mx-0123456789abcdef.part"},
    "model_adopt": {"hive_id": "gpu1", "file": "mx-0123456789abcdef.part", "model": "file:/m/x.gguf", "size": 10,
                    "sha256": "ab" * 32, "alias": "x", "origin": "pushed from laptop:/m/x.gguf"},
    "model_list": {"hive_id": "gpu1"},
    "model_get": {"hive_id": "gpu1", "id": "smollm2-135m"},
    "model_delete": {"hive_id": "gpu1", "id": "smollm2-135m"},
    "infer": {"device": "cuda:0", "model": "smollm2-135m", "messages": [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Hello"}], "hive_id": "gpu1", "max_tokens": 16,
              "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 42, "stop": ["\n\n", "END"],
              "json_schema": {"type": "object"}, "presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": 2},
}


def test_every_spec_operation_exists():
    assert set(OPERATIONS) == SPEC_OPERATIONS
    assert set(FULL) == SPEC_OPERATIONS


@pytest.mark.parametrize("name", sorted(SPEC_OPERATIONS))
def test_round_trip_is_exact(name):
    wire = {"operation": name, **FULL[name]}
    op = parse_operation(wire)
    assert op.name == name
    assert op.to_dict() == wire
    assert parse_operation(op.to_dict()) == op


def test_defaults_fill_in_and_survive_round_trip():
    op = parse_operation({"operation": "infer", "prompt": "Hi"})
    assert op == Infer(prompt="Hi")
    assert op.model == "smollm2-135m" and op.hive_id is None
    assert (op.max_tokens, op.temperature, op.top_p, op.top_k) == (128, 0.8, 0.95, 40)  # shared/inference.py
    assert parse_operation(op.to_dict()) == op
    spawn = parse_operation({"operation": "worker_spawn"})
    assert spawn == WorkerSpawn(hive_id="localhost", model="smollm2-135m", device="auto")


def test_hive_operations_are_the_forwarded_ones():
    # worker_drain is the queen's own: it stops sending the worker requests, then has its hive stop it;
    # model_push and model_copy are the queen's too: it moves the bytes, then has the hive adopt them
    assert HIVE_OPERATIONS == ({n for n in SPEC_OPERATIONS if n.startswith(("worker_", "model_"))}
                               - {"worker_drain", "model_push", "model_copy"})


@pytest.mark.parametrize("body, fragment", [
    ({"operation": "model_push", "path": "/m/x.gguf", "alias": "Has Spaces"}, "alias"),
    ({"operation": "model_push", "path": "/m/x.gguf", "bwlimit_mb_s": 0}, "bwlimit_mb_s"),
    ({"operation": "model_copy", "model": "x", "from_hive": "a", "to_hive": "a"}, "to_hive"),
    ({"operation": "model_adopt", "file": "../../etc/x.part", "model": "m", "size": 1, "sha256": "ab" * 32}, "file"),
    ({"operation": "model_digest", "file": "../x.part"}, "file"),
    ({"operation": "model_adopt", "file": "x.gguf", "model": "m", "size": 1, "sha256": "ab" * 32}, "file"),
    ({"operation": "model_adopt", "file": "mx-1.part", "model": "m", "size": 1, "sha256": "XYZ"}, "sha256"),
])
def test_models_that_travel_refuse_bad_fields_by_name(body, fragment):
    with pytest.raises(InvalidRequest) as refused:
        parse_operation(body)
    assert refused.value.field == fragment


def test_single_stop_string_is_accepted():
    assert parse_operation({"operation": "infer", "prompt": "x", "stop": "END"}).stop == ("END",)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ([], "must be a JSON object"),
        ("infer", "must be a JSON object"),
        ({"operation": "hive_upgrade"}, "Field 'alias' of operation 'hive_upgrade' must name one hive, or be left out "
                                        "with all: true (every remote hive)"),
        ({"operation": "hive_upgrade", "alias": "gpu1", "all": True}, "must name one hive, or be left out"),
        ({"operation": "worker_drain", "id": "w", "deadline_s": -1}, "'deadline_s' of operation 'worker_drain' must "
                                                                    "be at least 0"),
        ({}, "Missing field 'operation'. Valid operations: embed, hive_drain, hive_get"),
        ({"operation": 3}, "Field 'operation' must be a string"),
        ({"operation": "fly"}, "Unknown operation 'fly'. Valid operations: "),
        ({"operation": "infer"}, "Operation 'infer' needs exactly one of 'prompt' (plain text) and 'messages'"),
        ({"operation": "infer", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one of"),
        ({"operation": "infer", "messages": []}, "'messages' of operation 'infer' must be a non-empty list"),
        ({"operation": "infer", "messages": [{"role": "bot", "content": "y"}]}, "item 0 must be an object with 'role'"),
        ({"operation": "infer", "prompt": ""}, "Field 'prompt' of operation 'infer' must not be empty"),
        ({"operation": "infer", "prompt": 5}, "Field 'prompt' of operation 'infer' must be a string, not a number"),
        ({"operation": "infer", "prompt": "x", "max_tokens": "10"}, "'max_tokens' of operation 'infer' must be an integer, not a string"),
        ({"operation": "infer", "prompt": "x", "max_tokens": 1.5}, "'max_tokens' of operation 'infer' must be an integer"),
        ({"operation": "infer", "prompt": "x", "max_tokens": True}, "must be an integer, not a boolean"),
        ({"operation": "infer", "prompt": "x", "max_tokens": 0}, "'max_tokens' of operation 'infer' must be at least 1, not 0"),
        ({"operation": "infer", "prompt": "x", "temperature": -1}, "'temperature' of operation 'infer' must be at least 0"),
        ({"operation": "infer", "prompt": "x", "top_p": 1.5}, "'top_p' of operation 'infer' must be at most 1"),
        ({"operation": "infer", "prompt": "x", "stop": [1]}, "'stop' of operation 'infer' must be a list of strings"),
        ({"operation": "infer", "prompt": "x", "model": None}, "'model' of operation 'infer' must not be null"),
        ({"operation": "infer", "prompt": "x", "promt": "y"}, "Unknown field 'promt' for operation 'infer'. Valid fields: prompt, messages, max_tokens"),
        ({"operation": "status", "alias": "x"}, "Unknown field 'alias' for operation 'status'. Valid fields: none"),
        ({"operation": "worker_spawn", "device": "tpu"}, "'device' of operation 'worker_spawn' must be auto, cpu or cuda:N (a GPU's index), not 'tpu'"),
        ({"operation": "infer", "prompt": "hi", "device": "gpu"}, "'device' of operation 'infer' must be auto, cpu or cuda:N"),
        ({"operation": "worker_spawn", "kv_cache_type": "q2"}, "'kv_cache_type' of operation 'worker_spawn' must be one of f16, q8_0, q4_0, not 'q2'"),
        ({"operation": "hive_import_ssh", "default_hive_port": 70000}, "must be at most 65535"),
        ({"operation": "worker_get"}, "Missing field 'id' for operation 'worker_get'"),
        ({"operation": "embed", "input": []}, "Field 'input' of operation 'embed' must hold at least one string"),
        ({"operation": "embed", "input": ["a", ""]}, "Field 'input' of operation 'embed' must not contain empty strings"),
        ({"operation": "worker_spawn", "embedding": "yes"}, "'embedding' of operation 'worker_spawn' must be true or false"),
        ({"operation": "embed", "input": ["a"] * 2049}, "'input' of operation 'embed' must hold at most 2048 strings"),
        ({"operation": "infer", "prompt": "x", "json_schema": {"description": "x" * 20_000}},
         "Field 'json_schema' is over 16384 characters as JSON"),
        ({"operation": "infer", "prompt": "x", "grammar": "r" * 70_000}, "Field 'grammar' is over 65536 characters"),
    ],
)
def test_bad_operations_name_what_is_wrong(body, fragment):
    with pytest.raises(InvalidRequest) as err:
        parse_operation(body)
    assert fragment in str(err.value)
    assert err.value.status == 400


def test_allowed_limits_operations_and_lists_only_those():
    with pytest.raises(UnknownOperation) as err:
        parse_operation({"operation": "infer", "prompt": "x"}, allowed=HIVE_OPERATIONS)
    msg = str(err.value)
    assert "Unknown operation 'infer' here" in msg
    assert "worker_spawn" in msg and "hive_start" not in msg
    assert parse_operation({"operation": "model_list"}, allowed=HIVE_OPERATIONS) == \
        parse_operation({"operation": "model_list"})


def test_operations_are_immutable_values():
    op = ModelDownload(model="hf:a/b:c.gguf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.model = "other"  # type: ignore[misc]
    assert op == ModelDownload(model="hf:a/b:c.gguf", hive_id="localhost")


def test_a_hub_token_travels_but_is_never_shown():
    from shared.job_registry import Job, JobLimits
    from shared.operations import ModelDownload
    from shared.wire import HIDDEN

    op = parse_operation({"operation": "model_download", "model": "hf:org/gated:f.gguf", "token": "hf_secret42"})
    assert op.to_dict()["token"] == "hf_secret42"  # to the hive, in the job's body
    assert op.redacted()["token"] == HIDDEN and "hf_secret42" not in repr(op)
    job = Job(op, JobLimits(), actor="queen")
    assert "hf_secret42" not in str(job.summary(full=True))
    assert "token" not in ModelDownload(model="m").redacted()  # none given: nothing said
