"""The one way an rbee program calls another over HTTP: the token sent, timeouts applied, the status
checked, and every failure turned into an RbeeError that says which server and what went wrong
(`ServerError` with the server's own code for a JSON error body, `ServerUnreachable`, `StreamTimeout`).

`JobClient` (shared/job_client.py) builds on `DaemonClient` for the job API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from shared.errors import RbeeError, ServerError, ServerUnreachable, StreamTimeout
from shared.tls import TlsError

HEALTH_TIMEOUT_S = 2.0


class DaemonClient:
    """One daemon at `base_url`. Pass a shared `session` where there are many calls (a daemon); without
    one the client opens its own, closed by `close()` or `async with`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        ssl: Any = True,  # an https server's check (shared/tls.py client_ssl), for a session of its own
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl
        self._token = token
        self._own_session = session is None
        self._session = session
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout

    async def __aenter__(self):
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
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def request(self, method: str, path: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """One JSON request; returns the decoded body (None when empty) or raises an RbeeError."""
        url = self.base_url + path
        total = self._request_timeout if timeout is None else timeout
        client_timeout = aiohttp.ClientTimeout(total=total, connect=min(self._connect_timeout, total))
        try:
            async with self.session.request(method, url, json=payload, headers=self._headers(),
                                            timeout=client_timeout) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise server_error(resp.status, body)
        except aiohttp.ClientConnectionError as exc:
            raise unreachable(self.base_url, exc) from exc
        except asyncio.TimeoutError as exc:
            raise StreamTimeout(f"{method} {url} got no answer within {total:g} s.") from exc
        except (aiohttp.ClientError, ValueError) as exc:  # not HTTP, a malformed answer, a bad URL
            raise ServerError(f"{method} {url} failed: {exc or type(exc).__name__}.", code="BAD_RESPONSE",
                              status=502) from exc
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ServerError(f"{method} {url} answered something that is not JSON: {body[:80]!r}.",
                              code="BAD_RESPONSE", status=502) from exc

    async def health(self, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
        """GET /health (no token needed); raises when nothing healthy answers."""
        body = await self.request("GET", "/health", timeout=timeout)
        if not isinstance(body, dict):
            raise ServerError(f"{self.base_url}/health answered {body!r}, not a JSON object.", code="BAD_RESPONSE",
                              status=502)
        return body

    async def health_or_none(self, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any] | None:
        """The health answer, or None when the daemon is down, unreachable or not healthy."""
        try:
            return await self.health(timeout)
        except (ServerError, ServerUnreachable, StreamTimeout):
            return None

    async def shutdown(self, timeout: float = 5.0) -> None:
        """POST /v1/shutdown: the daemon stops what it started, then exits."""
        await self.request("POST", "/v1/shutdown", timeout=timeout)


def server_error(status: int, body: bytes) -> ServerError:
    try:
        err = json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{status}", body.decode(errors="replace")[:200] or f"HTTP {status}"
    return ServerError(message, code=code, status=status)


def unreachable(base_url: str, exc: BaseException) -> RbeeError:
    """Why nothing answered: a TLS check that failed says so (and how to fix it), not "is it running?"."""
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        got = ":".join(f"{b:02X}" for b in exc.got)
        return TlsError(f"The certificate of {base_url} is not the one pinned: its SHA-256 fingerprint is {got}. "
                        "If its queen made a new certificate, ask for the new fingerprint (`rbee queen tls-init` "
                        "printed it); otherwise something else is answering there.")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TlsError(f"Cannot verify the certificate of {base_url} ({exc.certificate_error}): pin it with "
                        "--queen-fingerprint (or $RBEE_QUEEN_FINGERPRINT), or give its CA with --queen-ca.")
    if isinstance(exc, aiohttp.ClientSSLError):
        return TlsError(f"No TLS connection to {base_url} ({exc}); is it an http:// server?")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ServerUnreachable(f"Nothing answers at {base_url} ({reason}). Is the server running?")
