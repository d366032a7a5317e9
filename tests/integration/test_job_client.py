"""The shared job client against a real server: typed events, resume after drops, clear errors."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from shared.errors import ServerError, ServerUnreachable, StreamTimeout
from shared.events import Data, End, Error, Narration, Token
from shared.job_client import JobClient
from shared.operations import Infer, Status
from tests.integration.conftest import TOKEN


@pytest.fixture
async def server(aiohttp_server, make_job_app):
    return await aiohttp_server(make_job_app())


def url_of(server):
    return str(server.make_url("")).rstrip("/")


async def test_submit_and_stream_typed_events(server):
    async with JobClient(url_of(server), TOKEN) as client:
        job = await client.submit(Infer(prompt="tokens=4"))
        events = [e async for e in client.stream(job.job_id)]
        assert isinstance(events[0], Narration) and events[0].job_id == job.job_id
        assert [e for e in events if isinstance(e, Token)] == [Token(t=f"t{i} ", i=i) for i in range(4)]
        assert events[-1] == End(state="completed", stats={"tokens_out": 4})
        assert (await client.get(job.job_id))["state"] == "completed"
        assert [j["job_id"] for j in await client.list()] == [job.job_id]
        data_job = await client.submit({"operation": "hive_get", "alias": "gpu1"})
        assert [e async for e in client.stream(data_job.job_id)][0] == \
            Data(action="hive_get", payload={"alias": "gpu1", "state": "running"})


async def test_cancel_through_the_client(server):
    async with JobClient(url_of(server), TOKEN) as client:
        job = await client.submit(Infer(prompt="tokens=1000 delay=0.01"))
        seen = []
        async for event in client.stream(job.job_id):
            seen.append(event)
            if len(seen) == 5:
                assert (await client.cancel(job.job_id))["state"] == "cancelled"
        assert seen[-1] == End(state="cancelled")


async def test_failed_job_streams_its_error(server):
    async with JobClient(url_of(server), TOKEN) as client:
        job = await client.submit({"operation": "hive_get", "alias": "down"})
        events = [e async for e in client.stream(job.job_id)]
        assert events == [Error(code="HIVE_UNREACHABLE", message="Hive 'down' does not answer at 127.0.0.1:1."),
                          End(state="failed")]


async def test_server_errors_keep_their_code_and_message(server):
    async with JobClient(url_of(server), TOKEN) as client:
        with pytest.raises(ServerError) as err:
            await client.submit({"operation": "fly"})
        assert err.value.status == 400 and err.value.code == "UNKNOWN_OPERATION"
        assert "Unknown operation 'fly'" in err.value.message
        with pytest.raises(ServerError) as err:
            [e async for e in client.stream("job-missing")]
        assert err.value.status == 404 and err.value.code == "JOB_NOT_FOUND"
    async with JobClient(url_of(server), "wrong-token") as client:
        with pytest.raises(ServerError) as err:
            await client.submit(Status())
        assert err.value.status == 401 and "Wrong bearer token" in err.value.message


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_server_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    async with JobClient(url, TOKEN, max_resumes=1, resume_backoff=0.01) as client:
        with pytest.raises(ServerUnreachable) as err:
            await client.submit(Status())
        assert f"Nothing answers at {url}" in str(err.value)
        with pytest.raises(ServerUnreachable):
            [e async for e in client.stream("job-x")]


async def test_a_server_that_never_answers_times_out():
    async def silent(reader, writer):
        await asyncio.sleep(30)

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with JobClient(f"http://127.0.0.1:{port}", TOKEN, request_timeout=0.3) as client:
            with pytest.raises(StreamTimeout, match="got no answer within 0.3 s"):
                await client.submit(Status())
    finally:
        srv.close()


class DroppingProxy:
    """A TCP proxy that cuts each of the first `drops` stream connections after `cut_after` bytes."""

    def __init__(self, target_port: int, cut_after: int, drops: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.drops_left = drops
        self.stream_connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, client_reader, client_writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        request = await client_reader.readuntil(b"\r\n\r\n")
        # a GET of a stream, or a POST answered with its job's stream
        is_stream = b"/stream" in request.split(b"\r\n", 1)[0] or b"accept: text/event-stream" in request.lower()
        cut = None
        if is_stream:
            self.stream_connections += 1
            if self.drops_left > 0:
                self.drops_left -= 1
                cut = self.cut_after
        up_writer.write(request)

        async def pump_up():
            try:
                while data := await client_reader.read(65536):
                    up_writer.write(data)
            except ConnectionError:
                pass

        pump = asyncio.create_task(pump_up())
        sent = 0
        try:
            while data := await up_reader.read(512):
                if cut is not None and sent + len(data) >= cut:
                    client_writer.write(data[: cut - sent])
                    await client_writer.drain()
                    client_writer.transport.abort()  # the connection dies mid-stream
                    break
                client_writer.write(data)
                sent += len(data)
                await client_writer.drain()
        finally:
            pump.cancel()
            up_writer.close()
            client_writer.close()


async def test_dropped_stream_resumes_with_last_event_id(server):
    proxy = DroppingProxy(server.port, cut_after=1500, drops=2)
    port = await proxy.start()
    try:
        async with JobClient(url_of(server), TOKEN) as direct:
            job = await direct.submit(Infer(prompt="tokens=200 delay=0.002"))
            expected = [e async for e in direct.stream_with_ids(job.job_id)]
        async with JobClient(f"http://127.0.0.1:{port}", TOKEN, resume_backoff=0.01) as via_proxy:
            got = [e async for e in via_proxy.stream_with_ids(job.job_id)]
        assert proxy.stream_connections == 3  # two cut, the third finished
        assert got == expected  # nothing lost, nothing repeated
    finally:
        proxy.server.close()


async def test_run_submits_and_streams_in_one_request(aiohttp_server, make_job_app):
    app = make_job_app()
    requests = []

    @web.middleware
    async def count(request, handler):
        requests.append(f"{request.method} {request.path}")
        return await handler(request)

    app.middlewares.insert(0, count)
    server = await aiohttp_server(app)
    async with JobClient(url_of(server), TOKEN) as client:
        job = client.run(Infer(prompt="tokens=4"))
        assert job.job_id is None
        events = [e async for e in job]
        assert requests == ["POST /v1/jobs"]  # no second request for the stream
        assert job.job_id is not None and isinstance(events[0], Narration) and events[0].job_id == job.job_id
        assert [e for e in events if isinstance(e, Token)] == [Token(t=f"t{i} ", i=i) for i in range(4)]
        assert events[-1] == End(state="completed", stats={"tokens_out": 4})
        # the same story a GET of the stream tells afterwards
        assert [e async for e in client.stream(job.job_id)] == events


async def test_run_keeps_errors_at_submit_and_failures_in_the_stream(server):
    async with JobClient(url_of(server), TOKEN) as client:
        job = client.run({"operation": "fly"})
        with pytest.raises(ServerError) as err:
            [e async for e in job]
        assert err.value.status == 400 and err.value.code == "UNKNOWN_OPERATION" and job.job_id is None
        failing = client.run({"operation": "hive_get", "alias": "down"})
        assert [e async for e in failing] == [
            Error(code="HIVE_UNREACHABLE", message="Hive 'down' does not answer at 127.0.0.1:1."), End(state="failed")]
    url = f"http://127.0.0.1:{free_port()}"
    async with JobClient(url, TOKEN) as client:
        job = client.run(Status())
        with pytest.raises(ServerUnreachable, match=f"Nothing answers at {url}"):
            [e async for e in job]
        assert job.job_id is None


async def test_run_resumes_a_dropped_stream_with_get(server):
    proxy = DroppingProxy(server.port, cut_after=1500, drops=1)
    port = await proxy.start()
    try:
        async with JobClient(f"http://127.0.0.1:{port}", TOKEN, resume_backoff=0.01) as via_proxy:
            job = via_proxy.run(Infer(prompt="tokens=200 delay=0.002"))
            got = [e async for e in job]
        async with JobClient(url_of(server), TOKEN) as direct:
            expected = [e async for e in direct.stream(job.job_id)]
        assert proxy.stream_connections == 2  # the POST cut, then one GET that finished
        assert got == expected  # nothing lost, nothing repeated
    finally:
        proxy.server.close()


async def test_run_follows_a_server_that_answers_the_job_id(aiohttp_server, make_job_app):
    """A daemon from before streams were answered at once: its 201 {job_id} is followed with GET."""
    app = make_job_app()

    @web.middleware
    async def forget_accept(request, handler):
        return await handler(request.clone(headers={k: v for k, v in request.headers.items() if k.lower() != "accept"}))

    app.middlewares.insert(0, forget_accept)
    server = await aiohttp_server(app)
    async with JobClient(url_of(server), TOKEN) as client:
        job = client.run(Infer(prompt="tokens=3"))
        events = [e async for e in job]
        assert [e for e in events if isinstance(e, Token)] == [Token(t=f"t{i} ", i=i) for i in range(3)]
        assert events[-1] == End(state="completed", stats={"tokens_out": 3}) and job.job_id is not None
