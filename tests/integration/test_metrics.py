"""GET /metrics on the queen, its local hive and a worker: Prometheus text that prometheus_client's own
parser reads, behind the token, with counters that move with the traffic."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.builtin_model import builtin_model_path
from shared.job_client import JobClient
from tests.support.fake_hub import FakeHub, hub_in_thread
from tests.support.processes import BIN, start_daemon
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

HF_REF = "hf:test-org/tiny-GGUF:m.gguf"


@pytest.fixture(scope="module")
def hub_url():
    """A stand-in for the Hugging Face hub, served from a thread for the whole module."""
    with hub_in_thread(FakeHub({"test-org/tiny-GGUF/m.gguf": builtin_model_path()})) as url:
        yield url


@pytest.fixture(scope="module")
def queen(tmp_path_factory, hub_url):
    home = tmp_path_factory.mktemp("metrics-home")
    # the local hive inherits the queen's environment, so it downloads from the stand-in hub
    daemon = start_daemon([str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0"], home,
                          env={"HF_ENDPOINT": hub_url, "HF_HOME": str(home / "hf")})
    yield daemon
    daemon.stop(30)


def scrape(url: str, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by (name, sorted labels), read with prometheus_client's parser."""
    resp = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def matching(samples, name: str, **labels: str) -> dict[tuple, float]:
    return {key: v for key, v in samples.items()
            if key[0] == name and all(dict(key[1]).get(k) == want for k, want in labels.items())}


def complete(queen, max_tokens: int = 8) -> dict:
    resp = httpx.post(queen.url + "/v1/completions", headers=queen.auth, timeout=120,
                      json={"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": max_tokens,
                            "temperature": 0})
    assert resp.status_code == 200, resp.text
    return resp.json()


def daemons(queen) -> tuple[str, str]:
    """The local hive's URL and the (one) worker's, as the queen knows them."""
    hives = httpx.get(queen.url + "/v1/hives", headers=queen.auth, timeout=30).json()["hives"]
    workers = httpx.get(queen.url + "/v1/workers", headers=queen.auth, timeout=30).json()["workers"]
    [hive] = [h["url"] for h in hives if h.get("url")]
    return hive, workers[0]["url"]


def test_every_daemon_wants_the_token(queen):
    complete(queen, 2)  # so there is a worker
    for url in (queen.url, *daemons(queen)):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = httpx.get(url + "/metrics", headers=headers, timeout=30)
            assert resp.status_code == 401, (url, resp.text)


def test_queen_counters_move_with_an_infer(queen):
    complete(queen, 2)  # the worker is up: what follows measures one generation
    before = scrape(queen.url, queen.token)
    usage = complete(queen, 8)["usage"]
    after = scrape(queen.url, queen.token)
    done = {"operation": "infer", "state": "completed"}
    assert value(after, "rbee_jobs_total", **done) == value(before, "rbee_jobs_total", **done) + 1
    assert usage["completion_tokens"] == 8
    assert value(after, "rbee_tokens_generated_total") == value(before, "rbee_tokens_generated_total") + 8
    for histogram in ("rbee_time_to_first_token_seconds", "rbee_tokens_per_second"):
        assert value(after, histogram + "_count") == value(before, histogram + "_count") + 1
    assert value(after, "rbee_time_to_first_token_seconds_sum") > value(before, "rbee_time_to_first_token_seconds_sum")
    # the live gauges: the worker, idle again, by hive and state
    assert sum(matching(after, "rbee_workers", hive="localhost", state="ready").values()) == 1
    [(slots_key, slots)] = matching(after, "rbee_slots", hive="localhost").items()
    assert slots >= 1 and matching(after, "rbee_slots_busy", hive="localhost") == {
        ("rbee_slots_busy", slots_key[1]): 0.0}
    assert matching(after, "rbee_queue_depth", hive="localhost")


async def test_a_failed_job_counts_as_failed(queen):
    failed = {"operation": "infer", "state": "failed"}
    before = await asyncio.to_thread(scrape, queen.url, queen.token)
    async with JobClient(queen.url, queen.token) as client:
        job = await client.submit({"operation": "infer", "model": "file:/nonexistent/m.gguf", "prompt": "hi"})
        events = [e async for e in client.stream(job.job_id)]
        assert events[-1].state == "failed", events
    after = await asyncio.to_thread(scrape, queen.url, queen.token)
    assert value(after, "rbee_jobs_total", **failed) == value(before, "rbee_jobs_total", **failed) + 1


def test_hive_and_worker_count_their_own(queen):
    complete(queen, 2)
    hive_url, worker_url = daemons(queen)
    hive = scrape(hive_url, queen.token)
    assert value(hive, "rbee_workers", hive="localhost", state="ready") == 1
    assert value(hive, "rbee_jobs_total", operation="worker_spawn", state="completed") >= 1
    before = scrape(worker_url, queen.token)
    complete(queen, 8)
    after = scrape(worker_url, queen.token)
    done = {"operation": "inference", "state": "completed"}
    assert value(after, "rbee_jobs_total", **done) == value(before, "rbee_jobs_total", **done) + 1
    assert value(after, "rbee_tokens_generated_total") == value(before, "rbee_tokens_generated_total") + 8
    assert value(after, "rbee_time_to_first_token_seconds_count") == \
        value(before, "rbee_time_to_first_token_seconds_count") + 1
    [slots] = matching(after, "rbee_slots", hive="localhost").values()
    assert slots >= 1 and list(matching(after, "rbee_queue_depth").values()) == [0.0]
    # the engine frees the slot just after the answer's end went out
    wait_until(lambda: list(matching(scrape(worker_url, queen.token), "rbee_slots_busy").values()) == [0.0],
               timeout=5, interval=0.1, what="the worker's slot to be free again")


async def test_download_bytes_count_a_model_fetched_from_the_hub(queen):
    size = builtin_model_path().stat().st_size
    await asyncio.to_thread(complete, queen, 2)  # so the local hive is up
    hive_url, _ = await asyncio.to_thread(daemons, queen)
    queen_before, hive_before = [await asyncio.to_thread(scrape, url, queen.token) for url in (queen.url, hive_url)]
    async with JobClient(queen.url, queen.token) as client:
        job = await client.submit({"operation": "model_download", "model": HF_REF, "hive_id": "localhost"})
        events = [e async for e in client.stream(job.job_id)]
        assert events[-1].state == "completed", events
    queen_after, hive_after = [await asyncio.to_thread(scrape, url, queen.token) for url in (queen.url, hive_url)]
    for before, after in ((queen_before, queen_after), (hive_before, hive_after)):
        assert value(after, "rbee_download_bytes_total") == value(before, "rbee_download_bytes_total") + size
        done = {"operation": "model_download", "state": "completed"}
        assert value(after, "rbee_jobs_total", **done) == value(before, "rbee_jobs_total", **done) + 1
