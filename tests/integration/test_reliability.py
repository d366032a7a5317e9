"""Reliability through the real `rbee` and daemons: bad input refused up front, private files, no imports
from the user's directory, clean pipes, a clear word when the queen dies mid-job."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support.keeper import RBEE, Keeper

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


def auth(keeper: Keeper) -> dict[str, str]:
    return {"Authorization": f"Bearer {(keeper.home / 'config' / 'token').read_text().strip()}"}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_file_rbee_writes_is_private(keeper):
    assert keeper("infer", "--max-tokens", "4", "Hello").returncode == 0
    home = keeper.home
    for directory in ("config", "data", "state", "state/logs"):
        assert mode(home / directory) == 0o700, directory
    files = [p for p in home.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"token", "queen.db", "models.db", "queen.log", "hive-localhost.log", "queen.pid"} <= names
    assert any(n.endswith("-wal") for n in names)
    assert [str(p) for p in files if mode(p) & 0o077] == []


async def test_bad_numbers_and_text_are_refused_before_anything_runs(keeper):
    assert keeper("queen", "start").returncode == 0
    bodies = [
        ('{"operation":"infer","prompt":"x\\ud800y"}', "prompt", "valid Unicode"),
        ('{"operation":"infer","prompt":"x","temperature":NaN}', "temperature", "finite"),
        ('{"operation":"infer","prompt":"x","temperature":Infinity}', "temperature", "finite"),
        ('{"operation":"infer","prompt":"x","temperature":1e308}', "temperature", "at most 100"),
        ('{"operation":"infer","prompt":"x","top_k":1000000000000000000000000000000}', "top_k", "at most"),
        ('{"operation":"infer","prompt":"x","seed":1000000000000000000000000000000}', "seed", "at most"),
        ('{"operation":"infer","messages":[{"role":"user","content":"\\udfff"}]}', "messages", "valid Unicode"),
    ]
    async with aiohttp.ClientSession(headers={**auth(keeper), "Content-Type": "application/json"}) as session:
        for body, field, problem in bodies:
            async with session.post(keeper.url + "/v1/jobs", data=body) as resp:
                assert resp.status == 400, body
                error = (await resp.json())["error"]
                assert f"'{field}'" in error["message"] and problem in error["message"], (body, error)
        async with session.post(keeper.url + "/v1/chat/completions", data=json.dumps(
                {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}],
                 "max_tokens": 100000})) as resp:
            assert resp.status == 400  # found by the worker (its context), still the client's mistake
        async with session.get(keeper.url + "/v1/jobs") as resp:
            text = await resp.text()
    assert "NaN" not in text and "Infinity" not in text
    listed = keeper("jobs", "list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr


def test_daemons_never_import_from_the_user_s_directory(keeper, tmp_path):
    trap = tmp_path / "project"
    (trap / "shared").mkdir(parents=True)
    (trap / "shared" / "__init__.py").write_text("raise ImportError('imported from the working directory')\n")
    out = subprocess.run([RBEE, "infer", "--max-tokens", "4", "Hello"], capture_output=True, text=True,
                         timeout=120, env=keeper.env, cwd=trap, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "imported from the working directory" not in (keeper.home / "state" / "logs" / "queen.log").read_text()


def test_a_closed_pipe_is_not_a_traceback(keeper):
    assert keeper("infer", "--max-tokens", "4", "Hello").returncode == 0
    for _ in range(3):
        assert keeper("status").returncode == 0  # some lines to list
    out = subprocess.run(f"'{RBEE}' jobs list | head -c 1", shell=True, capture_output=True, text=True,
                         timeout=120, env=keeper.env, stdin=subprocess.DEVNULL)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


def test_a_queen_that_dies_mid_job_is_said_plainly(keeper):
    assert keeper("infer", "--max-tokens", "4", "Hello").returncode == 0  # warm
    proc = keeper.popen("infer", "--raw", "--temperature", "0", "--max-tokens", "1000", COUNTING)
    first = proc.stdout.read(1)  # the answer has started
    assert first
    os.kill(keeper.queen_pid(), signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "went away while job" in err and "Traceback" not in err


def test_a_relative_file_reference_means_the_user_s_directory(keeper, tmp_path):
    from shared.builtin_model import builtin_model_path

    here = tmp_path / "mine"
    here.mkdir()
    (here / "m.gguf").symlink_to(builtin_model_path())
    out = subprocess.run([RBEE, "--json", "model", "download", "file:m.gguf"], capture_output=True, text=True,
                         timeout=120, env=keeper.env, cwd=here, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert any(f"file:{here / 'm.gguf'}" in line for line in out.stdout.splitlines())


async def test_the_queen_adopts_a_hive_only_when_it_takes_the_queen_s_token(tmp_path):
    from shared.events import Narration
    from shared.job_client import JobClient
    from shared.operations import Infer
    from tests.support.processes import start_hive, start_queen

    stranger = start_hive(tmp_path / "someone-else")  # its own home, so its own token
    port = stranger.url.rsplit(":", 1)[1]
    queen = start_queen(tmp_path / "me", "--local-hive-port", port)
    try:
        async with JobClient(queen.url, queen.token) as client:
            job = await client.submit(Infer(prompt="Hello", max_tokens=4))
            events = [e async for e in client.stream(job.job_id)]
        assert events[-1].state == "completed"
        said = " ".join(e.human for e in events if isinstance(e, Narration))
        assert "answers with another token" in said and "Found hive" not in said
        assert stranger.proc.poll() is None  # left alone
    finally:
        queen.stop(30)
        stranger.stop(30)


async def test_a_hive_left_on_the_port_by_another_protocol_is_replaced(tmp_path):
    """A hive an earlier queen left on the fixed port, running code of another protocol (a copy of rbee's
    source with its PROTOCOL changed, as a newer release would have it), is stopped and replaced."""
    import shutil
    import sys

    from shared.events import Narration
    from shared.job_client import JobClient
    from shared.operations import Infer
    from shared.version import PROTOCOL, VERSION
    from tests.support.processes import pid_alive, start_daemon, start_queen
    from tests.support.sshd import free_port

    root = Path(__file__).resolve().parents[2]

    other = tmp_path / "other-rbee"
    for package in ("shared", "hive", "worker"):
        shutil.copytree(root / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    version_py = other / "shared" / "version.py"
    version_py.write_text(version_py.read_text().replace(f"PROTOCOL = {PROTOCOL}", "PROTOCOL = 99", 1))
    home, port = tmp_path / "home", str(free_port())
    run_copy = f"import sys, runpy; sys.path.insert(0, {str(other)!r}); runpy.run_module('hive.main', run_name='__main__')"
    old = start_daemon([sys.executable, "-c", run_copy, "--port", port], home)
    assert old.health()["protocol"] == 99
    queen = start_queen(home, "--local-hive-port", port)
    try:
        async with JobClient(queen.url, queen.token) as client:
            job = await client.submit(Infer(prompt="Hello", max_tokens=4))
            events = [e async for e in client.stream(job.job_id)]
            status = await client.request("GET", "/v1/hives")
        assert events[-1].state == "completed"
        said = " ".join(e.human for e in events if isinstance(e, Narration))
        assert (f"The hive at http://127.0.0.1:{port} runs rbee {VERSION} (protocol 99) and this queen runs rbee "
                f"{VERSION} (protocol {PROTOCOL}): stopping it and starting this queen's") in said
        old.proc.wait(30)
        assert not pid_alive(old.proc.pid)
        [local] = [h for h in status["hives"] if h["alias"] == "localhost"]
        assert (local["version"], local["protocol"], local["url"]) == (VERSION, PROTOCOL, f"http://127.0.0.1:{port}")
    finally:
        queen.stop(30)
        old.stop(30)


async def test_big_prompts_are_bounded_in_memory_history_and_listings(tmp_path):
    from shared.job_client import JobClient
    from tests.support.processes import rss_mb, start_queen

    queen = start_queen(tmp_path / "home")
    prompt = "a" * 1_000_000  # the largest a request may be: a megabyte
    try:
        async with JobClient(queen.url, queen.token) as client:
            for k in range(150):  # fails at once (no such hive), after it is registered and recorded
                job = await client.submit({"operation": "infer", "prompt": prompt + str(k), "hive_id": "nowhere"})
                if k == 0:
                    first = job.job_id
            events = [e async for e in client.stream(job.job_id)]
            assert events[-1].state == "failed"
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {queen.token}"}) as session:
                async with session.get(queen.url + "/v1/jobs") as resp:
                    listing = await resp.read()
                async with session.get(queen.url + "/v1/jobs?limit=1000") as resp:
                    everything = json.loads(await resp.read())
                async with session.get(queen.url + f"/v1/jobs/{first}") as resp:
                    oldest = await resp.json()  # evicted from memory long ago: from the history
                walked, cursor = [], None
                while True:
                    query = "?limit=40" + (f"&before={cursor}" if cursor else "")
                    async with session.get(queen.url + "/v1/jobs" + query) as resp:
                        page = await resp.json()
                    walked += [j["job_id"] for j in page["jobs"]]
                    if not (cursor := page["next_before"]):
                        break
                assert len(walked) == len(set(walked)) == 150  # live and recorded jobs, each once
            assert len(listing) < 1_000_000 and len(json.loads(listing)["jobs"]) == 100
            assert len(everything["jobs"]) == 150 and all("request" not in j for j in everything["jobs"])
            assert everything["jobs"][0]["about"].startswith("aaaa") and len(everything["jobs"][0]["about"]) < 200
            assert oldest["request"]["truncated"] is True and len(oldest["request"]["prompt"]) == 16 << 10
            assert oldest.get("from_history") is True
        assert rss_mb(queen.proc.pid) < 250
        assert (tmp_path / "home" / "data" / "queen.db").stat().st_size < 20_000_000
    finally:
        queen.stop(30)


@pytest.fixture
async def queen_client(tmp_path):
    from shared.job_client import JobClient
    from tests.support.processes import start_queen

    queen = start_queen(tmp_path / "home", "--heartbeat-timeout", "60")  # only explicit news counts here
    async with JobClient(queen.url, queen.token) as client:
        yield queen, client
    queen.stop(30)


async def run_job(client, operation):
    job = await client.submit(operation)
    return [e async for e in client.stream(job.job_id)]


async def workers(client) -> list[dict]:
    return (await client.request("GET", "/v1/workers"))["workers"]


async def test_a_request_that_cannot_start_on_a_worker_goes_to_another(queen_client):
    from shared.events import Narration
    from shared.operations import Infer
    from tests.support.sshd import free_port

    queen, client = queen_client
    ghost = {"worker_id": "ghost", "hive_id": "localhost", "url": f"http://127.0.0.1:{free_port()}",
             "model": "smollm2-135m", "state": "ready", "slots": 4}
    await client.request("POST", "/v1/workers/heartbeat", ghost)  # registered, but nothing listens there
    events = await run_job(client, Infer(prompt="Hello", max_tokens=4))
    assert events[-1].state == "completed"
    said = [e.human for e in events if isinstance(e, Narration)]
    assert any("ghost" in s and "Trying another worker" in s for s in said)
    assert [w["worker_id"] for w in await workers(client)] != ["ghost"]
    assert "ghost" not in {w["worker_id"] for w in await workers(client)}  # given up, never scheduled again


async def test_workers_that_go_away_are_unschedulable_at_once(queen_client):
    from shared.events import Error, Token
    from shared.operations import Infer
    from tests.support.waiting import until

    queen, client = queen_client
    await run_job(client, Infer(prompt="Hello", max_tokens=4))
    first = (await workers(client))[0]
    job = await client.submit(Infer(prompt=COUNTING, max_tokens=1000, temperature=0))
    events = []
    async for event in client.stream(job.job_id):
        events.append(event)
        if isinstance(event, Token) and len(events) == 3:
            os.kill(first["pid"], signal.SIGTERM)  # shut down mid-answer
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "WORKER_STOPPED" and "stopped mid-answer" in error.message, error
    states = {w["worker_id"]: w["state"] for w in await workers(client)}
    assert states[first["worker_id"]] == "stopped"  # said by its goodbye heartbeat, not 60 s later

    again = await run_job(client, Infer(prompt="Hello", max_tokens=4))
    assert again[-1].state == "completed", [e for e in again if isinstance(e, Error)]
    second = [w for w in await workers(client) if w["state"] == "ready"][0]
    os.kill(second["pid"], signal.SIGKILL)  # no goodbye: its hive tells the queen

    async def crashed():
        return {w["worker_id"]: w["state"] for w in await workers(client)}[second["worker_id"]] == "crashed"

    await until(crashed, timeout=10, what="the hive to report the killed worker")


async def test_a_hung_worker_fails_its_request_and_cancel_does_not_wait_for_it(tmp_path):
    import time

    from shared.events import Error, Token
    from shared.job_client import JobClient
    from shared.operations import Infer
    from tests.support.processes import start_queen
    from tests.support.waiting import until

    queen = start_queen(tmp_path / "home", "--worker-progress-timeout", "12")
    frozen = None
    try:
        async with JobClient(queen.url, queen.token) as client:
            await run_job(client, Infer(prompt="Hello", max_tokens=4))
            frozen = (await workers(client))[0]["pid"]
            job = await client.submit(Infer(prompt=COUNTING, max_tokens=1000, temperature=0))
            async for event in client.stream(job.job_id):
                if isinstance(event, Token):
                    os.kill(frozen, signal.SIGSTOP)  # alive, holding its slot, saying nothing
                    break
            started = time.monotonic()
            cancelled = await client.cancel(job.job_id)
            assert time.monotonic() - started < 1.5 and cancelled["state"] == "cancelled"

            job = await client.submit(Infer(prompt=COUNTING, max_tokens=1000, temperature=0, hive_id="localhost"))
            events = [e async for e in client.stream(job.job_id)]  # a fresh worker may take it, or the hung one
            if events[-1].state != "completed":
                error = next(e for e in events if isinstance(e, Error))
                assert error.code == "WORKER_HUNG" and "made no progress for 12 s" in error.message

            async def gone():
                return not os.path.exists(f"/proc/{frozen}") or open(f"/proc/{frozen}/stat").read().split()[2] == "Z"

            await until(gone, timeout=30, interval=0.2, what="the hive to kill the hung worker")
    finally:
        if frozen is not None and os.path.exists(f"/proc/{frozen}"):
            os.kill(frozen, signal.SIGCONT)
        queen.stop(30)


async def test_a_cold_start_cancelled_while_loading_leaves_no_ghost_worker(queen_client):
    from shared.events import Narration
    from shared.operations import Infer
    from tests.support.waiting import until

    queen, client = queen_client  # heartbeat timeout 60 s: only explicit news can clear the worker
    job = await client.submit(Infer(prompt="Hello", max_tokens=4))
    async for event in client.stream(job.job_id):
        if isinstance(event, Narration) and event.action == "worker_loading":
            await client.cancel(job.job_id)
            break

    async def no_live_worker():
        return all(w["state"] not in ("loading", "ready", "busy") for w in await workers(client))

    await until(no_live_worker, timeout=10, what="the cancelled cold start's worker to be known gone")
    events = await run_job(client, Infer(prompt="Hello", max_tokens=4))
    assert events[-1].state == "completed"
