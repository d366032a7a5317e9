"""A key's limits, checked when its request arrives: requests per minute (every request), requests at once
and tokens per day (inference). Tokens are reserved at admission (the request's max_tokens) and settled
when its job ends with what it used, which is also what is added to the key's usage (keys.db) and what the
response reported. Over a limit: 429 with Retry-After, in the API's own shape."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from queen.access.keys import ApiKey, KeyStore
from shared.errors import RbeeError
from shared.job_registry import Job
from shared.operations import Operation

DEFAULT_RESERVE = 256  # tokens held for a request that names no max_tokens (rbee's own default answer size)


class RateLimited(RbeeError):
    title = "Rate limited"
    code = "RATE_LIMIT_EXCEEDED"
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def today() -> str:
    return time.strftime("%Y-%m-%d")  # the queen's local date, as keys.db's usage rows


def seconds_to_midnight() -> float:
    now = datetime.now()
    return (datetime.combine(now.date() + timedelta(days=1), datetime.min.time()) - now).total_seconds()


@dataclass
class KeyState:
    """What one key is doing now: its recent requests, its running jobs, its tokens today."""

    requests: deque[float] = field(default_factory=deque)  # this minute's (with requests_per_minute)
    made: int = 0  # since the queen started
    running: int = 0
    reserved: int = 0
    day: str = ""
    used_today: int = 0


class KeyLimits:
    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._state: dict[str, KeyState] = {}
        self._reservations: dict[str, int] = {}  # job id -> tokens it holds

    def _of(self, key: ApiKey) -> KeyState:
        state = self._state.setdefault(key.name, KeyState())
        if state.day != (day := today()):  # a new day: yesterday's tokens no longer count
            state.day, state.used_today = day, self.store.tokens_on(key.name, day)
        return state

    def running(self, name: str) -> int:
        return self._state[name].running if name in self._state else 0

    def requests_made(self, name: str) -> int:
        return self._state[name].made if name in self._state else 0

    def request(self, key: ApiKey, now: float | None = None) -> None:
        """Every request of the key: its requests per minute."""
        state = self._of(key)
        state.made += 1
        if key.requests_per_minute is None:
            return
        now = time.monotonic() if now is None else now
        recent = state.requests
        while recent and now - recent[0] >= 60.0:
            recent.popleft()
        if len(recent) >= key.requests_per_minute:
            raise RateLimited(f"The key '{key.name}' may make {key.requests_per_minute} requests a minute; "
                              f"try again in {math.ceil(60.0 - (now - recent[0]))} s.",
                              retry_after=60.0 - (now - recent[0]))
        recent.append(now)

    def admit(self, key: ApiKey, operation: Operation) -> int:
        """An inference of the key: its requests at once and tokens today; returns the tokens reserved."""
        state = self._of(key)
        if key.max_concurrent is not None and state.running >= key.max_concurrent:
            raise RateLimited(f"The key '{key.name}' may run {key.max_concurrent} request(s) at once; wait for "
                              "one to finish.", retry_after=1.0)
        reserve = 0
        if key.tokens_per_day is not None:
            reserve = int(getattr(operation, "max_tokens", None) or DEFAULT_RESERVE)
            left = key.tokens_per_day - state.used_today - state.reserved
            if getattr(operation, "count_only", False):
                reserve = 0  # counted, not generated: free, as Anthropic's count_tokens is
            elif getattr(operation, "fill_context", False):
                reserve = min(reserve, max(left, 1))  # as long as the context allows: whatever is left today
            if reserve > left:
                raise RateLimited(f"The key '{key.name}' has {max(0, left):,} of its {key.tokens_per_day:,} tokens "
                                  f"a day left, and this request may use {reserve:,} (its max_tokens); ask for "
                                  "fewer, or wait for tomorrow.", retry_after=seconds_to_midnight())
        state.running += 1
        state.reserved += reserve
        return reserve

    def started(self, job: Job, reserve: int) -> None:
        self._reservations[job.id] = reserve

    def settle(self, job: Job) -> None:
        """A job of a key ended: its hold is released, what it used is counted and recorded."""
        if job.owner is None or job.id not in self._reservations:
            return
        reserve = self._reservations.pop(job.id)
        state = self._state.get(job.owner)
        result = job.result or {}
        if result.get("stop_reason") == "count":  # a count_tokens: nothing generated, nothing used
            result = {"tokens_out": 0}
        prompt = int(result.get("prompt_tokens") or 0)
        # An answer cut short (cancelled, revoked, failed) reports no usage, but what it streamed was used.
        completion = int(result["tokens_out"]) if result.get("tokens_out") is not None else job.tokens_streamed
        if state is not None:
            state.running -= 1
            state.reserved -= reserve
            state.used_today += prompt + completion
        model = getattr(job.operation, "model", None) or ""
        self.store.record_usage(job.owner, today(), model, prompt, completion)
