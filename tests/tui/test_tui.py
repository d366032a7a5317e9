"""The Textual app driven with Pilot against real daemons."""

from __future__ import annotations

import asyncio
import time

import pytest
from textual.widgets import Button, DataTable, ProgressBar, TabbedContent, TabPane

from keeper_tui.tui.app import RbeeApp
from keeper_tui.tui.screens import ConversationsScreen, HelpScreen
from keeper_tui.tui.widgets import MessageBox, NarrationPane, TokenPane
from shared.builtin_model import builtin_model_path
from shared.job_client import JobClient
from shared.operations import WorkerSpawn
from shared.paths import RbeePaths
from tests.support.fake_hub import FakeHub
from tests.support.processes import BIN, start_daemon, start_queen
from tests.support.sshd import free_port
from tests.support.two_hives import SECOND, start_two_hives

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


@pytest.fixture
async def queen(tmp_path, slow):
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


async def chat_turn(pilot, app: RbeeApp, prompt: str, max_tokens: str = "8") -> str:
    """Send `prompt` from the prompt field and wait for the whole answer; returns its text."""
    ask(app, prompt, max_tokens)
    app.query_one("#prompt").focus()
    await pilot.press("enter")
    await until(pilot, lambda: app.chat.last_end is not None and app.chat.turn is None, app=app)
    await pilot.pause(0.1)
    assert app.chat.last_end.state == "completed", notifications(app)
    return app.chat.transcript.answer.text


def notifications(app: RbeeApp) -> list[str]:
    return [n.message for n in app._notifications]


def visible_tab(app: RbeeApp) -> str:
    """The one tab pane that is displayed, checked against what TabbedContent says is active."""
    shown = [pane.id for pane in app.query(TabPane) if pane.display]
    assert shown == [app.query_one(TabbedContent).active]
    return shown[0]


def messages(job: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in job["request"]["messages"]]


async def test_a_chat_streams_tokens_and_narration_then_views(queen):
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(140, 40)) as pilot:
        shown = await chat_turn(pilot, app, "What is the capital of France?", "12")
        async with JobClient(queen.url, queen.token) as client:
            job = await client.get(app.chat.last_job)
        assert shown and shown == job["result"]["text"]
        answer = app.chat.transcript.answer
        assert answer.rendered_tokens == app.chat.last_end.stats["tokens_out"]  # everything was drawn
        assert app.query_one("#story", NarrationPane).lines_written >= 3  # spawn, loading, ready, …
        assert f"{app.chat.last_end.stats['tokens_out']} tokens" in str(app.query_one("#stats").render())
        assert app.sub_title == f"job {app.chat.last_job[:12]} completed"  # "job-" and 8 characters

        await pilot.press("f4")  # the models view
        table = app.query_one("#models-table", DataTable)
        await until(pilot, lambda: table.row_count > 0)
        assert table.get_row_at(0)[0] == "smollm2-135m"
        await pilot.press("enter")  # the selected model becomes the chat's
        await until(pilot, lambda: "The chat now uses smollm2-135m." in notifications(app), app=app)

        await pilot.press("f3")  # workers
        workers = app.query_one("#workers-table", DataTable)
        await until(pilot, lambda: workers.row_count > 0)
        assert workers.get_row_at(0)[3] == "ready"

        await pilot.press("f5")  # jobs: the chat is there, the views' own list jobs are not
        jobs = app.query_one("#jobs-table", DataTable)
        await until(pilot, lambda: jobs.row_count > 0)
        assert [jobs.get_row_at(k)[1] for k in range(jobs.row_count)] == ["infer"]
        await pilot.press("enter")  # replays the chat's job below the list
        replay = app.query_one("#job-tokens", TokenPane)
        await until(pilot, lambda: replay.full_text == shown, app=app)
        assert app.query_one("#job-view").display and visible_tab(app) == "jobs"


async def test_function_keys_switch_tabs_from_the_prompt(tmp_path):
    paths = RbeePaths.from_env({"RBEE_HOME": str(tmp_path)})
    app = RbeeApp(f"http://127.0.0.1:{free_port()}", autostart=False, paths=paths)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, tab in (("f2", "hives"), ("f3", "workers"), ("f4", "models"), ("f5", "jobs"), ("f1", "infer")):
            app.query_one("#prompt").focus()
            await pilot.pause()
            await pilot.press(key)
            await pilot.pause(0.2)  # a tab that snaps back does so within a frame or two
            assert visible_tab(app) == tab
        assert app.focused is app.query_one("#prompt")
        await pilot.press("h", "i", "question_mark")  # in the prompt, ? is a character
        assert app.query_one("#prompt").value == "hi?"
        await pilot.press("f2", "question_mark")  # elsewhere it shows the keys
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("f1")  # a dialog keeps the keys: the tab under it does not change
        assert visible_tab(app) == "hives"
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_two_turns_send_the_first_exchange_with_the_second(queen):
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(80, 24)) as pilot:
        first = await chat_turn(pilot, app, "Hi! My name is Ada.")
        first_job = app.chat.last_job
        second = await chat_turn(pilot, app, "What is my name?")
        async with JobClient(queen.url, queen.token) as client:
            job = await client.get(app.chat.last_job)
            conv = await client.conversation(app.chat.session.conversation_id)
        assert first and second
        assert messages(job) == [("user", "Hi! My name is Ada."), ("assistant", first), ("user", "What is my name?")]
        assert job["request"]["conversation_id"] == app.chat.session.conversation_id != first_job
        assert [(m["role"], m["content"]) for m in conv["messages"]] == [*messages(job), ("assistant", second)]
        boxes = app.chat.transcript.query(MessageBox)
        assert [b.role for b in boxes] == ["user", "assistant", "user", "assistant"]


async def test_escape_cancels_the_answer(queen):
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(140, 40)) as pilot:
        ask(app, COUNTING, "1000")
        app.query_one("#prompt").focus()
        await pilot.press("enter")
        transcript = app.chat.transcript
        await until(pilot, lambda: transcript.answer is not None and transcript.answer.rendered_tokens >= 3)
        stats = app.query_one("#stats")
        await until(pilot, lambda: str(stats.render()).startswith("generating · "))  # live, before the end
        assert "tokens/s" in str(stats.render()) and "first token" in str(stats.render())
        await pilot.press("escape")
        await until(pilot, lambda: app.chat.last_end is not None)
        assert app.chat.last_end.state == "cancelled"
        async with JobClient(queen.url, queen.token) as client:
            assert (await client.get(app.chat.last_job))["state"] == "cancelled"
        await until(pilot, lambda: len(app.chat.session.messages) == 2)  # what came is kept, as the queen keeps it
        assert app.chat.session.messages[1] == ("assistant", transcript.answer.text) and transcript.answer.text
        assert not any("done" in m or "completed" in m for m in notifications(app))


async def test_a_conversation_is_resumed_in_a_new_app(queen):
    first_app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with first_app.run_test(size=(140, 40)) as pilot:
        first = await chat_turn(pilot, first_app, "Hi! My name is Ada.")
        conv_id = first_app.chat.session.conversation_id
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), app=app)
        await pilot.press("enter")  # the newest conversation is highlighted
        await until(pilot, lambda: app.chat.session.conversation_id == conv_id
                    and len(app.chat.transcript.query(MessageBox)) == 2, app=app)
        shown = [b.text for b in app.chat.transcript.query(MessageBox)]
        assert shown == ["Hi! My name is Ada.", first]
        assert app.query_one(TabbedContent).active == "infer" and app.focused is app.query_one("#prompt")
        second = await chat_turn(pilot, app, "What is my name?")
        async with JobClient(queen.url, queen.token) as client:
            job = await client.get(app.chat.last_job)
        assert second and messages(job) == [("user", "Hi! My name is Ada."), ("assistant", first),
                                            ("user", "What is my name?")]


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
        await pilot.press("escape")  # nothing runs in the Jobs tab
        await until(pilot, lambda: "Nothing is running in this tab." in notifications(app), timeout=5)


async def test_bad_form_values_are_notified(tmp_path):
    paths = RbeePaths.from_env({"RBEE_HOME": str(tmp_path)})
    app = RbeeApp(f"http://127.0.0.1:{free_port()}", autostart=False, paths=paths)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.click("#run")
        await until(pilot, lambda: "Type a message first." in notifications(app), timeout=5)
        ask(app, "hi", "0")
        app.query_one("#prompt").focus()
        await pilot.press("enter")
        await until(pilot, lambda: any("'max_tokens' of operation 'infer' must be at least 1" in m
                                       for m in notifications(app)), timeout=5)
        assert app.query_one("#prompt").value == "hi"  # kept, to fix the form and send again


@pytest.fixture
async def queen_with_hub(tmp_path, aiohttp_server, slow):
    """A queen whose hives download from a slow local stand-in for the hub (~10 s for the built-in GGUF)."""
    hub = FakeHub({"test-org/tiny-GGUF/m.gguf": builtin_model_path()}, bytes_per_s=10e6)
    server = await aiohttp_server(hub.app())
    home = tmp_path / "home"
    daemon = await asyncio.to_thread(
        start_daemon, [str(BIN / "queen-rbee"), "--port", "0", "--local-hive-port", "0"], home,
        env={"HF_ENDPOINT": str(server.make_url("")).rstrip("/"), "HF_HOME": str(home / "hf")})
    daemon.paths = RbeePaths.from_env({"RBEE_HOME": str(home)})
    yield daemon
    await asyncio.to_thread(daemon.stop, 30)


async def test_a_download_shows_progress_in_its_tab_and_escape_cancels_it(queen_with_hub):
    queen = queen_with_hub
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.query_one("#download-progress", ProgressBar)
        await pilot.press("f4")
        assert not bar.display  # no idle bar
        app.query_one("#model-ref").value = "hf:test-org/tiny-GGUF:m.gguf"
        await pilot.click("#model-download")
        await until(pilot, lambda: bar.display and (bar.progress or 0) > 1e6, app=app)
        await pilot.press("escape")
        await until(pilot, lambda: "model_download cancelled" in notifications(app), app=app)
        assert not bar.display
        assert not any("completed" in m for m in notifications(app))
        assert app.query_one("#models-log", NarrationPane).lines_written > 0
        assert app.query_one("#story", NarrationPane).lines_written == 0  # nothing in the chat's panes
        assert str(app.query_one("#stats").render()) == ""
        async with JobClient(queen.url, queen.token) as client:
            job = next(j for j in await client.list() if j["operation"] == "model_download")
        assert job["state"] == "cancelled"

        await pilot.click("#model-download")  # again, stopped with the tab's Cancel button this time
        await until(pilot, lambda: bar.display and (bar.progress or 0) > 1e6, app=app)
        # The first one's notification may have timed out by now (5 s, on a loaded machine): a new one counts.
        said_before = {id(n) for n in app._notifications}
        await pilot.click("#model-cancel")
        await until(pilot, lambda: any(n.message == "model_download cancelled" and id(n) not in said_before
                                       for n in app._notifications), app=app)
        assert not bar.display

        app.query_one("#model-ref").value = "hf:test-org/no-such-repo:m.gguf"  # an error is not "completed"
        await pilot.click("#model-download")
        await until(pilot, lambda: any(n.severity == "error" for n in app._notifications), app=app)
        await pilot.pause(0.5)
        assert not any("completed" in m for m in notifications(app))


async def test_a_gguf_on_this_machine_is_pushed_from_the_models_tab(queen, tmp_path):
    import shutil

    mine = tmp_path / "Mine.Q4.gguf"
    shutil.copyfile(builtin_model_path(), mine)
    app = RbeeApp(queen.url, autostart=False, paths=queen.paths)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        table = app.query_one("#models-table", DataTable)
        await until(pilot, lambda: table.row_count > 0, app=app)
        app.query_one("#model-ref").value = "/nowhere/none.gguf"
        await pilot.click("#model-push")
        await until(pilot, lambda: any("does not exist" in m for m in notifications(app)), app=app)
        view = app.query_one("#models")
        await until(pilot, lambda: view.running_job is None, app=app)  # the tab runs one job at a time
        app.query_one("#model-ref").value = str(mine)
        app.clear_notifications()  # at 80x24 the toasts of the refusal cover the toolbar
        await pilot.pause()  # ... until the screen drops them: a click before that lands on a toast
        await pilot.click("#model-push")  # no row of another hive selected: the local hive
        await until(pilot, lambda: "model_push completed" in notifications(app), app=app)
        await pilot.click("#models-refresh")
        await until(pilot, lambda: table.row_count == 2, app=app)
        assert {table.get_row_at(i)[0] for i in range(2)} == {"smollm2-135m", "mine.q4"}


@pytest.fixture
async def two_hives(tmp_path, slow):
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
