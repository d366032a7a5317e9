"""The whole stack as real processes: queen -> local hive -> worker on the built-in model."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from shared.events import Data, End, Error, Narration, Token
from shared.job_client import JobClient
from shared.kv_cache import MAX_SLOTS
from shared.operations import Infer, Status
from tests.support.processes import children_of, pid_alive, start_queen
from tests.support.waiting import until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
HELLO = dict(prompt="The capital of France is", max_tokens=8, temperature=0)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
async def queen(home):
    daemon = await asyncio.to_thread(start_queen, home)
    yield daemon
    pids = children_of(daemon.proc.pid)
    await asyncio.to_thread(daemon.stop, 30)
    for pid in pids:  # every test must leave nothing behind
        await until(lambda pid=pid: not pid_alive(pid), what=f"process {pid} to exit with the queen")


@pytest.fixture
async def client(queen):
    async with JobClient(queen.url, queen.token) as client:
        yield client


async def run(client, operation):
    job = await client.submit(operation)
    return job.job_id, [e async for e in client.stream(job.job_id)]


def narrations(events):
    return [e.action for e in events if isinstance(e, Narration)]


def text_of(events):
    return "".join(e.t for e in events if isinstance(e, Token))


async def workers_of(queen):
    async with aiohttp.ClientSession() as session:
        async with session.get(queen.url + "/v1/workers", headers=queen.auth) as resp:
            return (await resp.json())["workers"]


async def test_cold_infer_starts_everything_then_reuses_the_warm_worker(client, queen):
    job_id, events = await run(client, Infer(**HELLO))
    actions = narrations(events)
    assert actions.index("hive_start") < actions.index("worker_spawn") < actions.index("worker_ready") \
        < actions.index("infer_start")
    assert any(isinstance(e, Narration) and e.actor == "hive" for e in events)  # woven in
    assert all(e.job_id == job_id for e in events if isinstance(e, Narration))
    end = events[-1]
    assert isinstance(end, End) and end.state == "completed"
    assert "Paris" in text_of(events) and end.stats["text"] == text_of(events)
    assert end.stats["tokens_out"] == 8 and end.stats["ttft_ms"] > 0

    _, again = await run(client, Infer(**HELLO))
    assert "worker_spawn" not in narrations(again) and "hive_start" not in narrations(again)
    assert "worker_found" in narrations(again)
    assert text_of(again) == text_of(events)
    async def one_ready_worker():  # its heartbeat saying "ready" again may come just after the end
        workers = await workers_of(queen)
        return len(workers) == 1 and workers[0]["state"] == "ready" and workers[0]["model"] == "smollm2-135m"

    await until(one_ready_worker, what="one ready worker for smollm2-135m")


async def test_forwarded_lists_arrive_as_data(client):
    await run(client, Infer(**HELLO))
    _, events = await run(client, {"operation": "model_list"})
    models = next(e.payload for e in events if isinstance(e, Data) and e.action == "model_list")["models"]
    assert [m["id"] for m in models] == ["smollm2-135m"]
    _, events = await run(client, {"operation": "worker_list"})
    workers = next(e.payload for e in events if isinstance(e, Data) and e.action == "worker_list")["workers"]
    assert len(workers) == 1 and workers[0]["state"] == "ready"
    _, events = await run(client, {"operation": "status"})
    status = next(e.payload for e in events if isinstance(e, Data))
    assert status["hives"][0]["alias"] == "localhost" and status["hives"][0]["state"] == "running"
    assert len(status["workers"]) == 1


async def test_cancel_mid_stream_stops_the_generation(client, queen):
    await run(client, Infer(**HELLO))  # warm
    job = await client.submit(Infer(prompt=COUNTING, max_tokens=1000, temperature=0))
    seen = []
    async for event in client.stream(job.job_id):
        seen.append(event)
        if isinstance(event, Token) and event.i == 2:
            assert (await client.cancel(job.job_id))["state"] == "cancelled"
    assert seen[-1].state == "cancelled"
    assert sum(isinstance(e, Token) for e in seen) < 30

    async def worker_free():
        return all(w["state"] == "ready" and w["leases"] == [] for w in await workers_of(queen))

    await until(worker_free, interval=0.1, what="the worker to be ready and unleased again")
    _, events = await run(client, Infer(**HELLO))
    assert events[-1].state == "completed" and "worker_found" in narrations(events)


async def test_worker_killed_mid_stream_the_answer_goes_on_on_a_fresh_one(client, queen):
    _, events = await run(client, Infer(**HELLO))
    victim = (await workers_of(queen))[0]
    job = await client.submit(Infer(prompt=COUNTING, max_tokens=200, temperature=0))
    seen = []
    async for event in client.stream(job.job_id):
        seen.append(event)
        if isinstance(event, Token) and event.i == 2:
            os.kill(victim["pid"], signal.SIGKILL)
    assert not [e for e in seen if isinstance(e, Error)] and seen[-1].state == "completed"
    said = narrations(seen)
    assert "infer_moved" in said and "worker_spawn" in said  # continued on a fresh worker, narrated
    assert seen[-1].stats["worker_id"] != victim["worker_id"]
    fresh = [w for w in await workers_of(queen) if w["state"] == "ready"]
    assert len(fresh) == 1 and fresh[0]["worker_id"] != victim["worker_id"]


async def drain_mid_answer(client, request, drain) -> tuple[list, list]:
    """Stream `request`; after its third token, run `drain` (an operation) alongside; (answer events, drain events)."""
    job = await client.submit(request)
    answer, drained = [], None
    async for event in client.stream(job.job_id):
        answer.append(event)
        if isinstance(event, Token) and event.i == 2:
            drained = asyncio.create_task(run(client, drain))
    assert drained is not None
    return answer, (await drained)[1]


async def test_draining_a_worker_lets_its_answer_finish_or_continues_it_elsewhere(client, queen):
    from shared.operations import HiveDrain, WorkerDrain

    request = Infer(prompt=COUNTING, max_tokens=120, temperature=0)
    _, reference = await run(client, request)
    expected = text_of(reference)
    first = (await workers_of(queen))[0]

    # A generous deadline: the answer finishes where it is, then the worker stops.
    answer, drained = await drain_mid_answer(client, request, WorkerDrain(id=first["worker_id"], deadline_s=60))
    assert answer[-1].state == "completed" and text_of(answer) == expected
    assert answer[-1].stats["worker_id"] == first["worker_id"]
    [result] = [e.payload for e in drained if isinstance(e, Data) and e.action.endswith("_drain")]
    assert result == {"worker_id": first["worker_id"], "hive_id": "localhost", "finished": 1, "moved": 0,
                      "state": "stopped"}
    assert "worker_drain" in narrations(drained)
    await until(lambda: not pid_alive(first["pid"]), what="the drained worker to exit")
    assert first["worker_id"] not in [w["worker_id"] for w in await workers_of(queen)]

    # A short one: past it, the answer continues on another worker, the same text as if nothing happened.
    _, events = await run(client, Infer(**HELLO))  # a new worker
    second = (await workers_of(queen))[0]
    answer, drained = await drain_mid_answer(client, request, WorkerDrain(id=second["worker_id"], deadline_s=0.2))
    story = [(e.action, e.human) for e in answer if isinstance(e, Narration)]
    assert not [e for e in answer if isinstance(e, Error)] and answer[-1].state == "completed", story
    assert text_of(answer) == expected
    assert "infer_moved" in narrations(answer) and answer[-1].stats["worker_id"] != second["worker_id"]
    [result] = [e.payload for e in drained if isinstance(e, Data) and e.action.endswith("_drain")]
    assert (result["finished"], result["moved"]) == (0, 1)
    await until(lambda: not pid_alive(second["pid"]), what="the drained worker to exit")

    # The hive: drained, stopped; the local one starts again on the next request.
    answer, drained = await drain_mid_answer(client, request, HiveDrain(alias="localhost", deadline_s=60))
    assert answer[-1].state == "completed" and text_of(answer) == expected
    [result] = [e.payload for e in drained if isinstance(e, Data) and e.action.endswith("_drain")]
    assert result == {"alias": "localhost", "workers": 1, "finished": 1, "moved": 0, "state": "stopped"}
    _, events = await run(client, Infer(**HELLO))
    assert events[-1].state == "completed" and "hive_start" in narrations(events)
    _, events = await run(client, WorkerDrain(id="worker-nope"))
    assert events[-1].state == "failed" and "No running worker 'worker-nope'" in events[-2].message


async def test_two_concurrent_requests_with_one_worker_allowed(home):
    queen = await asyncio.to_thread(start_queen, home, "--max-workers-per-hive", "1")
    try:
        async with JobClient(queen.url, queen.token) as client:
            first, second = await asyncio.gather(run(client, Infer(prompt=COUNTING, max_tokens=24, temperature=0)),
                                                 run(client, Infer(**HELLO)))
            assert first[1][-1].state == second[1][-1].state == "completed"
            assert "worker_wait" in narrations(first[1]) + narrations(second[1])
            assert len(await workers_of(queen)) == 1
    finally:
        await asyncio.to_thread(queen.stop, 30)


async def test_four_concurrent_requests_share_one_worker_s_slots(client, queen):
    await run(client, Infer(**HELLO))  # warm: one worker, four slots open, up to 16
    results = await asyncio.gather(*(run(client, Infer(prompt=p, max_tokens=12, temperature=0))
                                     for p in ("The capital of France is", COUNTING, "Once upon a time", "Hello")))
    assert all(events[-1].state == "completed" for _, events in results)
    assert all("worker_wait" not in narrations(events) for _, events in results)  # a free slot for each
    workers = await workers_of(queen)
    assert len(workers) == 1 and workers[0]["slots"] == MAX_SLOTS  # what it may grow to


async def test_a_job_waiting_for_a_slot_reads_as_queued(home):
    queen = await asyncio.to_thread(start_queen, home, "--worker-slots", "1")
    try:
        async with JobClient(queen.url, queen.token) as client:
            await run(client, Infer(**HELLO))  # warm: one worker, one slot
            busy = await client.submit(Infer(prompt=COUNTING, max_tokens=1000, temperature=0))
            waiting = await client.submit(Infer(**HELLO))

            async def queued():
                return (await client.get(waiting.job_id))["state"] == "queued"

            await until(queued, what="the second job to wait its turn as queued")
            await client.cancel(busy.job_id)
            events = [e async for e in client.stream(waiting.job_id)]
            assert events[-1].state == "completed" and "worker_wait" in narrations(events)
    finally:
        await asyncio.to_thread(queen.stop, 30)


async def test_requests_waiting_for_a_model_are_served_first_come_first_served(home):
    queen = await asyncio.to_thread(start_queen, home, "--worker-slots", "1")
    try:
        async with JobClient(queen.url, queen.token) as client:
            await run(client, Infer(**HELLO))  # warm: one worker, one slot
            busy = await client.submit(Infer(prompt=COUNTING, max_tokens=1000, temperature=0))
            waiting = []
            for _ in range(3):  # each one queued behind the ones before it
                waiting.append(await client.submit(Infer(**HELLO)))
                await until(lambda: _is_queued(client, waiting[-1].job_id), what="the job to wait its turn")
            _, status = await run(client, Status())
            assert next(e for e in status if isinstance(e, Data)).payload["waiting_for_a_worker"] == {"smollm2-135m": 3}
            await client.cancel(busy.job_id)
            results = []
            for job in waiting:  # (an async comprehension in a list comprehension needs 3.11)
                results.append([e async for e in client.stream(job.job_id)])
        assert all(events[-1].state == "completed" for events in results)
        said = [next(e.human for e in events if isinstance(e, Narration) and e.action == "worker_wait")
                for events in results]
        assert "ahead" not in said[0] and "(1 ahead in its queue)" in said[1] and "(2 ahead in its queue)" in said[2]
        started = [next(e.ts for e in events if isinstance(e, Narration) and e.action == "infer_start")
                   for events in results]
        assert started == sorted(started)
    finally:
        await asyncio.to_thread(queen.stop, 30)


async def _is_queued(client, job_id):
    return (await client.get(job_id))["state"] == "queued"


async def test_one_machine_switching_models_stops_the_idle_worker_of_the_other(client, queen, tmp_path):
    import shutil

    from shared.builtin_model import builtin_model_path

    await run(client, Infer(**HELLO))  # a worker of the built-in model on every core
    other = tmp_path / "other-model.gguf"
    shutil.copy(builtin_model_path(), other)
    _, events = await run(client, Infer(model=f"file:{other}", **HELLO))
    assert events[-1].state == "completed", [e.message for e in events if isinstance(e, Error)]
    evicted = [e.human for e in events if isinstance(e, Narration) and e.action == "evict"]
    assert len(evicted) == 1 and "smollm2-135m" in evicted[0], evicted
    assert [w["model"] for w in await workers_of(queen) if w["state"] in ("ready", "busy")] == [f"file:{other}"]


async def test_silent_worker_is_lost_and_never_scheduled(home):
    queen = await asyncio.to_thread(start_queen, home, "--heartbeat-timeout", "1.5")
    try:
        async with JobClient(queen.url, queen.token) as client:
            await run(client, Infer(**HELLO))
            frozen = (await workers_of(queen))[0]
            os.kill(frozen["pid"], signal.SIGSTOP)  # alive, but silent
            try:
                async def lost():
                    states = {w["worker_id"]: w["state"] for w in await workers_of(queen)}
                    return states[frozen["worker_id"]] == "lost"

                await until(lost, interval=0.1, what="the silent worker to be marked lost (heartbeat timeout 1.5 s)")
                _, events = await run(client, Infer(**HELLO))
                assert events[-1].state == "completed" and "worker_spawn" in narrations(events)
            finally:
                os.kill(frozen["pid"], signal.SIGCONT)
    finally:
        await asyncio.to_thread(queen.stop, 30)


async def test_idle_workers_are_stopped(home):
    queen = await asyncio.to_thread(start_queen, home, "--worker-idle-timeout", "1")
    try:
        async with JobClient(queen.url, queen.token) as client:
            await run(client, Infer(**HELLO))
        pid = (await workers_of(queen))[0]["pid"]

        async def stopped():
            return await workers_of(queen) == [] and not pid_alive(pid)

        await until(stopped, interval=0.1, what="the idle worker to be stopped and forgotten (idle timeout 1 s)")
    finally:
        await asyncio.to_thread(queen.stop, 30)


async def test_history_survives_a_restart(home):
    queen = await asyncio.to_thread(start_queen, home)
    async with JobClient(queen.url, queen.token) as client:
        job_id, events = await run(client, Infer(**HELLO))
        failed_id, _ = await run(client, Infer(prompt="x", hive_id="nowhere"))
    await asyncio.to_thread(queen.stop, 30)
    queen = await asyncio.to_thread(start_queen, home)
    try:
        async with JobClient(queen.url, queen.token) as client:
            record = await client.get(job_id)
            assert record["state"] == "completed" and record["operation"] == "infer"
            assert record["result"]["text"] == text_of(events) and record["request"]["prompt"] == HELLO["prompt"]
            failed = await client.get(failed_id)
            assert failed["state"] == "failed" and failed["error"]["code"] == "UNKNOWN_HIVE"
            assert {job_id, failed_id} <= {j["job_id"] for j in await client.list()}
    finally:
        await asyncio.to_thread(queen.stop, 30)


async def test_unknown_hive_fails_clearly(client):
    _, events = await run(client, Infer(prompt="hi", hive_id="nowhere"))
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "UNKNOWN_HIVE" and "Unknown hive 'nowhere'. Known hives: localhost" in error.message
    assert events[-1] == End(state="failed")


async def test_hive_operations_on_localhost(client):
    _, events = await run(client, {"operation": "hive_list"})
    hives = next(e.payload for e in events if isinstance(e, Data))["hives"]
    assert [(h["alias"], h["state"]) for h in hives] == [("localhost", "stopped")]
    _, events = await run(client, {"operation": "hive_start", "alias": "localhost"})
    assert next(e.payload for e in events if isinstance(e, Data))["state"] == "running"
    _, events = await run(client, {"operation": "hive_refresh_capabilities", "alias": "localhost"})
    assert next(e.payload for e in events if isinstance(e, Data))["cpu"]["cores"] >= 1
    _, events = await run(client, {"operation": "hive_stop", "alias": "localhost"})
    assert next(e.payload for e in events if isinstance(e, Data))["state"] == "stopped"
    _, events = await run(client, {"operation": "hive_status", "alias": "localhost"})
    assert next(e.payload for e in events if isinstance(e, Data))["state"] == "stopped"


async def test_shutdown_and_sigkill_leave_no_process_behind(home):
    for how in ("shutdown", "sigkill"):
        queen = await asyncio.to_thread(start_queen, home)
        async with JobClient(queen.url, queen.token) as client:
            await run(client, Infer(**HELLO))
        pids = children_of(queen.proc.pid)
        assert len(pids) >= 2  # the hive and its worker
        if how == "shutdown":
            async with aiohttp.ClientSession() as session:
                async with session.post(queen.url + "/v1/shutdown", headers=queen.auth) as resp:
                    assert resp.status == 202
            assert await asyncio.to_thread(queen.proc.wait, 30) == 0
        else:
            queen.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(queen.proc.wait, 10)
        await until(lambda pids=pids: not any(pid_alive(p) for p in pids), timeout=15,
                    what=lambda pids=pids, how=how: f"every child to exit after {how} (left: {[p for p in pids if pid_alive(p)]})")


async def test_cancelling_a_queen_job_cancels_the_download_it_drives(tmp_path, aiohttp_server):
    from shared.builtin_model import builtin_model_path
    from tests.support.fake_hub import FakeHub
    from tests.support.processes import BIN, start_daemon

    hub = FakeHub({"test-org/tiny-GGUF/m.gguf": builtin_model_path()}, bytes_per_s=10e6)  # ~10 s in all
    server = await aiohttp_server(hub.app())
    home = tmp_path / "home"
    queen = await asyncio.to_thread(
        start_daemon, [str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0"], home,
        env={"HF_ENDPOINT": str(server.make_url("")).rstrip("/"), "HF_HOME": str(home / "hf")})
    try:
        async with JobClient(queen.url, queen.token) as client:
            job = await client.submit({"operation": "model_download", "model": "hf:test-org/tiny-GGUF:m.gguf"})
            async for event in client.stream(job.job_id):
                if isinstance(event, Data) and event.action == "download_progress" and event.payload["done"] > 3e6:
                    assert (await client.cancel(job.job_id))["state"] == "cancelled"
            hive_pid = next(h["pid"] for h in (await client.request("GET", "/v1/hives"))["hives"])
            # the hive's job is cancelled too: its downloader process is gone
            await until(lambda: children_of(hive_pid) == [], interval=0.1,
                        what=lambda: f"the hive's downloader to be gone (children: {children_of(hive_pid)})")
            _, events = await run(client, {"operation": "model_list"})
            models = next(e.payload for e in events if isinstance(e, Data))["models"]
            assert [m["id"] for m in models] == ["smollm2-135m"]
    finally:
        await asyncio.to_thread(queen.stop, 30)
