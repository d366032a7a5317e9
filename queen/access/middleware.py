"""The one place the queen decides who may do what: every request passes `access_middleware`, which finds
the caller (the queen's own token, or an API key), checks the scope its route needs (scopes.py), and
leaves the key on the request, where the job and conversation routes find their owner and
`authorize_operation` checks a job's operation and model. Errors come in the API's own shape (the error
middleware outside this one renders them)."""

from __future__ import annotations

import time
from collections import deque

from aiohttp import web

from queen.access.keys import ApiKey
from queen.access.scopes import OWN_CHECK, PUBLIC, Scope, operation_scope, route_scope
from queen.appkeys import CALLER, KEYS, LIMITS
from shared import appkeys as shared_keys
from shared.errors import Forbidden, RbeeError, Unauthorized
from shared.http import Handler
from shared.job_registry import Job
from shared.operations import Operation
from shared.token import tokens_equal

# Query parameters that look like a credential: refused (a key in a URL ends up in logs and histories).
URL_CREDENTIALS = frozenset({"key", "api_key", "api-key", "apikey", "token", "access_token", "auth"})
MAX_CREDENTIAL_CHARS = 512  # a key is 51 characters, the queen's token 43
FAILURES_ALLOWED = 50  # wrong credentials from one address within FAILURE_WINDOW_S; then 429s
FAILURE_WINDOW_S = 60.0
LOCKOUT_S = 60.0


class TooManyFailures(RbeeError):
    title = "Too many wrong keys"
    code = "RATE_LIMIT_EXCEEDED"
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FailedAttempts:
    """Wrong credentials per client address: after FAILURES_ALLOWED in a minute, that address gets 429s
    (even with a right key) for LOCKOUT_S, so keys cannot be guessed at network speed."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def check(self, address: str, now: float) -> None:
        until = self._locked_until.get(address)
        if until is not None:
            if now < until:
                raise TooManyFailures(f"Too many wrong keys from {address}; try again in {until - now:.0f} s.",
                                      retry_after=until - now)
            del self._locked_until[address]

    def failed(self, address: str, now: float) -> None:
        times = self._failures.setdefault(address, deque())
        times.append(now)
        while times and now - times[0] > FAILURE_WINDOW_S:
            times.popleft()
        if len(times) >= FAILURES_ALLOWED:
            self._locked_until[address] = now + LOCKOUT_S
            del self._failures[address]
        if len(self._failures) > 10_000:  # bounded: forget the quietest addresses first
            for stale in [a for a, t in self._failures.items() if now - t[-1] > FAILURE_WINDOW_S]:
                del self._failures[stale]


def credential(request: web.Request) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>` (every API), or `x-api-key` (Anthropic's)."""
    if URL_CREDENTIALS & {name.lower() for name in request.query}:
        raise Unauthorized("Send the key in the 'Authorization: Bearer <key>' header, never in the URL (a URL "
                           "is kept in logs and browser histories); the request was refused.")
    header = request.headers.get("Authorization")
    given: str | None
    if header is not None:
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given or " " in given:
            raise Unauthorized("Malformed Authorization header: send 'Authorization: Bearer <key>'.")
    else:
        given = request.headers.get("x-api-key", "").strip() or None
    if given is not None and len(given) > MAX_CREDENTIAL_CHARS:
        raise Unauthorized("The key sent is far longer than any rbee key; send the key `rbee keys create` "
                           "printed, or the queen's token.")
    return given


def access_middleware(token: str) -> web.middleware:
    failures = FailedAttempts()

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        needed = route_scope(request.method, route.canonical if route is not None else request.path)
        if needed in (PUBLIC, OWN_CHECK) or request.method == "OPTIONS":
            return await handler(request)
        now = time.monotonic()
        address = request.remote or "?"
        failures.check(address, now)
        try:
            given = credential(request)
            if given is None:
                raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>' with a key from `rbee keys "
                                   "create`, or the queen's token (the file 'token' in the rbee config dir).")
            key = None if tokens_equal(given, token) else request.app[KEYS].authenticate(given)
        except Unauthorized:
            failures.failed(address, now)
            raise
        if key is not None:
            assert isinstance(needed, Scope)
            if key.scope < needed:
                raise Forbidden(f"The key '{key.name}' has scope '{key.scope}'; {request.method} {request.path} "
                                f"needs '{needed}'.")
            request[CALLER] = key
            request[shared_keys.REQUEST_OWNER] = key.name  # what it makes is its own
            if key.scope < Scope.ADMIN:
                request[shared_keys.REQUEST_OWN_ONLY] = True  # and it sees nothing of anyone else's
            request.app[LIMITS].request(key)
        return await handler(request)

    return check_access


def caller(request: web.Request) -> ApiKey | None:
    """The API key of the request, or None for the queen's own token (admin)."""
    return request.get(CALLER)


def authorize_operation(request: web.Request, operation: Operation) -> None:
    """A key may run only what its scope covers, on its models only (POST /v1/jobs and every API route)."""
    key = caller(request)
    if key is None:
        return
    needed = operation_scope(operation)
    if key.scope < needed:
        raise Forbidden(f"The key '{key.name}' has scope '{key.scope}'; the {operation.name} operation needs "
                        f"'{needed}'.")
    model = getattr(operation, "model", None)
    if needed is Scope.INFER and not key.allows_model(model):
        allowed = ", ".join(key.models or ())
        raise Forbidden(f"The key '{key.name}' may use {allowed} only, not '{model}'.")


def submit_job(request: web.Request, operation: Operation) -> Job:
    """What every API route and POST /v1/jobs submit through: the caller's rights and limits checked (a
    key's inference holds its tokens until the job ends: limits.py), the job its own."""
    authorize_operation(request, operation)
    registry = request.app[shared_keys.JOB_REGISTRY]
    key = caller(request)
    if key is None:
        return registry.submit(operation)
    limits = request.app[LIMITS]
    reserve = limits.admit(key, operation) if operation_scope(operation) is Scope.INFER else None
    job = registry.submit(operation, owner=key.name, own_only=key.scope < Scope.ADMIN)
    if reserve is not None:
        limits.started(job, reserve)
    return job
