"""One exception base for everything shared/ raises, so callers print one clear line, never a traceback."""

from __future__ import annotations


class RbeeError(Exception):
    """An error a user can read: a short title, a message that says what is wrong and what to do.

    `code` is the machine-readable form used in JSON error bodies and `error` events; `status` is the
    HTTP status a server answers with when this escapes a handler. `reported` is True when the error
    already reached the user (an `error` event forwarded from a hive or worker), so it is not told twice.
    """

    title = "rbee error"
    code = "RBEE_ERROR"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 reported: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.reported = reported
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class InvalidRequest(RbeeError):
    """The request body or an operation in it is malformed; the message names the field.

    `field` is the offending field's name and `problem` what is wrong with it ("must be at least 1, not
    0"), so a caller can say it in its own terms (a CLI option, an OpenAI `param`) without parsing text.
    """

    title = "Invalid request"
    code = "INVALID_REQUEST"
    status = 400

    def __init__(self, message: str, *, field: str | None = None, problem: str | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.field = field
        self.problem = problem


class UnknownOperation(InvalidRequest):
    title = "Unknown operation"
    code = "UNKNOWN_OPERATION"


class JobNotFound(RbeeError):
    title = "Job not found"
    code = "JOB_NOT_FOUND"
    status = 404


class AmbiguousId(RbeeError):
    title = "Ambiguous id"
    code = "AMBIGUOUS_ID"
    status = 400


def unique_match(given: str, ids, *, kind: str, prefix: str) -> str | None:
    """The one id `given` names: itself, or the only id it begins (with or without `prefix`, such as
    "job-"), like git's short hashes; None when it names none."""
    ids = list(ids)
    if given in ids:
        return given
    matches = sorted(i for i in ids if given and (i.startswith(given) or i.startswith(prefix + given)))
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", …" if len(matches) > 5 else "")
        raise AmbiguousId(f"'{given}' begins {len(matches)} {kind} ids ({shown}); type more of it.")
    return matches[0] if matches else None


class JobConflict(RbeeError):
    """The job exists but cannot do what was asked (cancel a finished job, for instance)."""

    title = "Job conflict"
    code = "JOB_CONFLICT"
    status = 409


class Unauthorized(RbeeError):
    title = "Unauthorized"
    code = "UNAUTHORIZED"
    status = 401


class Forbidden(RbeeError):
    """The credential is good, but not for this (a hive's token used for another hive's workers)."""

    title = "Forbidden"
    code = "FORBIDDEN"
    status = 403


class ServerUnreachable(RbeeError):
    """Client side: nothing answers at the URL (daemon down, wrong port)."""

    title = "Server unreachable"
    code = "SERVER_UNREACHABLE"
    status = 503


class ServerError(RbeeError):
    """Client side: the server answered with a JSON error; keeps its status and code."""

    title = "Server error"
    code = "SERVER_ERROR"


class StreamTimeout(RbeeError):
    title = "Timed out"
    code = "TIMEOUT"
    status = 504
