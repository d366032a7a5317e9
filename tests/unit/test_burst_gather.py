"""An idle worker's first step gathers a burst (GenerationEngine._gather): requests that reach it a few
milliseconds apart go into one step, and it does not wait past a full house, a quiet gap, or a stop."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

from worker import engine as engine_module
from worker.config import WorkerConfig
from worker.engine import GenerationEngine


def make_engine(**fields) -> GenerationEngine:
    config = WorkerConfig(worker_id="w", model_path=Path("/nonexistent.gguf"), model_ref="m", **fields)
    return GenerationEngine(config)  # nothing is loaded until start(): _gather reads only the queue


def arrive(engine: GenerationEngine, items: list[object], spacing_s: float) -> threading.Thread:
    def put() -> None:
        for item in items:
            time.sleep(spacing_s)
            engine._requests.put(item)

    thread = threading.Thread(target=put)
    thread.start()
    return thread


def test_requests_arriving_a_millisecond_apart_join_the_first_step():
    engine = make_engine()
    waiting: deque = deque(["first"])
    sender = arrive(engine, [f"r{k}" for k in range(5)], 0.001)
    assert engine._gather(waiting) is False
    sender.join()
    assert list(waiting) == ["first", "r0", "r1", "r2", "r3", "r4"]


def test_a_full_house_starts_at_once_and_the_rest_wait_for_the_next_step():
    engine = make_engine(parallel=4, max_parallel=4)
    for k in range(6):
        engine._requests.put(f"r{k}")
    waiting: deque = deque(["first"])
    began = time.perf_counter()
    engine._gather(waiting)
    assert list(waiting) == ["first", "r0", "r1", "r2"]  # the 4 slots' worth; r3, r4 stay queued
    assert time.perf_counter() - began < engine_module.GATHER_MAX_S / 2  # it did not wait for more
    assert engine._requests.get_nowait() == "r3"


def test_a_lone_request_waits_only_the_first_window():
    engine = make_engine()
    waiting: deque = deque(["alone"])
    began = time.perf_counter()
    engine._gather(waiting)
    assert list(waiting) == ["alone"]
    assert time.perf_counter() - began < engine_module.GATHER_MAX_S / 2  # GATHER_FIRST_S, not the whole window


def test_a_request_after_a_quiet_gap_is_left_for_the_next_step():
    engine = make_engine()
    waiting: deque = deque(["first"])
    sender = arrive(engine, ["late"], engine_module.GATHER_MAX_S * 2)
    engine._gather(waiting)
    sender.join()
    assert list(waiting) == ["first"]
    assert engine._requests.get_nowait() == "late"


def test_a_stop_while_gathering_is_obeyed():
    engine = make_engine()
    waiting: deque = deque(["first"])
    sender = arrive(engine, ["r0", None], 0.001)
    assert engine._gather(waiting) is True
    sender.join()
