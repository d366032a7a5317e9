"""Middlewares every daemon mounts: JSON errors (never a traceback) and the bearer token check."""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Awaitable, Callable

from aiohttp import web

from shared import appkeys
from shared.errors import InvalidRequest, RbeeError, Unauthorized
from shared.token import tokens_equal

log = logging.getLogger("rbee.http")

MAX_BODY_BYTES = 1024 * 1024  # a job request is a few hundred bytes; a prompt may be long, not huge

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "BODY_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    503: "UNAVAILABLE",
}


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; anything else is a 400 naming the problem (the size is bounded by the app)."""
    body = await request.read()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[…
        raise InvalidRequest(f"The body is not valid JSON: {exc}.") from exc


def client_gone(request: web.Request) -> bool:
    """Whether the client of `request` has left (aiohttp does not cancel its handler when it does)."""
    return request.transport is None or request.transport.is_closing()


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    shaper = request.app.get(appkeys.ERROR_SHAPER)
    return (shaper and shaper(request, status, code, message)) or json_error(status, code, message)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into `{"error": {"code", "message"}}` with a fitting status (or, on routes of an
    API with its own error shape, that shape: see appkeys.ERROR_SHAPER)."""
    try:
        return await handler(request)
    except RbeeError as exc:
        response = _error(request, exc.status, exc.code, exc.message)
        if (retry_after := getattr(exc, "retry_after", None)) is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"The request body is too large: {exc.text}."
        elif exc.status == 404:
            message = f"No such endpoint: {request.method} {request.path}."
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}."
        return _error(request, exc.status, _HTTP_CODES.get(exc.status, f"HTTP_{exc.status}"), message)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(request, 500, "INTERNAL", "Internal server error; the server's log has the details.")


def auth_middleware(token: str, *, public: frozenset[tuple[str, str]] = frozenset({("GET", "/health")})):
    """Require `Authorization: Bearer <token>` on everything but the `public` (method, path) pairs."""

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) in public or request.method == "OPTIONS":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("Missing bearer token: send 'Authorization: Bearer <token>' "
                               "(the token is in the rbee config dir, file 'token').")
        if not tokens_equal(given.strip(), token):
            raise Unauthorized("Wrong bearer token: use the token from the rbee config dir (file 'token').")
        return await handler(request)

    return check_token


PUBLIC = frozenset({("GET", "/health")})


def base_middlewares(token: str) -> list:
    """Error handling outermost, so an auth failure is a JSON error too."""
    return [error_middleware, auth_middleware(token, public=PUBLIC)]
