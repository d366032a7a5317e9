"""The tests' own waiting helpers: poll a condition until it holds, or fail naming what never happened."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.waiting import until, wait_until


def counter(ready_at):
    calls = []

    def condition():
        calls.append(1)
        return len(calls) if len(calls) >= ready_at else 0

    return condition, calls


def test_wait_until_returns_the_first_truthy_value():
    condition, calls = counter(3)
    assert wait_until(condition, interval=0.001) == 3
    assert len(calls) == 3


def test_wait_until_fails_naming_what_it_waited_for():
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"^timed out after 0.05 s waiting for the moon$"):
        wait_until(lambda: False, timeout=0.05, interval=0.01, what="the moon")
    assert 0.05 <= time.monotonic() - started < 1


def test_what_can_describe_the_state_seen_at_the_deadline():
    seen = []
    with pytest.raises(AssertionError, match=r"waiting for ready \(saw \[1, 1"):
        wait_until(lambda: seen.append(1), timeout=0.03, interval=0.01, what=lambda: f"ready (saw {seen})")


def test_a_condition_true_at_once_is_tried_once_even_with_no_time():
    condition, calls = counter(1)
    assert wait_until(condition, timeout=0) == 1 and len(calls) == 1


def test_wait_until_refuses_an_async_condition():
    async def condition():
        return True

    with pytest.raises(TypeError, match="await until"):
        wait_until(condition)


def test_exceptions_from_the_condition_propagate():
    def condition():
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="the process died"):
        wait_until(condition)


async def test_until_takes_plain_and_async_conditions():
    condition, calls = counter(2)
    assert await until(condition, interval=0.001) == 2

    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)

    async def is_set():
        return event.is_set() and "set"

    assert await until(is_set, interval=0.001) == "set"


async def test_until_fails_naming_what_it_waited_for():
    async def never():
        return None

    with pytest.raises(AssertionError, match=r"^timed out after 0.03 s waiting for the job to end$"):
        await until(never, timeout=0.03, interval=0.01, what="the job to end")
