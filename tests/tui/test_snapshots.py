"""Every view of the TUI at 80×24 and 160×45, compared with the SVGs in __snapshots__/ (look at them:
`pytest tests/tui/test_snapshots.py --snapshot-update` rewrites them after a deliberate change).

The app talks to a port where nothing listens, so no clock, id or port of a live system shows; what the
views show is put there through the app's own methods."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from keeper_tui.tui.app import RbeeApp
from keeper_tui.tui.views.chat import end_stats
from keeper_tui.tui.views.hives import HivesView, hive_row
from keeper_tui.tui.views.jobs import JobsView
from keeper_tui.tui.views.models import ModelsView
from keeper_tui.tui.views.workers import WorkersView
from keeper_tui.tui.widgets import NarrationPane
from shared.events import End, Narration
from shared.paths import RbeePaths

NOBODY = "http://127.0.0.1:9"  # the discard port: connections are refused at once
SIZES = {"80x24": (80, 24), "160x45": (160, 45)}
VIEWS = {"chat": "f1", "hives": "f2", "workers": "f3", "models": "f4", "jobs": "f5", "keys": "f6"}
QUESTION = "Why is the sky blue?"
ANSWER = ("The sky is blue because of Rayleigh scattering: air molecules scatter short (blue) wavelengths of "
          "sunlight far more than long (red) ones, so blue light reaches your eyes from every direction of the "
          "sky.\n\nAt sunset the light crosses more air, the blue is scattered away, and reds remain.")
GPUS = [{"device": "cuda:0", "memory_total_mb": 24564, "memory_free_mb": 20582, "utilization_pct": 35},
        {"device": "cuda:1", "memory_total_mb": 24564, "memory_free_mb": 24264, "utilization_pct": 0}]
STORY = [("queen", "Starting hive localhost"), ("hive", "Spawning a cpu worker for smollm2-135m"),
         ("worker", "Loading smollm2-135m (98 MB)"), ("queen", "Worker ready on localhost")]


async def show(pilot, key: str) -> None:
    """A conversation, a story and table rows, as a session would leave them; then the view `key`."""
    app: RbeeApp = pilot.app
    await pilot.pause()  # the first layout: the story pane wraps its lines at the width it has then
    for field in app.query(Input):
        field.cursor_blink = False  # a blinking cursor is there in one snapshot and gone in the next
    app.chat.transcript.add_message("user", QUESTION, "you")
    app.chat.transcript.add_message("assistant", ANSWER, "smollm2-135m")
    app.chat.transcript.border_title = "Why is the sky blue?"
    for actor, human in STORY:
        app.query_one("#story", NarrationPane).narration(Narration(actor=actor, action="x", human=human, ts=0))
    app.query_one("#stats").update(end_stats(End(state="completed", stats={
        "tokens_out": 64, "ttft_ms": 212, "tokens_per_s": 48.5, "worker_id": "worker-1", "hive_id": "localhost"})))
    await pilot.press(key)
    await app.workers.wait_for_complete()  # the view asked the queen, which is not there
    app.clear_notifications()
    app.query_one(HivesView).fill([hive_row({"alias": "localhost", "state": "running", "url": "http://127.0.0.1:7835",
                                             "capabilities": {"gpus": GPUS}})])
    app.query_one(WorkersView).fill([("worker-1", "worker-1", "localhost", "smollm2-135m", "ready", "cpu", "0/4",
                                      4242)])
    app.query_one(JobsView).fill([("job-0d5b7c1e-1", "job-0d5b7c1e", "infer", "completed", QUESTION)])
    app.query_one(ModelsView).fill([("m", "smollm2-135m", "localhost", "98.0 MB", "180 MiB (2048×2)", "smollm2-135m",
                                 "/models/SmolLM2-135M-Instruct.Q4_1.gguf")])
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("view", VIEWS)
def test_view(snap_compare, tmp_path, view, size):
    app = RbeeApp(NOBODY, autostart=False, paths=RbeePaths.from_env({"RBEE_HOME": str(tmp_path)}))
    assert snap_compare(app, terminal_size=SIZES[size], run_before=lambda pilot: show(pilot, VIEWS[view]))
