"""The real llm-worker-rbee process on the built-in model: streaming, sampling, cancellation, faults."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import aiohttp
import pytest

from shared.errors import ServerError
from shared.events import End, Started, Token
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from tests.support.processes import daemon_env, pid_alive, start_worker
from tests.support.waiting import until, wait_until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # the model keeps counting for a long time


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    daemon = start_worker(tmp_path_factory.mktemp("worker-home"), "--parallel", "4", "--max-queue", "2",
                          "--abandon-after", "1")
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
async def client(worker):
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        yield client


async def generate(client, **fields):
    job = await client.submit(InferenceRequest(**fields))
    return job.job_id, [e async for e in client.stream(job.job_id)]


async def until_not_running(client, job_id, what):
    async def stopped():
        state = await client.get(job_id)
        return state if state["state"] != "running" else None

    return await until(stopped, timeout=15, interval=0.1, what=what)


async def test_short_generation_streams_ordered_tokens_that_make_the_text(client):
    job_id, events = await generate(client, prompt="The capital of France is", max_tokens=12, temperature=0)
    assert isinstance(events[0], Started) and events[0].job_id == job_id and events[0].model == "smollm2-135m"
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.i for t in tokens] == list(range(len(tokens))) and tokens
    end = events[-1]
    assert isinstance(end, End) and end.state == "completed"
    assert "".join(t.t for t in tokens) == end.stats["text"]
    assert "Paris" in end.stats["text"]
    assert end.stats["stop_reason"] in ("stop", "length")
    assert 0 < end.stats["tokens_out"] <= 12
    assert end.stats["ttft_ms"] > 0 and end.stats["tokens_per_s"] > 0
    state = await client.get(job_id)
    assert state["state"] == "completed" and state["result"]["text"] == end.stats["text"]


async def test_same_seed_same_text(client):
    params = dict(prompt="Once upon a time, in a garden full of flowers,", max_tokens=16, temperature=1.0, seed=1234)
    _, first = await generate(client, **params)
    _, second = await generate(client, **params)
    assert first[-1].stats["text"] == second[-1].stats["text"]
    assert first[-1].stats["tokens_out"] > 1


async def test_stop_strings_end_generation_and_never_leak(client):
    _, free = await generate(client, prompt="The capital of France is", max_tokens=12, temperature=0)
    assert "." in free[-1].stats["text"]  # without the stop string, the text goes past the period
    _, events = await generate(client, prompt="The capital of France is", max_tokens=12, temperature=0, stop=("."),)
    text = "".join(e.t for e in events if isinstance(e, Token))
    assert text == events[-1].stats["text"] == free[-1].stats["text"].split(".")[0]
    assert events[-1].stats["stop_reason"] == "stop"


async def test_cancel_mid_stream_then_the_next_request_works(client, worker):
    job = await client.submit(InferenceRequest(prompt=COUNTING, max_tokens=1000, temperature=0))
    seen = []
    async for event in client.stream(job.job_id):
        seen.append(event)
        if isinstance(event, Token) and event.i == 2:
            cancelled = await client.cancel(job.job_id)
            assert cancelled["state"] == "cancelled"
    end = seen[-1]
    assert end.state == "cancelled" and end.stats["stop_reason"] == "cancelled"
    # Tokens reach readers in batches of up to 50 ms, so a few more than the 3 seen may already be out;
    # what matters is that the generation of 1000 stopped right there.
    assert sum(isinstance(e, Token) for e in seen) < 20
    assert end.stats["tokens_out"] < 25
    _, events = await generate(client, prompt="Hello", max_tokens=8, temperature=0)
    assert events[-1].state == "completed"
    assert worker.health()["state"] == "ready"


async def test_full_queue_answers_503(client):
    jobs = [await client.submit(InferenceRequest(prompt=COUNTING, max_tokens=1000, temperature=0))
            for _ in range(4 + 2)]  # four slots busy, two waiting (--parallel 4 --max-queue 2)
    try:
        with pytest.raises(ServerError) as err:
            await client.submit(InferenceRequest(prompt="Hi", max_tokens=8))
        assert err.value.status == 503 and err.value.code == "QUEUE_FULL"
        assert "queue is full" in err.value.message
    finally:
        for job in jobs:
            await client.cancel(job.job_id)
    _, events = await generate(client, prompt="Hello", max_tokens=4)
    assert events[-1].state == "completed"


@pytest.mark.parametrize("body, fragment", [
    ({"max_tokens": 8}, "needs exactly one of 'prompt' (plain text) and 'messages'"),
    ({"prompt": "hi", "max_tokens": 0}, "Field 'max_tokens' of the inference request must be at least 1"),
    ({"prompt": "hi", "max_tokens": 5000}, "Field 'max_tokens' (5000) must be smaller than the context of a slot of this worker, 2048 tokens"),
    ({"prompt": "hi", "temperature": -0.5}, "Field 'temperature' of the inference request must be at least 0"),
    ({"prompt": "hi", "model": "x"}, "Unknown field 'model'"),
    ({"prompt": "hi", "operation": "infer"}, "Unknown field 'operation'"),
    ({"prompt": ""}, "Field 'prompt' of the inference request must not be empty"),
    (["hi"], "must be a JSON object"),
])
async def test_bad_requests_get_400_naming_the_field(worker, body, fragment):
    async with aiohttp.ClientSession() as session:
        async with session.post(worker.url + "/v1/inference", json=body, headers=worker.auth) as resp:
            assert resp.status == 400
            assert fragment in (await resp.json())["error"]["message"]


async def test_prompt_longer_than_context_is_a_clear_error(client, worker):
    with pytest.raises(ServerError) as err:  # refused before it is queued
        await client.submit(InferenceRequest(prompt="bee " * 3000, max_tokens=8))
    assert (err.value.status, err.value.code) == (400, "PROMPT_TOO_LONG")
    assert "The prompt is 3001 tokens long; a slot of this worker holds 2048" in err.value.message
    assert worker.health()["state"] == "ready"


async def test_fill_context_goes_on_until_the_slot_is_full(client):
    """Ollama's num_predict -1: a max_tokens past the context is the most, and the context ends it."""
    _, events = await generate(client, prompt="bee " * 2000, max_tokens=5000, fill_context=True, temperature=0)
    end = events[-1]
    assert end.state == "completed" and end.stats["stop_reason"] == "length", end
    # the context holds 2048; the last token is sampled from it, not put into it
    assert 2040 <= end.stats["prompt_tokens"] + end.stats["tokens_out"] <= 2049


async def test_count_only_counts_the_chat_as_the_model_reads_it_and_generates_nothing(client):
    messages = (("system", "Be brief."), ("user", "What is the capital of France?"))
    _, counted = await generate(client, messages=messages, count_only=True, max_tokens=1)
    _, generated = await generate(client, messages=messages, max_tokens=2, temperature=0)
    assert not [e for e in counted if isinstance(e, Token)]
    assert counted[-1].stats["tokens_out"] == 0 and counted[-1].stats["stop_reason"] == "count"
    assert counted[-1].stats["prompt_tokens"] == generated[-1].stats["prompt_tokens"] > 10  # the template's too
    _, long = await generate(client, prompt="bee " * 3000, count_only=True, max_tokens=1)  # too long to answer
    assert long[-1].stats["prompt_tokens"] == 3001


async def test_reader_that_disconnects_stops_the_generation(client, worker):
    job = await client.submit(InferenceRequest(prompt=COUNTING, max_tokens=1000, temperature=0))
    async for event in client.stream(job.job_id):
        if isinstance(event, Token):
            break  # the client goes away mid-stream
    state = await until_not_running(client, job.job_id, "the abandoned generation to stop (--abandon-after 1)")
    assert state["state"] == "cancelled"
    assert state["result"]["stop_reason"] == "cancelled" and state["result"]["tokens_out"] < 1000
    assert worker.health()["state"] == "ready"


async def test_health_reports_ready_model_and_queue(worker):
    health = worker.health()
    assert health["state"] == "ready" and health["model"] == "smollm2-135m"
    assert health["threads"] == len(os.sched_getaffinity(0))  # all cores, not llama.cpp's half
    assert health["queue_depth"] == 0 and health["slots"] == health["slots_open"] == 4 and health["slots_busy"] == 0


# --- process lifecycle ---------------------------------------------------------------------------------

def run_worker_cli(tmp_path, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "worker.main", "--worker-id", "w", *args],
                          capture_output=True, text=True, timeout=timeout, env=daemon_env(tmp_path))


def test_missing_model_file_exits_with_one_clear_line(tmp_path):
    out = run_worker_cli(tmp_path, "--model", str(tmp_path / "nope.gguf"))
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [f"llm-worker-rbee: model file {tmp_path / 'nope.gguf'} does not exist"]


def test_non_gguf_file_exits_with_one_clear_line(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_text("this is not a model")
    out = run_worker_cli(tmp_path, "--model", str(bogus))
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        f"llm-worker-rbee: model file {bogus} is not a GGUF file (its first bytes are not 'GGUF')"]


def test_bad_device_is_refused(tmp_path):
    from shared.builtin_model import builtin_model_path
    out = run_worker_cli(tmp_path, "--model", str(builtin_model_path()), "--device", "tpu:0")
    assert out.returncode != 0 and "--device must be cpu or cuda:N" in out.stderr
    assert "Traceback" not in out.stderr


def test_truncated_gguf_never_says_ready_and_exits_nonzero(tmp_path):
    from shared.builtin_model import builtin_model_path
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(builtin_model_path().read_bytes()[: 2 * 1024 * 1024])
    daemon = start_worker(tmp_path, model=truncated, wait_ready=False)
    states = set()

    def exited() -> bool:  # and, until then, every state it reports
        if (health := daemon.health()) is not None:
            states.add(health["state"])
        return daemon.proc.poll() is not None

    try:
        wait_until(exited, timeout=60, what="the worker with a truncated model to exit")
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 1
    assert "ready" not in states
    assert daemon.stderr_closed.wait(10), "the worker's stderr never closed"
    assert any(f"cannot load model {truncated}" in line for line in daemon.stderr_lines)
    assert not any("Traceback" in line for line in daemon.stderr_lines)


def test_sigterm_and_shutdown_endpoint_exit_cleanly(tmp_path):
    daemon = start_worker(tmp_path)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    daemon = start_worker(tmp_path)
    import urllib.request
    req = urllib.request.Request(daemon.url + "/v1/shutdown", method="POST", headers=daemon.auth)
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 202
    assert daemon.proc.wait(15) == 0


def test_worker_exits_when_its_parent_is_killed(tmp_path):
    from shared.builtin_model import builtin_model_path
    parent_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([{str(sys.executable)!r}, '-m', 'worker.main', '--worker-id', 'orphan', "
        f"'--model', {str(builtin_model_path())!r}, '--port', '0'])\n"  # its stdout is the parent's
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"  # the parent just lives on, until the test kills it
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              env=daemon_env(tmp_path))
    said: list[str] = []  # the parent's line (the worker's pid), then the worker's own `listening on`

    def read_all() -> None:
        for line in parent.stdout:
            said.append(line)

    threading.Thread(target=read_all, daemon=True).start()
    worker_pid = None
    try:
        wait_until(lambda: said, what="the parent to print its worker's pid")
        worker_pid = int(said[0])
        # Listening means the worker is up, with its parent watch in place, before the parent dies.
        wait_until(lambda: any("listening on" in line for line in said) or not pid_alive(worker_pid),
                   timeout=60, what=lambda: f"the worker to start listening (so far: {said})")
        assert pid_alive(worker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        wait_until(lambda: not pid_alive(worker_pid), what="the worker to exit with its SIGKILLed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        if worker_pid is not None and pid_alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


async def test_heartbeats_reach_the_queen_url_and_a_dead_queen_does_no_harm(tmp_path, aiohttp_server):
    from aiohttp import web

    beats = []

    async def heartbeat(request):
        beats.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/workers/heartbeat", heartbeat)
    server = await aiohttp_server(app)
    daemon = await asyncio.to_thread(
        start_worker, tmp_path, "--queen-url", str(server.make_url("")).rstrip("/"), "--hive-id", "localhost",
        "--heartbeat-interval", "0.3")
    try:
        auth, beat = await until(lambda: next((b for b in beats if b[1]["state"] == "ready"), None),
                                 what=lambda: f"a heartbeat saying ready (got {beats})")
        assert auth == f"Bearer {daemon.token}"
        assert beat["worker_id"] == "test-worker" and beat["hive_id"] == "localhost"
        assert beat["url"] == daemon.url and beat["model"] == "smollm2-135m" and beat["pid"] == daemon.proc.pid
        assert beat["queue_depth"] == 0
        await server.close()  # the queen goes away
        async with JobClient(daemon.url, daemon.token, path="/v1/inference") as client:
            _, events = await generate(client, prompt="Hello", max_tokens=4)
        assert events[-1].state == "completed"
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0


async def test_generation_nobody_comes_to_read_is_stopped(client, worker):
    job = await client.submit(InferenceRequest(prompt=COUNTING, max_tokens=1000, temperature=0))
    # --abandon-after 1, and nobody ever opens the stream
    state = await until_not_running(client, job.job_id, "the unread generation to stop (--abandon-after 1)")
    assert state["state"] == "cancelled" and state["result"]["stop_reason"] == "cancelled"
