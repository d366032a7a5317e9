"""The hives tab: every hive the queen knows (a running one's GPUs: free of total VRAM, utilisation), and
starting, stopping or installing one."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable

from keeper_tui.output import gpus_brief, version_cell
from keeper_tui.tui.queen import QueenLink, data_of
from keeper_tui.tui.views.base import TableView
from keeper_tui.tui.widgets import NarrationPane
from shared.errors import RbeeError
from shared.job_client import JobClient
from shared.operations import HiveInstall, HiveList, HiveStart, HiveStop

COLUMNS = ("alias", "state", "version", "url", "host", "gpus")
ACTIONS = {"hive-start": HiveStart, "hive-stop": HiveStop, "hive-install": HiveInstall}


async def list_hives(client: JobClient) -> list[dict[str, Any]]:
    return (await data_of(client, HiveList())).get("hives", [])


def hive_row(hive: dict[str, Any]) -> tuple:
    """(key, cells…) of one hive: its GPUs as it last reported them."""
    return (hive["alias"], hive["alias"], hive["state"], version_cell(hive), hive.get("url"), hive.get("host"),
            gpus_brief(hive.get("capabilities")))


class HivesView(TableView):
    focus_id = table_id = "hives-table"
    log_id = "hives-log"

    def __init__(self, queen: QueenLink) -> None:
        super().__init__("Hives", queen, id="hives")

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Button("Refresh", id="hives-refresh", compact=True)
            yield Button("Start", id="hive-start", compact=True)
            yield Button("Stop", id="hive-stop", compact=True)
            yield Button("Install", id="hive-install", compact=True)
        yield NarrationPane(id="hives-log", classes="activity")
        yield DataTable(id="hives-table", cursor_type="row")

    def on_mount(self) -> None:
        self.table.add_columns(*COLUMNS)

    @on(Button.Pressed, "#hives-refresh")
    def reload(self) -> None:
        self.load()

    @work(exclusive=True, group="view")
    async def load(self) -> None:
        try:
            hives = await list_hives(await self.queen.client(say=self.say))
        except RbeeError as exc:
            self.report(exc)
            return
        self.fill([hive_row(h) for h in hives])

    @on(Button.Pressed, "#hive-start, #hive-stop, #hive-install")
    def act(self, event: Button.Pressed) -> None:
        if not self.busy() and (alias := self.selected()) is not None:
            self.run_operation(ACTIONS[str(event.button.id)](alias=alias))
