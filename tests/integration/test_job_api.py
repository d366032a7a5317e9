"""The shared job API on a real aiohttp server: dual call, replay, resume, cancel, and every bad input."""

from __future__ import annotations

import asyncio
import json

import pytest

from shared.job_registry import JobLimits
from shared.operations import HIVE_OPERATIONS
from tests.integration.conftest import AUTH, TOKEN
from tests.integration.sse import payloads, read_sse
from tests.support.waiting import until


async def submit(client, body):
    resp = await client.post("/v1/jobs", json=body, headers=AUTH)
    assert resp.status == 201, await resp.text()
    data = await resp.json()
    assert data["sse_url"] == f"/v1/jobs/{data['job_id']}/stream"
    assert data["job_id"].startswith("job-")
    return data["job_id"]


async def stream(client, job_id, headers=None, limit=None):
    resp = await client.get(f"/v1/jobs/{job_id}/stream", headers={**AUTH, **(headers or {})})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    messages = await read_sse(resp, limit)
    if limit:
        resp.close()
    return messages


def infer(tokens, delay=0.0):
    return {"operation": "infer", "prompt": f"tokens={tokens} delay={delay}"}


async def job_state(client, job_id):
    resp = await client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def until_tokens_flow(client, job_id):
    """Wait until the job runs and has emitted a token (its first event is the narration)."""

    async def flowing():
        state = await job_state(client, job_id)
        return state["state"] == "running" and state["events"] >= 2

    await until(flowing, what=f"{job_id} to be running with a token out")


async def test_dual_call_streams_the_whole_story(client):
    job_id = await submit(client, infer(5))
    messages = await stream(client, job_id)
    assert messages[-1] == (None, "[DONE]")
    ids = [int(i) for i, d in messages[:-1]]
    assert ids == list(range(len(ids)))
    events = payloads(messages)
    assert events[0]["type"] == "narration" and events[0]["actor"] == "queen"
    assert events[0]["job_id"] == job_id and events[0]["human"] == "Generating 5 tokens"
    assert [e["t"] for e in events if e["type"] == "token"] == [f"t{i} " for i in range(5)]
    assert events[-1] == {"type": "end", "state": "completed", "tokens_out": 5}
    state = await (await client.get(f"/v1/jobs/{job_id}", headers=AUTH)).json()
    assert state["state"] == "completed" and state["operation"] == "infer"
    assert state["result"] == {"tokens_out": 5} and state["finished_at"] >= state["started_at"]


async def test_late_subscriber_gets_everything_and_two_subscribers_agree(client):
    job_id = await submit(client, infer(40, 0.005))
    live_a, live_b = await asyncio.gather(stream(client, job_id), stream(client, job_id))
    late = await stream(client, job_id)  # after the job has ended
    assert live_a == live_b == late
    assert len(payloads(late)) == 1 + 40 + 1


async def test_last_event_id_resume_loses_and_repeats_nothing(client):
    job_id = await submit(client, infer(30, 0.01))
    first = await stream(client, job_id, limit=7)  # drop the connection after 7 events
    assert len(first) == 7
    last_id = first[-1][0]
    rest = await stream(client, job_id, headers={"Last-Event-ID": last_id})
    whole = await stream(client, job_id)
    assert first + rest == whole


async def test_cancel_mid_job_ends_cancelled_and_runs_cleanup(client, executor):
    job_id = await submit(client, infer(1000, 0.01))
    reader = asyncio.create_task(stream(client, job_id))
    await until_tokens_flow(client, job_id)
    resp = await client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["state"] == "cancelled"
    messages = await asyncio.wait_for(reader, 5)
    assert messages[-1] == (None, "[DONE]")
    assert payloads(messages)[-1] == {"type": "end", "state": "cancelled"}
    assert 0 < len([e for e in payloads(messages) if e["type"] == "token"]) < 1000
    assert executor.cleaned_up == [job_id]
    again = await client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "JOB_CONFLICT"


@pytest.mark.usefixtures("slow")  # runs a process
async def test_failures_become_error_events_not_tracebacks(client):
    job_id = await submit(client, {"operation": "hive_get", "alias": "down"})
    events = payloads(await stream(client, job_id))
    assert events == [
        {"type": "error", "code": "HIVE_UNREACHABLE", "message": "Hive 'down' does not answer at 127.0.0.1:1.",
         "status": 500},  # the HTTP status the failure means, kept by whoever forwards or answers it
        {"type": "end", "state": "failed"},
    ]
    bug_id = await submit(client, {"operation": "hive_get", "alias": "bug"})
    error = payloads(await stream(client, bug_id))[0]
    assert error["code"] == "INTERNAL"
    assert "ValueError: something our code did not expect" in error["message"]
    assert "Traceback" not in error["message"]
    state = await (await client.get(f"/v1/jobs/{bug_id}", headers=AUTH)).json()
    assert state["state"] == "failed" and state["error"]["code"] == "INTERNAL"


async def test_data_events_carry_structured_results(client):
    job_id = await submit(client, {"operation": "hive_get", "alias": "gpu1"})
    events = payloads(await stream(client, job_id))
    assert events[0] == {"type": "data", "action": "hive_get", "payload": {"alias": "gpu1", "state": "running"}}


async def test_list_jobs_newest_first_read_only_ones_when_asked(client):
    a = await submit(client, infer(1))
    b = await submit(client, infer(1))
    looked = await submit(client, {"operation": "status"})  # read-only: listed only with all=true
    jobs = (await (await client.get("/v1/jobs", headers=AUTH)).json())["jobs"]
    assert [j["job_id"] for j in jobs] == [b, a]
    everything = (await (await client.get("/v1/jobs?all=true", headers=AUTH)).json())["jobs"]
    assert [j["job_id"] for j in everything] == [looked, b, a]


async def test_client_that_disconnects_does_not_stop_the_job_or_others(client):
    job_id = await submit(client, infer(50, 0.01))
    other = asyncio.create_task(stream(client, job_id))
    quitter = await stream(client, job_id, limit=3)
    assert len(quitter) == 3
    messages = await asyncio.wait_for(other, 10)
    assert payloads(messages)[-1]["state"] == "completed"
    assert len([e for e in payloads(messages) if e["type"] == "token"]) == 50


async def test_slow_reader_blocks_neither_the_job_nor_other_readers(client):
    """A reader that never reads: the job still finishes and a normal reader still gets everything."""
    job_id = await submit(client, infer(20000, 0.0))  # ~0.6 MB of events, far beyond socket buffers
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    await writer.drain()
    try:
        messages = await asyncio.wait_for(stream(client, job_id), 30)
        assert len([e for e in payloads(messages) if e["type"] == "token"]) == 20000
        state = await (await client.get(f"/v1/jobs/{job_id}", headers=AUTH)).json()
        assert state["state"] == "completed"
    finally:
        writer.close()


async def test_event_log_is_bounded_and_readers_are_told_what_was_dropped(aiohttp_client, make_job_app):
    client = await aiohttp_client(make_job_app(limits=JobLimits(max_events=100)))
    job_id = await submit(client, infer(1000))

    async def completed():
        return (await job_state(client, job_id))["state"] == "completed"

    await until(completed, what=f"{job_id} to complete")
    events = payloads(await stream(client, job_id))
    assert len(events) <= 101
    assert events[0]["action"] == "events_dropped" and events[0]["level"] == "warn"
    assert events[-1]["state"] == "completed"
    tokens = [e["i"] for e in events if e["type"] == "token"]
    assert tokens == list(range(tokens[0], 1000))  # contiguous up to the end


async def test_finished_jobs_are_evicted_after_retention(aiohttp_client, make_job_app):
    client = await aiohttp_client(make_job_app(limits=JobLimits(retention_s=0.2)))
    job_id = await submit(client, {"operation": "status"})
    await stream(client, job_id)

    async def evicted():
        return (await client.get(f"/v1/jobs/{job_id}", headers=AUTH)).status == 404

    await until(evicted, timeout=10, interval=0.05, what=f"{job_id} to be evicted (retention 0.2 s)")


# --- bad input ---------------------------------------------------------------------------------------

async def error_of(resp, status):
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    "raw, code, fragment",
    [
        (b"{not json", "INVALID_REQUEST", "The body is not valid JSON"),
        (b"\xff\xfe", "INVALID_REQUEST", "not valid JSON"),
        (b"[1, 2]", "INVALID_REQUEST", "must be a JSON object"),
        (b"[" * 100_000, "INVALID_REQUEST", "The body is not valid JSON"),  # too deep to decode: no 500
        (b'{"operation": "fly"}', "UNKNOWN_OPERATION", "Unknown operation 'fly'. Valid operations: embed, hive_drain, hive_get"),
        (b'{"operation": "infer", "prompt": 7}', "INVALID_REQUEST", "Field 'prompt' of operation 'infer' must be a string"),
        (b'{"operation": "infer"}', "INVALID_REQUEST", "needs exactly one of 'prompt' (plain text) and 'messages'"),
        (b'{"operation": "infer", "prompt": "x", "bogus": 1}', "INVALID_REQUEST", "Unknown field 'bogus'"),
    ],
)
async def test_bad_bodies_get_400_naming_the_problem(client, raw, code, fragment):
    resp = await client.post("/v1/jobs", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    error = await error_of(resp, 400)
    assert error["code"] == code
    assert fragment in error["message"]


async def test_huge_body_is_refused(aiohttp_client, make_job_app):
    client = await aiohttp_client(make_job_app(max_body_bytes=4096))
    body = json.dumps({"operation": "infer", "prompt": "x" * 10_000})
    error = await error_of(await client.post("/v1/jobs", data=body, headers=AUTH), 413)
    assert error["code"] == "BODY_TOO_LARGE" and "too large" in error["message"]


async def test_operations_this_server_does_not_handle(aiohttp_client, make_job_app):
    client = await aiohttp_client(make_job_app(operations=HIVE_OPERATIONS))
    resp = await client.post("/v1/jobs", json={"operation": "hive_start", "alias": "x"}, headers=AUTH)
    error = await error_of(resp, 400)
    assert "Unknown operation 'hive_start' here" in error["message"] and "model_list" in error["message"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/jobs/job-nope"), ("GET", "/v1/jobs/job-nope/stream"), ("DELETE", "/v1/jobs/job-nope"),
])
async def test_unknown_job_is_404(client, method, path):
    error = await error_of(await client.request(method, path, headers=AUTH), 404)
    assert error["code"] == "JOB_NOT_FOUND" and "job-nope" in error["message"]


@pytest.mark.parametrize("headers, fragment", [
    ({}, "Missing bearer token"),
    ({"Authorization": "Bearer wrong"}, "Wrong bearer token"),
    ({"Authorization": f"Basic {TOKEN}"}, "Missing bearer token"),
])
async def test_token_is_required_everywhere_but_health(client, headers, fragment):
    for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/x/stream"),
                         ("DELETE", "/v1/jobs/x")]:
        error = await error_of(await client.request(method, path, headers=headers), 401)
        assert error["code"] == "UNAUTHORIZED" and fragment in error["message"]
    health = await client.get("/health")
    assert health.status == 200 and (await health.json())["status"] == "ok"


async def test_bad_last_event_id_and_unknown_routes(client):
    job_id = await submit(client, {"operation": "status"})
    resp = await client.get(f"/v1/jobs/{job_id}/stream", headers={**AUTH, "Last-Event-ID": "abc"})
    assert "Last-Event-ID must be an event number" in (await error_of(resp, 400))["message"]
    assert (await error_of(await client.get("/v1/nothing", headers=AUTH), 404))["code"] == "NOT_FOUND"
    assert (await error_of(await client.put("/v1/jobs", headers=AUTH), 405))["code"] == "METHOD_NOT_ALLOWED"


async def test_shutdown_ends_running_jobs_and_open_streams(aiohttp_server, make_job_app):
    import aiohttp

    server = await aiohttp_server(make_job_app())
    async with aiohttp.ClientSession() as session:
        resp = await session.post(server.make_url("/v1/jobs"), json=infer(10_000, 0.01), headers=AUTH)
        job_id = (await resp.json())["job_id"]
        stream_resp = await session.get(server.make_url(f"/v1/jobs/{job_id}/stream"), headers=AUTH)
        reader = asyncio.create_task(read_sse(stream_resp))

        async def tokens_flow():
            async with session.get(server.make_url(f"/v1/jobs/{job_id}"), headers=AUTH) as resp:
                state = await resp.json()
            return state["state"] == "running" and state["events"] >= 2

        await until(tokens_flow, what=f"{job_id} to be running with a token out")
        await asyncio.wait_for(server.close(), 10)
        messages = await asyncio.wait_for(reader, 5)
    events = payloads(messages)
    assert events and events[-1] == {"type": "end", "state": "cancelled"}
