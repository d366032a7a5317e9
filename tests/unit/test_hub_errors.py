"""What the hive's downloader says before a transfer (hive/hf_fetch.py check_reach), against the local hub
stand-in: an unreachable hub, a missing repository or file, a gated or private one, each its own code."""

from __future__ import annotations

import json
import socket

import pytest
from aiohttp import web

from hive import hf_fetch
from hive.hf_fetch import HubProblem, check_reach
from shared.builtin_model import builtin_model_path
from tests.support.fake_hub import FakeHub, hub_in_thread

REPO, FILE = "test-org/tiny-GGUF", "smollm2-135m-q4_1.gguf"


@pytest.fixture
def hub():
    fake = FakeHub({f"{REPO}/{FILE}": builtin_model_path()}, gated={"test-org/gated": "hf_good"})
    fake.files["test-org/gated/x.gguf"] = builtin_model_path()
    with hub_in_thread(fake) as url:
        yield url


def problem(*args) -> HubProblem:
    with pytest.raises(HubProblem) as err:
        check_reach(*args)
    return err.value


def test_a_file_that_is_there_passes(hub):
    check_reach(hub, REPO, FILE, "main", None)
    check_reach(hub, "test-org/gated", "x.gguf", "main", "hf_good")


@pytest.mark.parametrize("repo, file, token, code, words", [
    (REPO, "missing.gguf", None, "HUB_NO_FILE", f"repository '{REPO}' has no file 'missing.gguf'"),
    ("nobody/nothing", "x.gguf", None, "HUB_NO_REPO", "the hub has no repository 'nobody/nothing'"),
    ("test-org/gated", "x.gguf", None, "HUB_AUTH", "is gated (its license must be accepted on the hub first), and "
                                                   "no token was given"),
    ("test-org/gated", "x.gguf", "hf_wrong", "HUB_AUTH", "the token given was refused"),
])
def test_each_refusal_says_what_it_is_and_what_to_do(hub, repo, file, token, code, words):
    found = problem(hub, repo, file, "main", token)
    assert found.code == code and words in str(found)


def test_the_hubs_401_for_a_missing_repository_is_a_missing_repository():
    async def refuse(request: web.Request) -> web.Response:  # what huggingface.co says without a token
        return web.Response(status=401, headers={"X-Error-Code": "RepoNotFound"})

    class Hub(FakeHub):
        def app(self) -> web.Application:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", refuse)
            return app

    with hub_in_thread(Hub({})) as url:
        assert problem(url, "org/private", "f.gguf", "main", None).code == "HUB_NO_REPO"


def test_an_unreachable_hub_is_told_after_a_few_visible_tries(monkeypatch, capsys):
    monkeypatch.setattr(hf_fetch, "REACH_BUDGET_S", 3.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        found = problem(closed, REPO, FILE, "main", None)
    assert found.code == "HUB_UNREACHABLE"
    assert f"could not reach the hub at {closed} (connection refused; 3 tries" in str(found)
    retries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["event"] for r in retries] == ["retry", "retry"] and "trying again in 2 s (try 2)" in retries[0]["message"]
    monkeypatch.setattr(hf_fetch, "REACH_BUDGET_S", 1.2)
    found = problem("http://rbee-test-host.invalid", REPO, FILE, "main", None)
    assert "its name does not resolve" in str(found)
