"""The models tab: every running hive's catalog, downloading or pushing a GGUF from this machine (with its
progress), deleting, and picking the chat's model (Enter on a row)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, DataTable, Input, ProgressBar

from keeper_tui.output import needs
from keeper_tui.tui.queen import QueenLink, data_of
from keeper_tui.tui.views.base import TableView
from keeper_tui.tui.views.hives import list_hives
from keeper_tui.tui.widgets import NarrationPane
from shared.errors import RbeeError
from shared.operations import LOCAL_HIVE, ModelDelete, ModelDownload, ModelList, ModelPush

COLUMNS = ("alias", "hive", "size", "needs", "id", "path")


class ModelsView(TableView):
    DEFAULT_CSS = """
    ModelsView #model-ref { width: 1fr; min-width: 24; margin: 0 1 0 0; }
    ModelsView #download-progress { height: 1; padding: 0 1; display: none; }
    ModelsView #download-progress.-active { display: block; }
    """
    SCOPED_CSS = False  # the rules name the view themselves: some hang on the screen's width class
    focus_id = table_id = "models-table"
    log_id = "models-log"

    @dataclass
    class CatalogLoaded(Message):
        """The names (aliases, else ids) of every model the running hives have."""

        names: set[str]

    @dataclass
    class ModelChosen(Message):
        """The person picked a model to chat with."""

        model: str

    def __init__(self, queen: QueenLink) -> None:
        super().__init__("Models", queen, id="models")
        self.rows: dict[str, dict[str, Any]] = {}  # row key -> catalog entry (with its hive)

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Input(placeholder="hf:…, file:…, a .gguf to push", id="model-ref",
                        compact=True)
            yield Button("Download", id="model-download", compact=True)
            yield Button("Push", id="model-push", compact=True)
            yield Button("Cancel", id="model-cancel", compact=True)
            yield Button("Delete", id="model-delete", compact=True)
            yield Button("Refresh", id="models-refresh", compact=True)
        yield ProgressBar(id="download-progress", show_eta=False)
        yield NarrationPane(id="models-log", classes="activity")
        yield DataTable(id="models-table", cursor_type="row")

    def on_mount(self) -> None:
        self.table.add_columns(*COLUMNS)

    def progress(self) -> ProgressBar:
        return self.query_one("#download-progress", ProgressBar)

    @on(Button.Pressed, "#models-refresh")
    def reload(self) -> None:
        self.load()

    @work(exclusive=True, group="models")
    async def load(self, quiet: bool = False) -> None:
        """Every running hive's catalog. `quiet` (at start-up, for the chat's model picker) leaves a missing
        queen to the first thing the person asks for."""
        try:
            client = await self.queen.client(say=None if quiet else self.say)
            entries = []
            for hive in await list_hives(client):
                if hive["alias"] == LOCAL_HIVE or hive["state"] == "running":
                    catalog = await data_of(client, ModelList(hive_id=hive["alias"]))
                    entries += [{**m, "hive": hive["alias"]} for m in catalog.get("models", [])]
        except RbeeError as exc:
            if not quiet:
                self.report(exc)
            return
        self.rows = {f"{m['hive']}\t{m['id']}": m for m in entries}
        self.fill([(key, m.get("alias") or m["id"], m["hive"], f"{m['size'] / 1e6:.1f} MB", needs(m), m["id"],
                    m["path"]) for key, m in self.rows.items()])
        self.post_message(self.CatalogLoaded({m.get("alias") or m["id"] for m in entries}))

    @on(DataTable.RowSelected, "#models-table")
    def choose(self) -> None:
        if (key := self.selected()) is not None:
            model = self.rows[key]
            self.post_message(self.ModelChosen(model.get("alias") or model["id"]))

    @on(Button.Pressed, "#model-download")
    def download(self) -> None:
        if self.busy():
            return
        if not (ref := self.query_one("#model-ref", Input).value.strip()):
            self.notify("Type a model reference to download.", severity="warning")
            return
        self.run_operation(ModelDownload(model=ref))

    @on(Button.Pressed, "#model-push")
    def push(self) -> None:
        """The file in the box, to the hive of the selected row (the local hive when none is)."""
        if self.busy():
            return
        path = self.query_one("#model-ref", Input).value.strip().removeprefix("file:")
        if not path or path.startswith("hf:"):
            self.notify("Type the path of a .gguf file on this machine to push.", severity="warning")
            return
        key = self.selected()
        hive = self.rows[key]["hive"] if key is not None else LOCAL_HIVE
        self.notify(f"Pushing {os.path.basename(path)} to {hive} (select a row of another hive to push there).")
        self.run_operation(ModelPush(path=os.path.abspath(os.path.expanduser(path)), hive_id=hive))

    @on(Button.Pressed, "#model-delete")
    def delete(self) -> None:
        if not self.busy() and (key := self.selected()) is not None:
            self.run_operation(ModelDelete(id=self.rows[key]["id"], hive_id=self.rows[key]["hive"]))

    @on(Button.Pressed, "#model-cancel")
    def cancel_download(self) -> None:
        self.cancel_running()
