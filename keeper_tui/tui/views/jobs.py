"""The jobs tab: the queen's jobs, cancelling one, and replaying one's stream below the list (and following
it while it runs)."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Checkbox, DataTable, Label

from keeper_tui.output import short_id
from keeper_tui.tui.queen import QueenLink
from keeper_tui.tui.views.base import TableView
from keeper_tui.tui.views.chat import end_stats
from keeper_tui.tui.widgets import NarrationPane, TokenPane
from shared.errors import RbeeError
from shared.events import End, Error, JobState, Narration, Token

COLUMNS = ("job", "operation", "state", "summary")


class JobsView(TableView):
    DEFAULT_CSS = """
    JobsView #job-view { height: 1fr; display: none; }
    JobsView #job-view.-watching { display: block; }
    JobsView #job-view TokenPane { width: 2fr; border: round $primary; }
    JobsView #job-view NarrationPane { width: 1fr; border: round $secondary; }
    Screen.-narrow JobsView #job-view { layout: vertical; }
    Screen.-narrow JobsView #job-view TokenPane, Screen.-narrow JobsView #job-view NarrationPane { width: 1fr; }
    """
    SCOPED_CSS = False  # the rules name the view themselves: some hang on the screen's width class
    focus_id = table_id = "jobs-table"
    log_id = "job-story"
    reload_after_cancel = True

    def __init__(self, queen: QueenLink) -> None:
        super().__init__("Jobs", queen, id="jobs")

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Button("Refresh", id="jobs-refresh", compact=True)
            yield Button("Cancel", id="job-cancel", compact=True)
            yield Button("Watch", id="job-watch", compact=True)
            yield Checkbox("lists too", id="jobs-all", compact=True)
            yield Label("Enter on a row replays its stream")
        yield DataTable(id="jobs-table", cursor_type="row")
        with Horizontal(id="job-view"):
            yield TokenPane(id="job-tokens")
            yield NarrationPane(id="job-story")

    def on_mount(self) -> None:
        self.table.add_columns(*COLUMNS)

    @on(Button.Pressed, "#jobs-refresh")
    @on(Checkbox.Changed, "#jobs-all")
    def reload(self) -> None:
        self.load()

    @work(exclusive=True, group="view")
    async def load(self) -> None:
        try:
            client = await self.queen.client(say=self.say)
            jobs = await client.list(all=self.query_one("#jobs-all", Checkbox).value)
        except RbeeError as exc:
            self.report(exc)
            return
        self.fill([(j["job_id"], short_id(j["job_id"]), j["operation"], j["state"], (j.get("about") or "")[:50])
                   for j in jobs])

    @on(Button.Pressed, "#job-cancel")
    def cancel_selected(self) -> None:
        if (job_id := self.selected()) is not None:
            self.cancel_job(job_id)

    @on(Button.Pressed, "#job-watch")
    @on(DataTable.RowSelected, "#jobs-table")
    def watch_selected(self) -> None:
        if (job_id := self.selected()) is not None:
            self.replay(job_id)

    @work(exclusive=True, group="watch")
    async def replay(self, job_id: str) -> None:
        """Replay a job's stream from its start below the job list (and follow it if it still runs)."""
        tokens, story = self.query_one("#job-tokens", TokenPane), self.query_one("#job-story", NarrationPane)
        self.query_one("#job-view").add_class("-watching")
        tokens.clear()
        story.clear()
        story.say(f"job {job_id}")
        self.running_job = job_id
        try:
            async for event in (await self.queen.client(say=story.say)).stream(job_id):
                if isinstance(event, Token):
                    tokens.append(event.t)
                elif isinstance(event, Narration):
                    story.narration(event)
                elif isinstance(event, Error):
                    story.say(f"{event.code}: {event.message}", "error")
                elif isinstance(event, End):
                    story.say(end_stats(event), "info" if event.state is JobState.COMPLETED else "warn")
        except RbeeError as exc:
            self.report(exc)
        finally:
            if self.running_job == job_id:
                self.running_job = None
