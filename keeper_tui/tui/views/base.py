"""What every tab of the app is: a TabPane with its own widgets, styles and handlers, the queen to ask, and
the one job it runs now (Esc cancels that). The management tabs share a table, a toolbar and an activity
log that tells the story of the jobs they start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import work
from textual.message import Message
from textual.widgets import DataTable, ProgressBar, TabPane

from keeper_tui.output import PROGRESS_ACTIONS, short_id
from keeper_tui.tui.queen import QueenLink, Say
from keeper_tui.tui.widgets import NarrationPane
from shared.errors import RbeeError
from shared.events import Data, End, Error, JobState, Narration
from shared.operations import Operation


class View(TabPane):
    """One tab. `focus_id` is the widget that gets the focus when the tab opens."""

    focus_id: ClassVar[str]
    reload_after_cancel: ClassVar[bool] = False

    @dataclass
    class Show(Message):
        """`view` asks to be the tab shown (a resumed conversation, a new chat)."""

        view: View

    def __init__(self, title: str, queen: QueenLink, *, id: str) -> None:
        super().__init__(title, id=id)
        self.queen = queen
        self.running_job: str | None = None  # what Esc cancels in this tab

    def reload(self) -> None:
        """Ask the queen again for what the tab shows (on opening it, Ctrl+R, after its jobs)."""

    def report(self, exc: RbeeError) -> None:
        self.notify(exc.message, title=exc.title, severity="error", timeout=8)

    def cancel_running(self) -> None:
        if self.running_job is None:
            self.notify("Nothing is running in this tab.", severity="warning", timeout=3)
            return
        self.cancel_job(self.running_job)

    @work(group="cancel")
    async def cancel_job(self, job_id: str) -> None:
        try:
            state = (await (await self.queen.client()).cancel(job_id)).get("state")
        except RbeeError as exc:
            self.report(exc)
            return
        self.notify(f"{short_id(job_id)}: {state}.", timeout=3)
        if self.reload_after_cancel:
            self.reload()


class TableView(View):
    """A tab around a table of things the queen knows (hives, workers, models) and the jobs that act on
    them: their story goes to the tab's activity log (shown once used), errors to notifications."""

    table_id: ClassVar[str]
    log_id: ClassVar[str]

    @property
    def table(self) -> DataTable:
        return self.query_one(f"#{self.table_id}", DataTable)

    @property
    def activity(self) -> NarrationPane:
        pane = self.query_one(f"#{self.log_id}", NarrationPane)
        pane.add_class("-used")
        return pane

    @property
    def say(self) -> Say:
        return lambda message: self.activity.say(message)

    def fill(self, rows: list[tuple]) -> None:
        """Replace the table's rows; each row is (key, cells…); the cursor stays on the same row."""
        table = self.table
        cursor = table.cursor_row
        table.clear()
        for key, *cells in rows:
            table.add_row(*(("" if c is None else str(c)) for c in cells), key=str(key))
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    def selected(self) -> str | None:
        """The key of the row under the cursor (a notification when there is none)."""
        table = self.table
        if table.row_count == 0:
            self.notify("Nothing selected.", severity="warning")
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def busy(self) -> bool:
        """Whether a job of this tab still runs (saying so): a tab runs one at a time."""
        if self.running_job is None:
            return False
        self.notify("A job of this tab is still running: Esc cancels it.", severity="warning")
        return True

    def progress(self) -> ProgressBar | None:
        """Where a download's progress is shown, in a tab that has a bar."""
        return None

    @work(group="actions")
    async def run_operation(self, operation: Operation) -> None:
        """Run a management job: its story to the activity log, a download's progress to the bar (shown only
        while it runs), errors to notifications; only success says so."""
        log, bar, name = self.activity, self.progress(), operation.name
        end: End | None = None
        try:
            client = await self.queen.client(say=log.say)
            job_id = (await client.submit(operation)).job_id
            self.running_job = job_id
            log.rule(f"{name} {short_id(job_id)}")
            async for event in client.stream(job_id):
                if isinstance(event, Narration):
                    log.narration(event)
                elif isinstance(event, Error):
                    log.say(f"{event.code}: {event.message}", "error")
                    self.notify(event.message, title=event.code, severity="error", timeout=8)
                elif isinstance(event, Data) and event.action in PROGRESS_ACTIONS and bar is not None:
                    bar.add_class("-active")
                    bar.update(total=event.payload.get("total") or None, progress=event.payload.get("done", 0))
                elif isinstance(event, End):
                    end = event
                    log.say(f"{name} {end.state.value}", "info" if end.state is JobState.COMPLETED else "warn")
        except RbeeError as exc:
            self.report(exc)
        finally:
            self.running_job = None
            if bar is not None:
                bar.remove_class("-active")
                bar.update(total=None, progress=0)
        if end is not None and end.state is JobState.COMPLETED:
            self.notify(f"{name} completed", timeout=3)
        elif end is not None and end.state is JobState.CANCELLED:
            self.notify(f"{name} cancelled", severity="warning", timeout=3)
        self.reload()
