"""The queen's Ollama-compatible API, used through the official `ollama` package against a real queen, its
local hive, llama.cpp workers and the built-in model (pulls come from a local stand-in for the hub)."""

from __future__ import annotations

import json
import math

import httpx
import ollama
import pytest

from shared.builtin_model import builtin_model_path
from tests.support.fake_hub import FakeHub, hub_in_thread
from tests.support.processes import BIN, start_daemon
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def hub_url():
    """The fake hub on its own event loop in a thread, so the synchronous client can block meanwhile."""
    hub = FakeHub({"test-org/tiny-GGUF/m.gguf": builtin_model_path()}, bytes_per_s=50e6)  # ~2 s: progress shows
    with hub_in_thread(hub) as url:
        yield url


@pytest.fixture(scope="module")
def queen(tmp_path_factory, hub_url):
    home = tmp_path_factory.mktemp("ollama-home")
    daemon = start_daemon([str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0"], home,
                          env={"HF_ENDPOINT": hub_url, "HF_HOME": str(home / "hf")})
    yield daemon
    daemon.stop(30)


@pytest.fixture
def client(queen):
    return ollama.Client(host=queen.url, headers={"Authorization": f"Bearer {queen.token}"}, timeout=120)


def test_chat_streamed_and_not_agree(client):
    whole = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    assert whole.done and whole.message.role == "assistant" and whole.message.content
    assert whole.done_reason == "length" and whole.eval_count == 8
    assert whole.prompt_eval_count > len(QUESTION[0]["content"].split())  # the template's tokens too
    assert whole.total_duration > whole.eval_duration > 0 and whole.prompt_eval_duration > 0
    parts = list(client.chat(model=MODEL + ":latest", messages=QUESTION, options=GREEDY, stream=True))
    assert len(parts) > 2 and not any(p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 8 and parts[-1].model == MODEL + ":latest"


def test_generate_streamed_and_not(client):
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True, options=GREEDY)
    assert "Paris" in raw.response and raw.done and raw.eval_count == 8
    parts = list(client.generate(model=MODEL, prompt="The capital of France is", raw=True, options=GREEDY,
                                 stream=True))
    assert "".join(p.response for p in parts) == raw.response and parts[-1].done
    # Not raw: the prompt goes through the chat template, with the system prompt (as Ollama does).
    templated = client.generate(model=MODEL, prompt="The capital of France is", system="Answer in one word.",
                                options=GREEDY)
    assert templated.response and templated.prompt_eval_count > raw.prompt_eval_count + 5


def test_options_reach_the_sampler(client):
    params = dict(model=MODEL, prompt="Once upon a time,", raw=True, options={"temperature": 1.0, "seed": 7,
                                                                                 "num_predict": 12})
    assert client.generate(**params).response == client.generate(**params).response
    stopped = client.generate(model=MODEL, prompt="1, 2, 3, 4,", raw=True,
                              options={"temperature": 0, "num_predict": 16, "stop": [","]})
    assert "," not in stopped.response and stopped.done_reason == "stop" and stopped.eval_count < 16


def test_format_json_schema_is_followed(client):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 12}},
              "required": ["capital"], "additionalProperties": False}
    answer = client.chat(model=MODEL, messages=QUESTION, format=schema, options={"temperature": 0, "num_predict": 48})
    assert set(json.loads(answer.message.content)) == {"capital"}
    anything = client.generate(model=MODEL, prompt="A JSON object about Paris:", format="json",
                               options={"temperature": 0, "num_predict": 64, "stop": ["}"]})
    assert anything.response.lstrip().startswith("{")


def test_tools_and_their_results_are_accepted(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    history = [{"role": "user", "content": "What is the weather in Paris?"},
               {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 21 degrees"}]
    answer = client.chat(model=MODEL, messages=history, tools=tools, options=GREEDY)
    calls = answer.message.tool_calls or []
    assert answer.done and (answer.message.content or calls)
    assert all(c.function.name == "get_weather" and isinstance(c.function.arguments, dict) for c in calls)
    streamed = list(client.chat(model=MODEL, messages=history, tools=tools, options=GREEDY, stream=True))
    assert streamed[-1].done
    assert "".join(p.message.content or "" for p in streamed) == answer.message.content


def test_tags_show_and_ps(client, queen):
    client.chat(model=MODEL, messages=QUESTION, options={"num_predict": 2})  # a worker runs now
    tags = {m.model: m for m in client.list().models}
    builtin = tags[MODEL + ":latest"]
    assert builtin.size > 50e6 and len(builtin.digest) == 64 and builtin.details.format == "gguf"
    assert builtin.details.quantization_level == "Q4_1" and builtin.modified_at is not None
    assert builtin.details.family == "llama"  # SmolLM2 is a llama-architecture model
    shown = client.show(MODEL + ":latest")
    assert shown.details.format == "gguf" and "completion" in shown.capabilities
    assert shown.modelinfo["rbee.context_length"] > 0
    extras = httpx.post(queen.url + "/api/show", json={"model": MODEL}, headers=queen.auth).json()["rbee"]
    assert extras["memory_estimate"]["total_mb"] > 0 and extras["hives"] == ["localhost"]
    running = client.ps().models
    assert [m.model for m in running] == [MODEL + ":latest"] and running[0].expires_at is not None
    assert running[0].size > 100e6 and running[0].digest == builtin.digest and running[0].context_length > 0
    workers = httpx.get(queen.url + "/api/ps", headers=queen.auth).json()["models"]
    assert workers[0]["rbee"]["hive_id"] == "localhost" and workers[0]["rbee"]["state"] in ("ready", "busy")


def test_pull_streams_progress_and_the_model_is_listed(client):
    lines = list(client.pull("hf:test-org/tiny-GGUF:m.gguf", stream=True))
    assert lines[0].status == "pulling manifest" and lines[-1].status == "success"
    progress = [p for p in lines if p.total]
    assert len(progress) >= 2 and progress[-1].completed == progress[-1].total > 50e6
    assert [p.completed for p in progress] == sorted(p.completed for p in progress)
    assert lines[-1].digest.startswith("sha256:") and len(lines[-1].digest) == 7 + 64
    assert "m:latest" in [m.model for m in client.list().models]
    assert client.show("m").details.format == "gguf"
    # Not streamed, a local file: one object once it is in the catalog.
    local = client.pull(f"file:{builtin_model_path()}")
    assert local.status == "success"
    assert "smollm2-135m-instruct.q4_1:latest" in [m.model for m in client.list().models]


def test_embed_gives_normalised_repeatable_vectors(client):
    result = client.embed(model=MODEL, input=["The sky is blue.", "The sky is blue.", "Grass is green."])
    first, again, other = result.embeddings
    assert len(first) == len(other) > 100 and first == again and first != other
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-4)
    assert result.prompt_eval_count > 0
    single = client.embeddings(model=MODEL, prompt="The sky is blue.")
    assert len(single.embedding) == len(first)


def test_an_abandoned_stream_cancels_its_generation(queen):
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
            "options": {"temperature": 0, "num_predict": 1000}}
    with httpx.stream("POST", queen.url + "/api/generate", json=body, headers=queen.auth, timeout=120) as resp:
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        lines = resp.iter_lines()
        first = [json.loads(next(lines)) for _ in range(3)]
        assert [p.get("done") for p in first] == [False] * 3, first
    # Each request is a queen job: the client went away, so it is cancelled (and its worker freed).

    def newest_infer() -> dict:
        jobs = httpx.get(queen.url + "/v1/jobs", headers=queen.auth).json()["jobs"]
        return next(j for j in jobs if j["operation"] == "infer")

    wait_until(lambda: newest_infer()["state"] == "cancelled", timeout=5, interval=0.1,
               what=lambda: f"the abandoned generation to be cancelled (it is {newest_infer()['state']})")


def test_bad_requests_get_ollamas_error_shape(client, queen):
    def refused(call, status: int) -> str:
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == status, err.value.error
        return err.value.error

    assert "not found" in refused(lambda: client.chat(model="no-such-model", messages=QUESTION), 404)
    assert "not found" in refused(lambda: next(iter(client.chat(model="no-such-model", messages=QUESTION,
                                                                stream=True))), 404)
    assert "options.temperature" in refused(lambda: client.chat(model=MODEL, messages=QUESTION,
                                                                options={"temperature": 500}), 400)
    assert "options.num_predict" in refused(lambda: client.generate(model=MODEL, prompt="hi",
                                                                   options={"num_predict": "many"}), 400)
    assert "role" in refused(lambda: client.chat(model=MODEL, messages=[{"role": "robot", "content": "hi"}]), 400)
    assert "format" in refused(lambda: client.chat(model=MODEL, messages=QUESTION, format={"type": 7}), 400)
    assert "images" in refused(lambda: client.generate(model=MODEL, prompt="hi", images=[b"\x89PNG"]), 400)
    assert "hf:" in refused(lambda: client.pull("llama3.2"), 400)  # Ollama's library names mean nothing here
    assert "not found" in refused(lambda: client.show("no-such-model"), 404)
    assert "'input'" in refused(lambda: client.embed(model=MODEL, input=[]), 400)
    raw = httpx.post(queen.url + "/api/chat", content=b"{not json", headers=queen.auth)
    assert raw.status_code == 400 and "JSON" in raw.json()["error"]
    gone = httpx.post(queen.url + "/api/create", json={"model": "x"}, headers=queen.auth)
    assert gone.status_code == 501 and isinstance(gone.json()["error"], str)
    missing = httpx.post(queen.url + "/api/nothing-here", json={}, headers=queen.auth)
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


def test_the_token_is_required(queen):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        stranger = ollama.Client(host=queen.url, headers=headers, timeout=30)
        with pytest.raises(ollama.ResponseError) as err:
            stranger.list()
        assert err.value.status_code == 401 and "token" in err.value.error
    answer = httpx.get(queen.url + "/api/version", headers=queen.auth)
    assert answer.status_code == 200 and answer.json()["version"]
