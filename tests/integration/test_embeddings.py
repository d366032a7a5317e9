"""POST /v1/embeddings through the official `openai` package: a real queen, its hive, an embedding worker
(`llm-worker-rbee --embedding`) of the built-in model, and a generating worker beside it."""

from __future__ import annotations

import json
import math
import subprocess
import urllib.error
import urllib.request

import openai
import pytest

from hive.gguf import read_gguf_metadata
from shared.builtin_model import builtin_model_path
from tests.support.processes import BIN, daemon_env, start_queen

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

MODEL = "smollm2-135m"
CAT = "The cat sat on the mat."


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("embeddings-home")


@pytest.fixture(scope="module")
def queen(home):
    daemon = start_queen(home)
    yield daemon
    daemon.stop(30)


@pytest.fixture
def client(queen):
    return openai.OpenAI(base_url=queen.url + "/v1", api_key=queen.token, max_retries=0, timeout=120)


def model_dimension() -> int:
    """n_embd, as the GGUF itself says it."""
    meta = read_gguf_metadata(builtin_model_path())
    return int(meta[f"{meta['general.architecture']}.embedding_length"])


def workers(queen) -> list[dict]:
    request = urllib.request.Request(queen.url + "/v1/workers", headers=queen.auth)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())["workers"]


def test_vectors_have_the_models_dimension_and_identical_input_gives_identical_vectors(client):
    first = client.embeddings.create(model=MODEL, input=CAT)  # the client asks for base64 by default
    assert first.object == "list" and first.model == MODEL and len(first.data) == 1
    vector = first.data[0].embedding
    assert len(vector) == model_dimension() == 576
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)  # unit length, as OpenAI's
    assert first.usage.prompt_tokens > 0 and first.usage.total_tokens == first.usage.prompt_tokens
    again = client.embeddings.create(model=MODEL, input=CAT)
    assert again.data[0].embedding == vector
    floats = client.embeddings.create(model=MODEL, input=CAT, encoding_format="float")
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(floats.data[0].embedding, vector, strict=True))


def test_two_inputs_in_one_request_give_two_vectors_in_order(client):
    both = client.embeddings.create(model=MODEL, input=[CAT, "Stock markets fell sharply on Monday."],
                                    encoding_format="float")
    assert [d.index for d in both.data] == [0, 1]
    cat, markets = (d.embedding for d in both.data)
    assert cat != markets
    alone = client.embeddings.create(model=MODEL, input=[CAT], encoding_format="float").data[0].embedding
    assert alone == cat  # a vector depends on its text only, not on what came with it
    assert both.usage.prompt_tokens > client.embeddings.create(model=MODEL, input=CAT).usage.prompt_tokens


def test_generation_works_alongside_on_a_separate_worker(client, queen, home):
    client.embeddings.create(model=MODEL, input="warm")
    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert text.choices[0].text and text.usage.completion_tokens == 8
    client.embeddings.create(model=MODEL, input="still embedding")  # each kind keeps its own worker
    mine = [w for w in workers(queen) if w["model"] == MODEL and w["state"] in ("ready", "busy")]
    embedding = [w for w in mine if w["embedding"]]
    generating = [w for w in mine if not w["embedding"]]
    assert len(embedding) == 1 and len(generating) == 1
    assert embedding[0]["worker_id"] != generating[0]["worker_id"]
    assert embedding[0]["url"] != generating[0]["url"]

    # The embedding worker itself refuses generation (the queen never sends it any), clearly.
    ask = urllib.request.Request(embedding[0]["url"] + "/v1/inference", data=b'{"prompt": "hi"}', method="POST",
                                 headers={**queen.auth, "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(ask, timeout=10)
    assert refused.value.code == 400
    assert "--embedding" in json.loads(refused.value.read())["error"]["message"]
    ask = urllib.request.Request(generating[0]["url"] + "/v1/embeddings", data=b'{"input": ["hi"]}', method="POST",
                                 headers={**queen.auth, "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:  # and a generating worker refuses embeddings
        urllib.request.urlopen(ask, timeout=10)
    assert json.loads(refused.value.read())["error"]["code"] == "WRONG_WORKER_MODE"

    # `rbee worker list` tells them apart.
    listed = subprocess.run([str(BIN / "rbee"), "worker", "list"], capture_output=True, text=True, timeout=60,
                            env=daemon_env(home, RBEE_QUEEN_URL=queen.url))
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    kind = header.split().index("KIND")
    kinds = {row.split()[0]: row.split()[kind] for row in rows}
    assert kinds[embedding[0]["worker_id"]] == "embedding"
    assert kinds[generating[0]["worker_id"]] == "generate"


@pytest.mark.parametrize("params, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["fine", ""]}, "input"),
    ({"input": [[1, 2, 3]]}, "input"),  # token ids: not supported, said so
    ({"input": CAT, "dimensions": 100}, "dimensions"),  # not the model's 576
    ({"input": CAT, "encoding_format": "int8"}, "encoding_format"),
])
def test_bad_requests_get_openais_error_shape(client, params, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, **params)
    body = err.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == param and body["message"]


def test_unknown_model_and_wrong_key_are_openai_errors(client, queen):
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="no-such-model", input=CAT)
    assert err.value.body["code"] == "model_not_found"
    stranger = openai.OpenAI(base_url=queen.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        stranger.embeddings.create(model=MODEL, input=CAT)
    assert err.value.body["type"] == "authentication_error"


def test_right_dimensions_are_accepted(client):
    same = client.embeddings.create(model=MODEL, input=CAT, dimensions=model_dimension(), encoding_format="float")
    assert len(same.data[0].embedding) == model_dimension()


def test_an_input_longer_than_the_workers_context_is_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=["short", "word " * 3000])
    body = err.value.body
    assert body["code"] == "input_too_long" and body["param"] == "input" and "item 1" in body["message"]
    assert client.embeddings.create(model=MODEL, input="short").data  # the worker is fine afterwards
