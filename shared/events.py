"""The events a job streams, their SSE encoding, and `narrate()`, which finds the current job by itself.

Events are small dataclasses with a `type` tag; `to_dict`/`event_from_dict` are the wire form.
`narrate()` reads a context variable set by the job runner, so deep code (a download loop, a
spawn helper) tells the user what it does without threading a job id through every call.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union

from shared.errors import InvalidRequest
from shared.wire import WireEnum

DONE = "[DONE]"
JOB_ID_HEADER = "X-Rbee-Job-Id"  # names the job whose stream a POST answered with (Accept: text/event-stream)
Level = Literal["info", "warn", "error"]
LEVELS = ("info", "warn", "error")

log = logging.getLogger("rbee.narration")


def now_ms() -> int:
    return int(time.time() * 1000)


class JobState(WireEnum):
    """A job's life, on every daemon: the `state` of its summary and of its stream's `end` event."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Narration:
    actor: str
    action: str
    human: str
    target: str | None = None
    level: Level = "info"
    job_id: str | None = None
    ts: int = field(default_factory=now_ms)
    type: Literal["narration"] = "narration"


@dataclass(frozen=True)
class Token:
    t: str
    i: int
    ids: tuple[int, ...] | None = None  # from a worker: ids of the tokens whose text is now all out
    # When asked for: one {"token", "logprob", "top": [{"token", "logprob"}, ...]} per token of this text.
    logprobs: list[dict[str, Any]] | None = field(default=None, hash=False)
    type: Literal["token"] = "token"


@dataclass(frozen=True)
class Data:
    action: str
    payload: Any
    type: Literal["data"] = "data"


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    # The HTTP status the failure means (400: the request was wrong, 404: not there, 5xx: ours), so a
    # daemon that forwards the error, and an API that answers it, keep it. Absent from older daemons.
    status: int | None = field(default=None, compare=False)
    type: Literal["error"] = "error"


@dataclass(frozen=True)
class Started:
    """First event of a worker's inference stream."""

    job_id: str
    model: str
    started_at: int = field(default_factory=now_ms)
    type: Literal["started"] = "started"


@dataclass(frozen=True)
class End:
    """Last event before `[DONE]`; `stats` are flattened into the JSON object (tokens_out, ttft_ms, ...)."""

    state: JobState
    stats: Mapping[str, Any] = field(default_factory=dict)
    type: Literal["end"] = "end"

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", JobState(self.state))  # "completed" is JobState.COMPLETED


Event = Union[Narration, Token, Data, Error, Started, End]


def event_to_dict(event: Event) -> dict[str, Any]:
    if isinstance(event, Token):  # the hot path: keep it a plain dict literal
        if event.logprobs is not None:
            d = {"type": "token", "t": event.t, "i": event.i, "logprobs": event.logprobs}
            if event.ids is not None:
                d["ids"] = event.ids
            return d
        if event.ids is not None:
            return {"type": "token", "t": event.t, "i": event.i, "ids": event.ids}
        return {"type": "token", "t": event.t, "i": event.i}
    if isinstance(event, End):
        return {"type": "end", "state": event.state.value, **event.stats}
    if isinstance(event, Narration):
        d = {"type": "narration", "actor": event.actor, "action": event.action, "human": event.human,
             "level": event.level, "ts": event.ts}
        if event.target is not None:
            d["target"] = event.target
        if event.job_id is not None:
            d["job_id"] = event.job_id
        return d
    d = {k: v for k, v in event.__dict__.items() if v is not None}
    d["type"] = event.type
    return d


def encode_event(event: Event) -> str:
    """The `data:` payload of one SSE message: compact JSON, one line."""
    return _dumps(event_to_dict(event))


# allow_nan=False: `NaN` is not JSON; an event holding one is a bug to see, not something to send.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def sse_frame(data: str, seq: int | None = None) -> str:
    """One SSE message: `id:` (when the event has a sequence number) and one `data:` line."""
    return f"data: {data}\n\n" if seq is None or seq < 0 else f"id: {seq}\ndata: {data}\n\n"


DONE_FRAME = sse_frame(DONE)


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """Parse an event received from a stream; an unknown or malformed one raises InvalidRequest."""
    kind = d.get("type") if isinstance(d, Mapping) else None
    try:
        if kind == "token":
            ids = d.get("ids")
            logprobs = d.get("logprobs")
            return Token(t=d["t"], i=d["i"], ids=tuple(ids) if isinstance(ids, list) else None,
                         logprobs=logprobs if isinstance(logprobs, list) else None)
        if kind == "narration":
            level = d.get("level", "info")
            return Narration(
                actor=d["actor"], action=d["action"], human=d["human"], target=d.get("target"),
                level=level if level in LEVELS else "info", job_id=d.get("job_id"),
                ts=d.get("ts") or now_ms(),
            )
        if kind == "data":
            return Data(action=d["action"], payload=d.get("payload"))
        if kind == "error":
            status = d.get("status")
            return Error(code=d["code"], message=d["message"],
                         status=status if isinstance(status, int) and not isinstance(status, bool) else None)
        if kind == "started":
            return Started(job_id=d["job_id"], model=d["model"], started_at=d.get("started_at") or now_ms())
        if kind == "end":
            stats = {k: v for k, v in d.items() if k not in ("type", "state")}
            return End(state=JobState(d["state"]), stats=stats)
    except ValueError as exc:
        raise InvalidRequest(f"Malformed '{kind}' event: {exc}.") from exc
    except (KeyError, TypeError) as exc:
        raise InvalidRequest(f"Malformed '{kind}' event: missing {exc}.") from exc
    raise InvalidRequest(f"Unknown event type {kind!r}.")


def decode_event(data: str) -> Event:
    try:
        return event_from_dict(json.loads(data))
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"An event is not valid JSON: {data[:80]!r}.") from exc


# --- narration routed through a context variable -----------------------------------------------------

EventSink = Callable[[Event], Any]


@dataclass(frozen=True)
class _NarrationContext:
    actor: str
    job_id: str | None
    sink: EventSink | None


_context: contextvars.ContextVar[_NarrationContext | None] = contextvars.ContextVar(
    "rbee_narration", default=None
)
_default_actor = "rbee"


def set_default_actor(actor: str) -> None:
    """Each daemon names itself once at start-up (queen, hive, worker, keeper)."""
    global _default_actor
    _default_actor = actor


def bind_job(job_id: str | None, sink: EventSink | None, actor: str | None = None) -> contextvars.Token:
    """Route `narrate()` in this context (and tasks it starts) to `sink`. The job runner calls this."""
    return _context.set(_NarrationContext(actor or _default_actor, job_id, sink))


def unbind_job(token: contextvars.Token) -> None:
    _context.reset(token)


def detached_task(coro, *, name: str | None = None) -> "asyncio.Task":
    """Start a task that outlives the current job: its narration goes to the log, not to that job."""
    return contextvars.Context().run(asyncio.get_running_loop().create_task, coro, name=name)


def current_job_id() -> str | None:
    ctx = _context.get()
    return ctx.job_id if ctx else None


def emit(event: Event) -> None:
    """Send any event to the current job's stream (logged when there is no job)."""
    ctx = _context.get()
    if ctx and ctx.sink:
        ctx.sink(event)
    else:
        log.info("%s", encode_event(event))


def narrate(action: str, human: str, *, target: str | None = None, level: Level = "info") -> Narration:
    """Tell whoever watches the current job what is happening, in words a person reads."""
    ctx = _context.get()
    event = Narration(
        actor=ctx.actor if ctx else _default_actor,
        action=action,
        human=human,
        target=target,
        level=level,
        job_id=ctx.job_id if ctx else None,
    )
    if ctx and ctx.sink:
        ctx.sink(event)
    else:
        log.log(logging.WARNING if level == "warn" else logging.ERROR if level == "error" else logging.INFO,
                "[%s] %s: %s", event.actor, action, human)
    return event
