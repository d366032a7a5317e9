"""Wait for something by polling a condition with a deadline, never by sleeping a guessed time.

A fixed sleep is either too short (a flaky test on a busy machine) or too long (a slow suite), and it
hides what the test is waiting for. These helpers poll the condition, return as soon as it holds, and
fail with an AssertionError that names what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, TypeVar, Union

T = TypeVar("T")

# `what` is a description, or a function giving one when the wait fails (to show the state seen last).
What = Union[str, Callable[[], str]]


def _timed_out(what: What, timeout: float) -> AssertionError:
    described = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g} s waiting for {described}")


async def until(condition: Callable[[], Union[T, Awaitable[T]]], *, timeout: float = 10.0,
                interval: float = 0.02, what: What = "condition") -> T:
    """Poll `condition` (a plain or an async callable) until it returns something truthy; return that.

    The condition is always tried at least once, and once more at the deadline. Exceptions it raises
    propagate (a condition can give up early, e.g. when the process it waits on has died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value: Any = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(what, timeout)
        await asyncio.sleep(min(interval, remaining))


def wait_until(condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02,
               what: What = "condition") -> T:
    """The blocking twin of `until`, for synchronous tests and fixtures."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):  # a coroutine is truthy: it would "pass" without ever running
            if inspect.iscoroutine(value):
                value.close()
            raise TypeError("wait_until needs a plain condition; await until(...) for an async one")
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(what, timeout)
        time.sleep(min(interval, remaining))
