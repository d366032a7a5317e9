"""Client side of the job API: submit an operation, follow its events, resume, cancel.

Used by the keeper (to the queen) and by the queen (to hives). Every failure surfaces as an RbeeError
whose message says which server and what went wrong; a dropped stream is resumed with Last-Event-ID so
the caller sees every event exactly once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, AsyncIterator, Mapping

import aiohttp
from aiohttp_sse_client.client import EventSource
from multidict import CIMultiDict

from shared.errors import ServerError, ServerUnreachable, StreamTimeout
from shared.events import DONE, Event, decode_event
from shared.operations import Operation


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    sse_url: str


class JobClient:
    """One server's job API. Use as `async with JobClient(url, token) as client:`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        stream_idle_timeout: float = 60.0,  # the server pings every 15 s; silence this long is a dead link
        max_resumes: int = 5,
        resume_backoff: float = 0.2,
        path: str = "/v1/jobs",  # a worker serves the same API at /v1/inference
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.path = path
        self._token = token
        self._own_session = session is None
        self._session = session
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._stream_idle_timeout = stream_idle_timeout
        self._max_resumes = max_resumes
        self._resume_backoff = resume_backoff

    async def __aenter__(self) -> "JobClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    # -- plain requests ---------------------------------------------------------------------------------

    async def request(self, method: str, path: str, payload: Any = None) -> Any:
        """One JSON request; returns the decoded body or raises ServerError/ServerUnreachable."""
        url = self.base_url + path
        timeout = aiohttp.ClientTimeout(total=self._request_timeout, connect=self._connect_timeout)
        try:
            async with self.session.request(method, url, json=payload, headers=self._headers(),
                                            timeout=timeout) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise _server_error(url, resp.status, body)
                return json.loads(body) if body else None
        except aiohttp.ClientConnectionError as exc:
            raise _unreachable(self.base_url, exc) from exc
        except asyncio.TimeoutError as exc:
            raise StreamTimeout(f"{method} {url} got no answer within {self._request_timeout:g} s.") from exc

    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "/health")

    async def submit(self, operation: Operation | Mapping[str, Any]) -> SubmittedJob:
        payload = operation.to_dict() if isinstance(operation, Operation) else dict(operation)
        body = await self.request("POST", self.path, payload)
        return SubmittedJob(job_id=body["job_id"], sse_url=body["sse_url"])

    async def get(self, job_id: str) -> dict[str, Any]:
        return await self.request("GET", f"{self.path}/{job_id}")

    async def list(self) -> list[dict[str, Any]]:
        return (await self.request("GET", self.path))["jobs"]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self.request("DELETE", f"{self.path}/{job_id}")

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
                    raise _unreachable(self.base_url, exc) from exc
                await asyncio.sleep(self._resume_backoff * failures)
            except ConnectionError as exc:
                # aiohttp-sse-client raises a bare ConnectionError for an HTTP error status; ask the
                # server again for the JSON error it answers with, so the caller gets its message.
                await self.get(job_id)  # raises the server's error (404 unknown job, 401, ...)
                raise ServerError(f"The stream of {job_id} at {self.base_url} failed: {exc}.") from exc


def _server_error(url: str, status: int, body: bytes) -> ServerError:
    try:
        err = json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{status}", body.decode(errors="replace")[:200] or f"HTTP {status}"
    return ServerError(message, code=code, status=status)


def _unreachable(base_url: str, exc: BaseException) -> ServerUnreachable:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ServerUnreachable(f"Nothing answers at {base_url} ({reason}). Is the server running?")
