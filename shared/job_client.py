"""Client side of the job API: submit an operation, follow its events, resume, cancel.

Used by the keeper (to the queen) and by the queen (to hives). Every failure surfaces as an RbeeError
whose message says which server and what went wrong; a dropped stream is resumed with Last-Event-ID so
the caller sees every event exactly once.
"""

from __future__ import annotations

import asyncio
import builtins
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, AsyncIterator, Mapping
from urllib.parse import quote

import aiohttp
from aiohttp_sse_client.client import EventSource
from multidict import CIMultiDict

from shared.client import DaemonClient, server_error, unreachable
from shared.errors import ServerError, StreamTimeout
from shared.events import DONE, JOB_ID_HEADER, Event, decode_event
from shared.wire import WireMessage


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    sse_url: str


class JobClient(DaemonClient):
    """One server's job API. Use as `async with JobClient(url, token) as client:`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        stream_idle_timeout: float = 12.0,  # the server pings every 5 s; silence this long is a hung server
        max_resumes: int = 1,  # a dropped stream is resumed (Last-Event-ID); a hung server is given up on
        resume_backoff: float = 0.2,
        path: str = "/v1/jobs",  # a worker serves the same API at /v1/inference
        **options: Any,  # session, connect_timeout, request_timeout: see DaemonClient
    ) -> None:
        super().__init__(base_url, token, **options)
        self.path = path
        self._stream_idle_timeout = stream_idle_timeout
        self._max_resumes = max_resumes
        self._resume_backoff = resume_backoff

    async def submit(self, operation: WireMessage | Mapping[str, Any]) -> SubmittedJob:
        payload = operation.to_dict() if isinstance(operation, WireMessage) else dict(operation)
        return self.submitted(self.base_url + self.path, await self.request("POST", self.path, payload))

    @staticmethod
    def submitted(url: str, body: Any) -> SubmittedJob:
        try:
            return SubmittedJob(job_id=str(body["job_id"]), sse_url=str(body["sse_url"]))
        except (KeyError, TypeError) as exc:
            raise ServerError(f"{url} answered {body!r}, not a job.", code="BAD_RESPONSE", status=502) from exc

    def run(self, operation: WireMessage | Mapping[str, Any]) -> "StreamedJob":
        """Submit and read the stream in one request: `async for event in client.run(op)`; its
        `job_id` is known once the server took the job (for a cancel)."""
        payload = operation.to_dict() if isinstance(operation, WireMessage) else dict(operation)
        return StreamedJob(self, payload)

    async def get(self, job_id: str) -> dict[str, Any]:
        return await self.request("GET", f"{self.path}/{job_id}")

    async def list(self, *, all: bool = False) -> list[dict[str, Any]]:
        """The newest jobs; read-only ones (lists, status) only with `all`."""
        return (await self.request("GET", self.path + ("?all=true" if all else "")))["jobs"]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self.request("DELETE", f"{self.path}/{job_id}")

    # -- the queen's conversations (ids by unique prefix) --------------------------------------------------

    async def conversations(self) -> builtins.list[dict[str, Any]]:
        return (await self.request("GET", "/v1/conversations"))["conversations"]

    async def conversation(self, conv_id: str) -> dict[str, Any]:
        """One conversation with its messages."""
        return (await self.request("GET", f"/v1/conversations/{quote(conv_id, safe='')}"))["conversation"]

    async def new_conversation(self, model: str | None = None, hive_id: str | None = None,
                               title: str | None = None) -> dict[str, Any]:
        body = {"model": model, "hive_id": hive_id, "title": title}
        return (await self.request("POST", "/v1/conversations", body))["conversation"]

    async def update_conversation(self, conv_id: str, **fields: str | None) -> dict[str, Any]:
        return (await self.request("PATCH", f"/v1/conversations/{quote(conv_id, safe='')}", fields))["conversation"]

    async def delete_conversation(self, conv_id: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/v1/conversations/{quote(conv_id, safe='')}")

    # -- the queen's API keys (admin) ----------------------------------------------------------------------

    async def create_key(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """{"key": its settings, "secret": the key itself, shown this once}."""
        return await self.request("POST", "/v1/keys", dict(settings))

    async def keys(self) -> builtins.list[dict[str, Any]]:
        return (await self.request("GET", "/v1/keys"))["keys"]

    async def key_usage(self, name: str | None = None, since: str | None = None) -> builtins.list[dict[str, Any]]:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in (("name", name), ("since", since)) if v)
        return (await self.request("GET", "/v1/keys/usage" + (f"?{query}" if query else "")))["usage"]

    async def revoke_key(self, name: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/v1/keys/{quote(name, safe='')}")

    async def rotate_key(self, name: str) -> dict[str, Any]:
        return await self.request("POST", f"/v1/keys/{quote(name, safe='')}/rotate")

    # -- streams ----------------------------------------------------------------------------------------

    async def stream(self, job_id: str, *, after: int = -1) -> AsyncIterator[Event]:
        """Yield the job's events until `[DONE]`, resuming after drops without loss or repeats."""
        async for _, event in self.stream_with_ids(job_id, after=after):
            yield event

    async def stream_with_ids(self, job_id: str, *, after: int = -1) -> AsyncIterator[tuple[int, Event]]:
        url = f"{self.base_url}{self.path}/{job_id}/stream"
        last = after
        failures = 0
        while True:
            headers = CIMultiDict(self._headers())  # the library adds its own Last-Event-Id on reconnects
            if last >= 0:
                headers["Last-Event-ID"] = str(last)
            timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout,
                                            sock_read=self._stream_idle_timeout)
            try:
                async with EventSource(url, session=self.session, headers=headers, timeout=timeout,
                                       max_connect_retry=0,
                                       reconnection_time=timedelta(seconds=self._resume_backoff)) as source:
                    async for message in source:
                        if message.data == DONE:
                            return
                        if message.last_event_id:
                            seq = int(message.last_event_id)
                            if seq <= last:
                                continue  # already delivered before a reconnect
                            last = seq
                        failures = 0
                        yield last, decode_event(message.data)
                return  # the server closed the stream cleanly without [DONE] and did not come back
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failures += 1
                if failures > self._max_resumes:
                    if isinstance(exc, asyncio.TimeoutError):
                        raise StreamTimeout(f"The stream of {job_id} at {self.base_url} went silent for "
                                            f"{self._stream_idle_timeout:g} s, {failures} times.") from exc
                    raise unreachable(self.base_url, exc) from exc
                await asyncio.sleep(self._resume_backoff * failures)
            except ConnectionError as exc:
                # aiohttp-sse-client raises a bare ConnectionError for an HTTP error status; ask the
                # server again for the JSON error it answers with, so the caller gets its message.
                await self.get(job_id)  # raises the server's error (404 unknown job, 401, ...)
                raise ServerError(f"The stream of {job_id} at {self.base_url} failed: {exc}.") from exc



class StreamedJob:
    """A job submitted with `Accept: text/event-stream`: the POST's answer is the job's stream. A stream
    that drops after the server took the job is resumed with GET and Last-Event-ID, as `stream` does."""

    def __init__(self, client: JobClient, payload: dict[str, Any]) -> None:
        self.client = client
        self.payload = payload
        self.job_id: str | None = None  # set once the server answered with the stream

    async def __aiter__(self) -> AsyncIterator[Event]:
        client = self.client
        url = client.base_url + client.path
        timeout = aiohttp.ClientTimeout(total=None, connect=client._connect_timeout,
                                        sock_read=client._stream_idle_timeout)
        headers = {**client._headers(), "Accept": "text/event-stream"}
        last = -1
        try:
            async with client.session.post(url, json=self.payload, headers=headers, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise server_error(resp.status, await resp.read())
                if resp.content_type != "text/event-stream":  # an rbee from before: it answers the job's id
                    self.job_id = client.submitted(url, await resp.json()).job_id
                else:
                    self.job_id = resp.headers.get(JOB_ID_HEADER)
                    if self.job_id is None:
                        raise ServerError(f"POST {url} answered a stream without naming its job "
                                          f"({JOB_ID_HEADER}).", code="BAD_RESPONSE", status=502)
                    async for seq, text in _sse_messages(resp.content):
                        if text == DONE:
                            return
                        if seq is not None:
                            last = seq
                        yield decode_event(text)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            if self.job_id is None:  # the server never said it took the job
                if isinstance(exc, asyncio.TimeoutError):
                    raise StreamTimeout(f"POST {url} got no answer within {client._stream_idle_timeout:g} s.") from exc
                if isinstance(exc, aiohttp.ClientConnectionError):
                    raise unreachable(client.base_url, exc) from exc
                raise ServerError(f"POST {url} failed: {exc or type(exc).__name__}.", code="BAD_RESPONSE",
                                  status=502) from exc
        # The stream dropped, or closed without [DONE], or never came: follow it with GET after the last event.
        async for _, event in client.stream_with_ids(self.job_id, after=last):
            yield event


async def _sse_messages(content: aiohttp.StreamReader) -> AsyncIterator[tuple[int | None, str]]:
    """(id, data) of each SSE message, as the job routes write them: `id:` and `data:` lines; comments
    (the server's pings) and other fields skipped."""
    data: list[str] = []
    seq: int | None = None
    async for raw in content:  # one line at a time
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield seq, "\n".join(data)
            data, seq = [], None
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            seq = int(value)


@dataclass(frozen=True)
class Clients:
    """Clients for any daemon, sharing one session and one token: what a daemon holds to call the others."""

    session: aiohttp.ClientSession
    token: str

    def daemon(self, url: str, **options: Any) -> DaemonClient:
        return DaemonClient(url, self.token, session=self.session, **options)

    def jobs(self, url: str, **options: Any) -> JobClient:
        return JobClient(url, self.token, session=self.session, **options)
