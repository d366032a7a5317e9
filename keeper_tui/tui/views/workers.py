"""The workers tab: every hive's workers, from the queen's registry (their heartbeats), and stopping one."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable

from keeper_tui.output import version_cell
from keeper_tui.tui.queen import QueenLink
from keeper_tui.tui.views.base import TableView
from keeper_tui.tui.widgets import NarrationPane
from shared.errors import RbeeError
from shared.operations import LOCAL_HIVE, WorkerDelete

COLUMNS = ("id", "hive", "model", "state", "device", "slots busy", "version", "pid")


class WorkersView(TableView):
    focus_id = table_id = "workers-table"
    log_id = "workers-log"

    def __init__(self, queen: QueenLink) -> None:
        super().__init__("Workers", queen, id="workers")
        self.worker_hives: dict[str, str] = {}  # worker id -> its hive

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Button("Refresh", id="workers-refresh", compact=True)
            yield Button("Stop worker", id="worker-stop", compact=True)
        yield NarrationPane(id="workers-log", classes="activity")
        yield DataTable(id="workers-table", cursor_type="row")

    def on_mount(self) -> None:
        self.table.add_columns(*COLUMNS)

    @on(Button.Pressed, "#workers-refresh")
    def reload(self) -> None:
        self.load()

    @work(exclusive=True, group="view")
    async def load(self) -> None:
        try:
            workers = (await (await self.queen.client(say=self.say)).request("GET", "/v1/workers"))["workers"]
        except RbeeError as exc:
            self.report(exc)
            return
        self.worker_hives = {w["worker_id"]: w["hive_id"] for w in workers}
        self.fill([(w["worker_id"], w["worker_id"], w["hive_id"],
                    w["model"] + (" (embedding)" if w.get("embedding") else ""), w["state"], w["device"],
                    f"{w.get('slots_busy', 0)}/{w.get('slots', 1)}", version_cell(w), w["pid"]) for w in workers])

    @on(Button.Pressed, "#worker-stop")
    def stop_worker(self) -> None:
        """worker_delete goes to the worker's own hive."""
        if not self.busy() and (worker_id := self.selected()) is not None:
            self.run_operation(WorkerDelete(id=worker_id, hive_id=self.worker_hives.get(worker_id, LOCAL_HIVE)))
