"""The Textual app driven with Pilot against real daemons."""

from __future__ import annotations

import asyncio
import time

import pytest
from textual.widgets import Button, DataTable

from keeper_tui.tui.app import RbeeApp
from keeper_tui.tui.widgets import NarrationPane, TokenPane
from shared.job_client import JobClient
from shared.paths import RbeePaths
from tests.support.processes import start_queen
from shared.operations import WorkerSpawn
from tests.support.sshd import free_port
from tests.support.two_hives import SECOND, start_two_hives

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


@pytest.fixture
async def queen(tmp_path):
    home = tmp_path / "home"
    daemon = await asyncio.to_thread(start_queen, home)
    daemon.paths = RbeePaths.from_env({"RBEE_HOME": str(home)})
    yield daemon
    await asyncio.to_thread(daemon.stop, 30)


async def until(pilot, condition, timeout: float = 60.0, app=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the app" + (
            f"; notifications: {notifications(app)}" if app else "")
        await pilot.pause(0.05)


def ask(app: RbeeApp, prompt: str, max_tokens: str, temperature: str = "0") -> None:
    app.query_one("#prompt").value = prompt
    app.query_one("#max_tokens").value = max_tokens
    app.query_one("#temperature").value = temperature


def notifications(app: RbeeApp) -> list[str]:
    return [n.message for n in app._notifications]


async def test_prompt_streams_tokens_and_narration_then_views(queen):
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(140, 40)) as pilot:
        ask(app, "The capital of France is", "12")
        app.query_one("#prompt").focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.last_end is not None)
        await pilot.pause(0.1)
        assert app.last_end.state == "completed"
        shown = app.query_one(TokenPane).text
        async with JobClient(queen.url, queen.token) as client:
            job = await client.get(app.last_job)
        assert shown == job["result"]["text"] and "Paris" in shown
        assert app.query_one(TokenPane).rendered_tokens == 12  # everything was drawn
        assert app.query_one(NarrationPane).lines_written >= 5  # hive start, spawn, loading, ready, …
        assert "12 tokens" in str(app.query_one("#stats").render())

        await pilot.press("f4")  # the models view
        table = app.query_one("#models-table", DataTable)
        await until(pilot, lambda: table.row_count > 0)
        assert table.get_row_at(0)[0] == "smollm2-135m"

        await pilot.press("f3")  # workers
        workers = app.query_one("#workers-table", DataTable)
        await until(pilot, lambda: workers.row_count > 0)
        assert workers.get_row_at(0)[3] == "ready"


async def test_cancel_key_cancels_the_job(queen):
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(140, 40)) as pilot:
        ask(app, COUNTING, "1000")
        app.query_one("#prompt").focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one(TokenPane).rendered_tokens >= 3)
        await pilot.press("escape")
        await until(pilot, lambda: app.last_end is not None)
        assert app.last_end.state == "cancelled"
        async with JobClient(queen.url, queen.token) as client:
            assert (await client.get(app.last_job))["state"] == "cancelled"


async def test_a_queen_that_is_down_is_a_notification_not_a_crash(tmp_path):
    paths = RbeePaths.from_env({"RBEE_HOME": str(tmp_path)})
    app = RbeeApp(f"http://127.0.0.1:{free_port()}", autostart=False, paths=paths)
    async with app.run_test(size=(140, 40)) as pilot:
        ask(app, "hello", "8")
        app.query_one("#prompt").focus()
        await pilot.press("enter")
        await until(pilot, lambda: notifications(app), timeout=10)
        assert any("No queen answers at" in m for m in notifications(app))
        await pilot.press("f5")  # the jobs view asks the queen too: a second notification, no crash
        await until(pilot, lambda: len(notifications(app)) >= 2, timeout=10)
        assert app.is_running


async def test_bad_form_values_are_notified(tmp_path):
    paths = RbeePaths.from_env({"RBEE_HOME": str(tmp_path)})
    app = RbeeApp(f"http://127.0.0.1:{free_port()}", autostart=False, paths=paths)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.click("#run")
        await until(pilot, lambda: "Type a prompt first." in notifications(app), timeout=5)
        ask(app, "hi", "0")
        app.query_one("#prompt").focus()
        await pilot.press("enter")
        await until(pilot, lambda: any("'max_tokens' of operation 'infer' must be at least 1" in m
                                       for m in notifications(app)), timeout=5)


@pytest.fixture
async def two_hives(tmp_path):
    setup = await asyncio.to_thread(start_two_hives, tmp_path)
    yield setup
    await asyncio.to_thread(setup.stop)


async def test_workers_view_shows_and_stops_workers_of_every_hive(two_hives):
    queen = two_hives.queen
    async with JobClient(queen.url, queen.token) as client:
        for hive_id in ("localhost", SECOND):
            job = await client.submit(WorkerSpawn(hive_id=hive_id))
            assert [e async for e in client.stream(job.job_id)][-1].state == "completed"
    app = RbeeApp(queen.url, autostart=False, paths=two_hives.queen_paths)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("f3")
        table = app.query_one("#workers-table", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        rows = {table.get_row_at(k)[1]: table.get_row_at(k)[0] for k in range(2)}  # hive -> worker id
        assert set(rows) == {"localhost", SECOND}
        table.move_cursor(row=[table.get_row_at(k)[1] for k in range(2)].index(SECOND))
        app.query_one("#worker-stop", Button).press()  # worker_delete goes to the worker's own hive
        await until(pilot, lambda: table.row_count == 1 and table.get_row_at(0)[1] == "localhost", timeout=20, app=app)
    async with JobClient(queen.url, queen.token) as client:
        workers = (await client.request("GET", "/v1/workers"))["workers"]
    assert [w["hive_id"] for w in workers] == ["localhost"]
