"""The real rbee-hive process with real workers on the built-in model, and a local stand-in hub."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal

import aiohttp
import pytest

from shared.builtin_model import builtin_model_path
from shared.events import Data, End, Error, Narration, Token
from shared.inference import InferenceRequest
from shared.job_client import JobClient
from shared.kv_cache import MAX_SLOTS
from tests.support.fake_hub import FakeHub
from tests.support.processes import children_of, pid_alive, start_hive
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

BUILTIN_SHA = hashlib.sha256(builtin_model_path().read_bytes()).hexdigest()
HF_REF = "hf:test-org/tiny-GGUF:smollm2-135m-q4_1.gguf"


@pytest.fixture
async def hive(tmp_path):
    daemon = await asyncio.to_thread(start_hive, tmp_path / "home")
    yield daemon
    await asyncio.to_thread(daemon.stop)


@pytest.fixture
async def client(hive):
    async with JobClient(hive.url, hive.token) as client:
        yield client


async def run(client, operation):
    job = await client.submit(operation)
    events = [e async for e in client.stream(job.job_id)]
    return job.job_id, events


def data_of(events, action):
    return next(e.payload for e in events if isinstance(e, Data) and e.action == action)


async def worker_state(client, worker_id):
    _, events = await run(client, {"operation": "worker_get", "id": worker_id})
    return data_of(events, "worker_get")


async def test_worker_lifecycle_spawn_infer_crash_delete_shutdown(hive, client):
    _, events = await run(client, {"operation": "worker_spawn", "model": "smollm2-135m"})
    assert events[-1].state == "completed", events
    actions = [e.action for e in events if isinstance(e, Narration)]
    assert actions.index("worker_spawn") < actions.index("worker_loading") < actions.index("worker_ready")
    worker = data_of(events, "worker_spawn")
    assert worker["state"] == "ready" and worker["model"] == "smollm2-135m"

    _, listed = await run(client, {"operation": "worker_list"})
    assert [(w["id"], w["state"]) for w in data_of(listed, "worker_list")["workers"]] == [(worker["id"], "ready")]

    async with JobClient(worker["url"], hive.token, path="/v1/inference") as w:
        job = await w.submit(InferenceRequest(prompt="The capital of France is", max_tokens=8, temperature=0))
        tokens = [e async for e in w.stream(job.job_id) if isinstance(e, Token)]
    assert "Paris" in "".join(t.t for t in tokens)

    os.kill(worker["pid"], signal.SIGKILL)

    async def crashed():
        state = await worker_state(client, worker["id"])
        return state if state["state"] == "crashed" else None

    state = await until(crashed, what=f"the hive to see {worker['id']} crash")
    assert state["exit_code"] == -9

    _, deleted = await run(client, {"operation": "worker_delete", "id": worker["id"]})
    assert deleted[-1].state == "completed"
    _, listed = await run(client, {"operation": "worker_list"})
    assert data_of(listed, "worker_list")["workers"] == []

    # a second worker, then shutdown: the hive stops it and leaves nothing behind
    _, events = await run(client, {"operation": "worker_spawn"})
    second = data_of(events, "worker_spawn")
    assert children_of(hive.proc.pid)
    async with aiohttp.ClientSession() as session:
        async with session.post(hive.url + "/v1/shutdown", headers=hive.auth) as resp:
            assert resp.status == 202
    assert await asyncio.to_thread(hive.proc.wait, 20) == 0
    assert not pid_alive(second["pid"])


async def test_cpu_workers_share_the_cores_and_never_exceed_them(hive, client):
    cores = len(os.sched_getaffinity(0))
    _, events = await run(client, {"operation": "worker_spawn"})
    first = data_of(events, "worker_spawn")
    assert first["threads"] == cores and first["slots"] == MAX_SLOTS  # one worker, every core, slots that grow
    _, events = await run(client, {"operation": "worker_spawn"})
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "THREAD_BUDGET" and f"Every one of the {cores} cores" in error.message
    assert first["id"] in error.message and events[-1].state == "failed"
    await run(client, {"operation": "worker_delete", "id": first["id"]})
    _, events = await run(client, {"operation": "worker_spawn"})  # the cores are free again
    assert data_of(events, "worker_spawn")["threads"] == cores


async def test_sigkilled_hive_leaves_no_worker(hive, client):
    _, events = await run(client, {"operation": "worker_spawn"})
    pid = data_of(events, "worker_spawn")["pid"]
    hive.proc.send_signal(signal.SIGKILL)
    await until(lambda: not pid_alive(pid), what="the worker to exit with its SIGKILLed hive")


async def test_models_builtin_and_local_files(client, tmp_path):
    _, events = await run(client, {"operation": "model_list"})
    listed = data_of(events, "model_list")["models"]  # the built-in is listed from the start
    assert [(m["id"], m["sha256"], m["downloaded"]) for m in listed] == [("smollm2-135m", BUILTIN_SHA, False)]
    estimate = listed[0]["estimate"]  # what a worker of it needs here, from the GGUF's metadata (#16)
    assert (estimate["ctx_size"], estimate["slots"]) == (2048, 4) and 250 < estimate["total_mb"] < 500
    _, events = await run(client, {"operation": "model_download", "model": "smollm2-135m"})
    entry = data_of(events, "model_download")
    assert entry["id"] == "smollm2-135m" and entry["sha256"] == BUILTIN_SHA and entry["downloaded"] is False

    local = tmp_path / "my model.gguf"
    shutil.copy(builtin_model_path(), local)
    _, events = await run(client, {"operation": "model_download", "model": f"file:{local}"})
    assert data_of(events, "model_download")["path"] == str(local)
    _, events = await run(client, {"operation": "model_list"})
    assert [m["id"] for m in data_of(events, "model_list")["models"]] == ["smollm2-135m", f"file:{local}"]
    _, events = await run(client, {"operation": "model_get", "id": f"file:{local}"})
    assert data_of(events, "model_get")["sha256"] == BUILTIN_SHA
    _, events = await run(client, {"operation": "model_delete", "id": f"file:{local}"})
    assert events[-1].state == "completed" and local.exists()  # not ours to delete


@pytest.mark.parametrize("operation, code, fragment", [
    ({"operation": "model_download", "model": "s3:bucket/x.gguf"}, "BAD_MODEL_REFERENCE", "Unknown model reference scheme 's3:'"),
    ({"operation": "model_download", "model": "llama-7b"}, "BAD_MODEL_REFERENCE", "Unknown model 'llama-7b'"),
    ({"operation": "model_download", "model": "hf:just-a-repo"}, "BAD_MODEL_REFERENCE", "Malformed hf: reference"),
    ({"operation": "model_download", "model": "hf:org/repo:weights.bin"}, "BAD_MODEL_REFERENCE", "Malformed hf: reference"),
    ({"operation": "model_download", "model": "file:/nonexistent/m.gguf"}, "MODEL_NOT_FOUND", "does not exist"),
    ({"operation": "model_get", "id": "nope"}, "MODEL_NOT_FOUND", "No model 'nope' in this hive's catalog"),
    ({"operation": "worker_get", "id": "worker-nope"}, "WORKER_NOT_FOUND", "No worker 'worker-nope'"),
    ({"operation": "worker_delete", "id": "worker-nope"}, "WORKER_NOT_FOUND", "No worker 'worker-nope'"),
    ({"operation": "worker_spawn", "device": "cuda:7"}, "DEVICE_NOT_FOUND", "Device cuda:7 does not exist"),
    ({"operation": "worker_list", "hive_id": "gpu-box"}, "WRONG_HIVE", "This is hive 'localhost', not 'gpu-box'"),
])
async def test_bad_requests_fail_the_job_with_a_clear_error(client, operation, code, fragment):
    _, events = await run(client, operation)
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == code and fragment in error.message
    assert events[-1] == End(state="failed")


async def test_non_gguf_file_is_refused(client, tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("hello")
    _, events = await run(client, {"operation": "model_download", "model": f"file:{bogus}"})
    assert "is not a GGUF file" in next(e for e in events if isinstance(e, Error)).message
    _, events = await run(client, {"operation": "model_list"})
    assert [m["id"] for m in data_of(events, "model_list")["models"]] == ["smollm2-135m"]


async def test_hive_refuses_queen_operations(client):
    from shared.errors import ServerError
    with pytest.raises(ServerError) as err:
        await client.submit({"operation": "infer", "prompt": "hi"})
    assert err.value.status == 400 and "Unknown operation 'infer' here" in err.value.message


async def test_capabilities_are_honest(hive):
    async with aiohttp.ClientSession() as session:
        async with session.get(hive.url + "/v1/capabilities", headers=hive.auth) as resp:
            caps = await resp.json()
    assert caps["cpu"]["cores"] == len(os.sched_getaffinity(0)) and caps["ram_bytes"] > 0
    assert caps["devices"][0] == "cpu"
    if shutil.which("nvidia-smi") is None:
        assert caps["gpus"] == [] and caps["gpu_note"].startswith("no GPU")


# --- downloads from the (local stand-in) hub ---------------------------------------------------------

@pytest.fixture
def hub():
    return FakeHub({"test-org/tiny-GGUF/smollm2-135m-q4_1.gguf": builtin_model_path()}, bytes_per_s=60e6)


@pytest.fixture
async def hub_hive(tmp_path, hub, aiohttp_server, unused_tcp_port_factory):
    port = unused_tcp_port_factory()
    server = await aiohttp_server(hub.app(), port=port)
    home = tmp_path / "home"
    daemon = await asyncio.to_thread(start_hive, home, env={"HF_ENDPOINT": f"http://127.0.0.1:{port}",
                                                            "HF_HOME": str(home / "hf")})
    yield daemon, server, port, home
    await asyncio.to_thread(daemon.stop)


async def test_hf_download_narrates_progress_and_lands_in_the_catalog(hub_hive, hub):
    hive, _, _, home = hub_hive
    async with JobClient(hive.url, hive.token) as client:
        _, events = await run(client, {"operation": "model_download", "model": HF_REF})
        assert events[-1].state == "completed", events
        entry = data_of(events, "model_download")
        assert entry["id"] == HF_REF and entry["sha256"] == BUILTIN_SHA and entry["downloaded"] is True
        assert entry["path"].startswith(str(home / "data" / "models"))
        progress = [e.payload for e in events if isinstance(e, Data) and e.action == "download_progress"]
        assert len(progress) >= 3 and progress[-1]["done"] == progress[-1]["total"] == entry["size"]
        assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
        texts = [e.human for e in events if isinstance(e, Narration) and e.action == "model_download"]
        assert any("100% (98.4 MB of 98.4 MB" in t for t in texts) and any("MB/s" in t for t in texts)

        # a spawn on the downloaded model reuses the catalog entry, no second download
        gets_before = sum(1 for r in hub.requests if r[0] == "GET")
        _, events = await run(client, {"operation": "worker_spawn", "model": HF_REF})
        assert data_of(events, "worker_spawn")["model"] == HF_REF
        assert sum(1 for r in hub.requests if r[0] == "GET") == gets_before
        await run(client, {"operation": "worker_delete", "id": data_of(events, "worker_spawn")["id"]})

        _, events = await run(client, {"operation": "model_delete", "id": HF_REF})
        assert not os.path.exists(entry["path"])  # the hive downloaded it, so the hive removes it


async def test_hub_404_is_a_clear_failure(hub_hive):
    hive = hub_hive[0]
    async with JobClient(hive.url, hive.token) as client:
        _, events = await run(client, {"operation": "model_download", "model": "hf:test-org/tiny-GGUF:missing.gguf"})
        error = next(e for e in events if isinstance(e, Error))
        assert (error.code, error.status) == ("HUB_NO_FILE", 404) and "has no file 'missing.gguf'" in error.message
        _, events = await run(client, {"operation": "model_download", "model": "hf:nobody/nothing:x.gguf"})
        error = next(e for e in events if isinstance(e, Error))
        assert error.code == "HUB_NO_REPO" and "the hub has no repository 'nobody/nothing'" in error.message
        _, events = await run(client, {"operation": "model_list"})
        assert [m["id"] for m in data_of(events, "model_list")["models"]] == ["smollm2-135m"]


async def test_an_unreachable_hub_is_said_within_15_s_with_its_retries(tmp_path, unused_tcp_port_factory):
    closed = unused_tcp_port_factory()  # nothing listens there
    home = tmp_path / "home"
    hive = await asyncio.to_thread(start_hive, home, env={"HF_ENDPOINT": f"http://127.0.0.1:{closed}",
                                                          "HF_HOME": str(home / "hf")})
    try:
        async with JobClient(hive.url, hive.token) as client:
            started = asyncio.get_running_loop().time()
            _, events = await run(client, {"operation": "model_download", "model": HF_REF})
            took = asyncio.get_running_loop().time() - started
    finally:
        await asyncio.to_thread(hive.stop)
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "HUB_UNREACHABLE" and "has no file" not in error.message
    assert f"could not reach the hub at http://127.0.0.1:{closed} (connection refused" in error.message
    assert "HF_ENDPOINT" in error.message
    retries = [e.human for e in events if isinstance(e, Narration) and "trying again" in e.human]
    assert len(retries) >= 2, retries
    assert took < 15, took


async def test_a_gated_repository_asks_for_a_token_and_downloads_with_one(tmp_path, hub, aiohttp_server,
                                                                        unused_tcp_port_factory):
    hub.gated["test-org/tiny-GGUF"] = "hf_test_token"
    port = unused_tcp_port_factory()
    await aiohttp_server(hub.app(), port=port)
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    for name, token in (("without", None), ("with", "hf_test_token")):
        home = tmp_path / name
        hive = await asyncio.to_thread(start_hive, home, env={**env, "HF_HOME": str(home / "hf"),
                                                              **({"HF_TOKEN": token} if token else {})})
        try:
            async with JobClient(hive.url, hive.token) as client:
                _, events = await run(client, {"operation": "model_download", "model": HF_REF})
        finally:
            await asyncio.to_thread(hive.stop)
        if token is None:
            error = next(e for e in events if isinstance(e, Error))
            assert error.code == "HUB_AUTH" and "is gated" in error.message and "HF_TOKEN" in error.message
        else:
            assert events[-1].state == "completed", [e for e in events if isinstance(e, Error)]


async def test_a_dropped_transfer_resumes_with_a_range_request(hub_hive, hub):
    hive = hub_hive[0]
    hub.die_after_bytes = 30_000_000  # the connection breaks once; the hub stays up
    async with JobClient(hive.url, hive.token) as client:
        _, events = await run(client, {"operation": "model_download", "model": HF_REF})
    assert events[-1].state == "completed"
    assert data_of(events, "model_download")["sha256"] == BUILTIN_SHA
    resumed = [r for r in hub.requests if r[0] == "GET" and r[2]]
    assert resumed and int(resumed[-1][2].removeprefix("bytes=").split("-")[0]) >= 10_000_000  # not from 0


async def test_hub_dying_mid_download_fails_cleanly_and_a_retry_succeeds(hub_hive, hub, aiohttp_server):
    hive, server, port, home = hub_hive
    hub.die_after_bytes = 30_000_000
    async with JobClient(hive.url, hive.token) as client:
        job = await client.submit({"operation": "model_download", "model": HF_REF})
        await hub.died.wait()
        await server.close()  # and stays down: the downloader's retries find nobody
        events = [e async for e in client.stream(job.job_id)]
        error = next(e for e in events if isinstance(e, Error))
        assert error.code == "DOWNLOAD_FAILED" and "run the download again to retry" in error.message
        assert events[-1] == End(state="failed")
        _, listed = await run(client, {"operation": "model_list"})
        assert [m["id"] for m in data_of(listed, "model_list")["models"]] == ["smollm2-135m"]  # no half file in the catalog
        leftovers = [p for p in (home / "data" / "models").rglob("*") if p.is_file()]
        assert all(not p.name.endswith((".gguf", ".incomplete")) for p in leftovers), leftovers

        await aiohttp_server(hub.app(), port=port)  # the hub is back
        _, events = await run(client, {"operation": "model_download", "model": HF_REF})
        assert events[-1].state == "completed"
        assert data_of(events, "model_download")["sha256"] == BUILTIN_SHA


async def test_cancelled_download_stops_the_transfer(hub_hive, hub):
    hive = hub_hive[0]
    hub.bytes_per_s = 10e6  # ten seconds for the whole file
    async with JobClient(hive.url, hive.token) as client:
        job = await client.submit({"operation": "model_download", "model": HF_REF})
        async for event in client.stream(job.job_id):
            if isinstance(event, Data) and event.payload["done"] > 5_000_000:
                assert (await client.cancel(job.job_id))["state"] == "cancelled"
                break
        await until(lambda: children_of(hive.proc.pid) == [],
                    what=lambda: f"the downloader to be gone (the hive still has {children_of(hive.proc.pid)})")
        _, events = await run(client, {"operation": "model_list"})
        assert [m["id"] for m in data_of(events, "model_list")["models"]] == ["smollm2-135m"]


def test_port_already_taken_is_one_clear_line(hive, tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    port = hive.url.rsplit(":", 1)[1]
    out = subprocess.run([str(Path(sys.executable).parent / "rbee-hive"), "--port", port],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "RBEE_HOME": str(tmp_path)})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"rbee-hive: cannot listen on 127.0.0.1:{port}: address already in use "
        "(is another one running? pick another --port)"]


async def test_a_worker_that_ignores_sigterm_is_killed(tmp_path):
    daemon = await asyncio.to_thread(start_hive, tmp_path / "home", "--worker-stop-timeout", "1")
    try:
        async with JobClient(daemon.url, daemon.token) as client:
            _, events = await run(client, {"operation": "worker_spawn"})
            worker = data_of(events, "worker_spawn")
            os.kill(worker["pid"], signal.SIGSTOP)  # frozen: it cannot act on SIGTERM
            _, events = await run(client, {"operation": "worker_delete", "id": worker["id"]})
            assert events[-1].state == "completed"
            said = [e.human for e in events if isinstance(e, Narration)]
            assert f"{worker['id']} did not stop within 1 s; killing it" in said
            assert data_of(events, "worker_delete")["exit_code"] == -9
            assert not pid_alive(worker["pid"])
    finally:
        await asyncio.to_thread(daemon.stop)


async def test_a_token_for_a_gated_model_goes_through_the_queen_and_is_kept_nowhere(tmp_path, hub):
    from shared.operations import ModelDownload
    from tests.support.fake_hub import hub_in_thread
    from tests.support.processes import BIN, start_daemon

    secret = "hf_rbee_test_0123456789"
    hub.gated["test-org/tiny-GGUF"] = secret
    home = tmp_path / "home"
    with hub_in_thread(hub) as url:
        queen = await asyncio.to_thread(start_daemon, [str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0"],
                                        home, env={"HF_ENDPOINT": url, "HF_HOME": str(home / "hf")})
        try:
            async with JobClient(queen.url, queen.token) as client:
                job_id, events = await run(client, ModelDownload(model=HF_REF))
                assert next(e for e in events if isinstance(e, Error)).code == "HUB_AUTH"
                job_id, events = await run(client, ModelDownload(model=HF_REF, token=secret))
                assert events[-1].state == "completed", [e for e in events if isinstance(e, Error)]
                shown = await client.request("GET", f"/v1/jobs/{job_id}")
                assert shown["request"]["token"] == "(given, not shown)"
        finally:
            await asyncio.to_thread(queen.stop, 30)
    for path in home.rglob("*"):
        if path.is_file() and path.suffix != ".gguf":
            assert secret.encode() not in path.read_bytes(), f"the token is in {path}"
    assert secret not in "\n".join(queen.stderr_lines)


async def test_a_model_file_cut_short_is_refused_before_llama_cpp_and_marked(client, tmp_path):
    """A GGUF whose header is whole but whose tensor data stops early (a copy that did not finish): the
    spawn says BAD_GGUF before a worker starts, and the catalog keeps the entry, marked, for people to see."""
    from shared.builtin_model import builtin_model_path

    cut = tmp_path / "Cut.gguf"
    cut.write_bytes(builtin_model_path().read_bytes()[:-100_000])
    _, events = await run(client, {"operation": "model_download", "model": f"file:{cut}"})
    assert events[-1].state == "completed", events  # its first bytes say GGUF: catalogued
    _, events = await run(client, {"operation": "worker_spawn", "model": f"file:{cut}"})
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "BAD_GGUF" and "truncated" in error.message, error.message
    assert not [e for e in events if isinstance(e, Narration) and e.action == "worker_loading"]
    _, events = await run(client, {"operation": "model_get", "id": f"file:{cut}"})
    entry = data_of(events, "model_get")
    assert entry["state"] == "bad_gguf" and "truncated" in entry["problem"]
    _, events = await run(client, {"operation": "worker_spawn", "model": f"file:{cut}"})  # refused again, at once
    assert next(e for e in events if isinstance(e, Error)).code == "BAD_GGUF"


async def test_a_full_disk_is_said_as_such_and_leaves_nothing(hub_hive):
    """The hive's model directory on a 32 MB tmpfs: the 98 MB download fills it and fails as DISK_FULL."""
    import subprocess

    hive, _, _, home = hub_hive
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: mounting a small tmpfs must work there")
        pytest.skip("mounting a small tmpfs needs root")
    models = home / "data" / "models"
    models.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(models)], check=True)
    try:
        async with JobClient(hive.url, hive.token) as client:
            _, events = await run(client, {"operation": "model_download", "model": HF_REF})
            error = next(e for e in events if isinstance(e, Error))
            assert error.code == "DISK_FULL" and "is full" in error.message, error.message
            _, events = await run(client, {"operation": "model_list"})
            assert [m["id"] for m in data_of(events, "model_list")["models"]] == ["smollm2-135m"]
        left = [p for p in models.rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in left) < 1 << 20, left  # no partial model kept
    finally:
        subprocess.run(["umount", "-l", str(models)], check=True)
