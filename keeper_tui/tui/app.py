"""rbee's terminal UI: type a prompt, watch the answer stream in beside the story of how it is made, and
manage hives, workers, models and jobs. All network I/O runs in async workers; errors are notifications."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import (
    Button, DataTable, Footer, Header, Input, Label, ProgressBar, Static, TabbedContent, TabPane,
)

from keeper_tui.output import needs
from keeper_tui.queen_control import default_queen_url, ensure_queen
from keeper_tui.tui.widgets import NarrationPane, TokenPane
from shared.errors import RbeeError
from shared.events import Data, End, Error, Event, JobState, Narration, Token
from shared.job_client import JobClient
from shared.inference import SAMPLING_DEFAULTS, Generation
from shared.models import BUILTIN_MODEL
from shared.operations import LOCAL_HIVE, Operation, parse_operation
from shared.paths import RbeePaths
from shared.token import load_or_create_token
from shared.wire import field_types

CSS = """
#form { height: auto; padding: 0 1; }
#form Input { width: 14; }
#form #prompt { width: 1fr; }
#form #model { width: 22; }
#run { min-width: 8; }
#panes { height: 1fr; }
#answer { width: 2fr; border: round $primary; border-title-color: $primary; }
#story { width: 1fr; border: round $secondary; }
#stats { height: 1; padding: 0 1; color: $text-muted; }
DataTable { height: 1fr; }
.toolbar { height: auto; padding: 0 1; }
.toolbar Input { width: 1fr; }
#download-progress { width: 40; }
"""


class RbeeApp(App):
    TITLE = "rbee"
    SUB_TITLE = "your machines, one prompt"
    CSS = CSS
    BINDINGS = [
        Binding("f1", "tab('infer')", "Infer"),
        Binding("f2", "tab('hives')", "Hives"),
        Binding("f3", "tab('workers')", "Workers"),
        Binding("f4", "tab('models')", "Models"),
        Binding("f5", "tab('jobs')", "Jobs"),
        Binding("escape", "cancel_job", "Cancel job"),
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, queen_url: str | None = None, *, autostart: bool = True, paths: RbeePaths | None = None):
        super().__init__()
        self.queen_url = (queen_url or default_queen_url()).rstrip("/")
        self.autostart = autostart
        self.paths = paths or RbeePaths.from_env()
        self.current_job: str | None = None
        self.last_job: str | None = None
        self.last_end: End | None = None
        self._client: JobClient | None = None
        self.worker_hives: dict[str, str] = {}  # worker id -> its hive, from the Workers view

    # -- layout ---------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="infer"):
            with TabPane("Infer", id="infer"):
                with Horizontal(id="form"):
                    yield Input(placeholder="Ask something, then Enter", id="prompt")
                    yield Input(value=BUILTIN_MODEL, placeholder="model", id="model")
                    yield Input(placeholder="any hive", id="hive")
                    yield Input(value=str(SAMPLING_DEFAULTS["max_tokens"]), placeholder="max tokens", id="max_tokens",
                                type="integer")
                    yield Input(value=str(SAMPLING_DEFAULTS["temperature"]), placeholder="temperature",
                                id="temperature", type="number")
                    yield Button("Run", id="run", variant="primary")
                with Horizontal(id="panes"):
                    with Vertical(id="answer") as answer:
                        answer.border_title = "answer"
                        yield TokenPane(id="tokens")
                    yield NarrationPane(id="story")
                yield Static("", id="stats")
            with TabPane("Hives", id="hives"):
                with Horizontal(classes="toolbar"):
                    yield Button("Refresh", id="hives-refresh")
                    yield Button("Start", id="hive-start")
                    yield Button("Stop", id="hive-stop")
                    yield Button("Install", id="hive-install")
                yield DataTable(id="hives-table", cursor_type="row")
            with TabPane("Workers", id="workers"):
                with Horizontal(classes="toolbar"):
                    yield Button("Refresh", id="workers-refresh")
                    yield Button("Stop worker", id="worker-stop")
                yield DataTable(id="workers-table", cursor_type="row")
            with TabPane("Models", id="models"):
                with Horizontal(classes="toolbar"):
                    yield Input(placeholder="hf:<org>/<repo>:<file>.gguf or file:<path>", id="model-ref")
                    yield Button("Download", id="model-download")
                    yield Button("Delete", id="model-delete")
                    yield Button("Refresh", id="models-refresh")
                    yield ProgressBar(id="download-progress", show_eta=False)
                yield DataTable(id="models-table", cursor_type="row")
            with TabPane("Jobs", id="jobs"):
                with Horizontal(classes="toolbar"):
                    yield Button("Refresh", id="jobs-refresh")
                    yield Button("Cancel", id="job-cancel")
                    yield Button("Watch", id="job-watch")
                    yield Label("Enter on a row re-attaches to its stream")
                yield DataTable(id="jobs-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (("hives-table", ("alias", "state", "url", "host")),
                                  ("workers-table", ("id", "hive", "model", "state", "device", "slots busy", "pid")),
                                  ("models-table", ("id", "size", "needs", "sha256", "path")),
                                  ("jobs-table", ("job", "operation", "state", "summary"))):
            self.query_one(f"#{table_id}", DataTable).add_columns(*columns)
        self.query_one("#prompt", Input).focus()

    async def on_unmount(self) -> None:
        if self._client is not None:
            await self._client.close()

    # -- the queen ------------------------------------------------------------------------------------

    async def client(self) -> JobClient:
        """A client for the queen, waking it first (the story pane says so) unless autostart is off."""
        story = self.query_one(NarrationPane)
        await ensure_queen(self.queen_url, self.paths, autostart=self.autostart, say=story.say)
        if self._client is None:
            self._client = JobClient(self.queen_url, load_or_create_token(self.paths))
        return self._client

    def report(self, exc: RbeeError) -> None:
        self.notify(exc.message, title=exc.title, severity="error", timeout=8)

    # -- infer ----------------------------------------------------------------------------------------

    @on(Input.Submitted, "#form Input")
    @on(Button.Pressed, "#run")
    def submit_prompt(self) -> None:
        prompt = self.query_one("#prompt", Input).value
        if not prompt.strip():
            self.notify("Type a prompt first.", severity="warning")
            return
        body: dict[str, Any] = {"operation": "infer", "prompt": prompt,
                                "model": self.query_one("#model", Input).value.strip() or BUILTIN_MODEL}
        if hive := self.query_one("#hive", Input).value.strip():
            body["hive_id"] = hive
        types = field_types(Generation)
        for field, cast in (("max_tokens", types["max_tokens"]), ("temperature", types["temperature"])):
            raw = self.query_one(f"#{field}", Input).value.strip()
            if raw:
                try:
                    body[field] = cast(raw)
                except ValueError:
                    self.notify(f"{field.replace('_', ' ')} must be a number, not {raw!r}.", severity="error")
                    return
        try:
            operation = parse_operation(body)
        except RbeeError as exc:
            self.report(exc)
            return
        self.query_one(TokenPane).clear()
        self.query_one(NarrationPane).clear()
        self.query_one("#stats", Static).update("")
        self.stream_job(operation=operation)

    @work(exclusive=True, group="job")
    async def stream_job(self, operation: Operation | None = None, job_id: str | None = None) -> None:
        """Submit `operation` (or follow `job_id` from its start) and show every event as it comes."""
        self.last_end = None
        try:
            client = await self.client()
            if job_id is None:
                assert operation is not None
                job_id = (await client.submit(operation)).job_id
            self.current_job = self.last_job = job_id
            self.sub_title = f"job {job_id}"
            async for event in client.stream(job_id):
                self.show_event(event)
        except RbeeError as exc:
            self.report(exc)
        finally:
            self.current_job = None
            self.query_one(TokenPane).flush()

    def show_event(self, event: Event) -> None:
        if isinstance(event, Token):
            self.query_one(TokenPane).append(event.t)
        elif isinstance(event, Narration):
            self.query_one(NarrationPane).narration(event)
        elif isinstance(event, Error):
            self.query_one(NarrationPane).say(f"error: {event.message}", "error")
            self.notify(event.message, title=event.code, severity="error", timeout=8)
        elif isinstance(event, Data) and event.action == "download_progress":
            bar = self.query_one("#download-progress", ProgressBar)
            bar.update(total=event.payload.get("total") or None, progress=event.payload.get("done", 0))
        elif isinstance(event, End):
            self.last_end = event
            self.query_one("#stats", Static).update(self._stats(event))
            self.sub_title = f"job {event.state}"

    @staticmethod
    def _stats(end: End) -> str:
        s = end.stats
        if end.state is JobState.COMPLETED and "tokens_out" in s:
            return (f"completed · {s.get('tokens_out')} tokens · first token {s.get('ttft_ms')} ms · "
                    f"{s.get('tokens_per_s')} tokens/s · {s.get('worker_id')} on {s.get('hive_id')}")
        return end.state.value

    def action_cancel_job(self) -> None:
        if self.current_job is None:
            self.notify("No job is running.", severity="warning")
            return
        self.cancel_job(self.current_job)

    @work(group="cancel")
    async def cancel_job(self, job_id: str) -> None:
        try:
            state = (await (await self.client()).cancel(job_id)).get("state")
            self.query_one(NarrationPane).say(f"cancelled job {job_id} ({state})", "warn")
        except RbeeError as exc:
            self.report(exc)

    # -- views ----------------------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.action_refresh()

    def action_refresh(self) -> None:
        tab = self.query_one(TabbedContent).active
        if tab in ("hives", "workers", "models", "jobs"):
            self.load_view(tab)

    @on(TabbedContent.TabActivated)
    def tab_activated(self) -> None:
        self.action_refresh()

    @on(Button.Pressed, "#hives-refresh, #workers-refresh, #models-refresh, #jobs-refresh")
    def refresh_pressed(self) -> None:
        self.action_refresh()

    @work(exclusive=True, group="view")
    async def load_view(self, view: str) -> None:
        try:
            client = await self.client()
            if view == "jobs":
                rows = [(j["job_id"], j["operation"], j["state"], (j.get("about") or "")[:50])
                        for j in await client.list()]
            elif view == "workers":  # the queen's registry: every hive's workers, from their heartbeats
                workers = (await client.request("GET", "/v1/workers"))["workers"]
                self.worker_hives = {w["worker_id"]: w["hive_id"] for w in workers}
                rows = [(w["worker_id"], w["hive_id"], w["model"], w["state"], w["device"],
                         f"{w.get('slots_busy', 0)}/{w.get('slots', 1)}", w["pid"]) for w in workers]
            else:
                op = {"hives": {"operation": "hive_list"}, "models": {"operation": "model_list"}}[view]
                payload = await self._data_of(client, op)
                rows = self._rows(view, payload)
        except RbeeError as exc:
            self.report(exc)
            return
        table = self.query_one(f"#{view}-table", DataTable)
        table.clear()
        for row in rows:
            table.add_row(*(("" if c is None else str(c)) for c in row), key=str(row[0]))

    async def _data_of(self, client: JobClient, operation: dict) -> Any:
        job = await client.submit(operation)
        payload = None
        async for event in client.stream(job.job_id):
            if isinstance(event, Data):
                payload = event.payload
            elif isinstance(event, Error):
                raise RbeeError(event.message, code=event.code)
        return payload or {}

    @staticmethod
    def _rows(view: str, payload: dict) -> list[tuple]:
        if view == "hives":
            return [(h["alias"], h["state"], h.get("url"), h.get("host")) for h in payload.get("hives", [])]
        return [(m["id"], f"{m['size'] / 1e6:.1f} MB", needs(m), m["sha256"][:12], m["path"])
                for m in payload.get("models", [])]

    def _selected(self, table_id: str) -> str | None:
        table = self.query_one(f"#{table_id}", DataTable)
        if table.row_count == 0:
            self.notify("Nothing selected.", severity="warning")
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    @on(Button.Pressed, "#hive-start, #hive-stop, #hive-install, #worker-stop, #model-delete, #model-download")
    def action_button(self, event: Button.Pressed) -> None:
        button = event.button.id
        if button == "model-download":
            ref = self.query_one("#model-ref", Input).value.strip()
            if not ref:
                self.notify("Type a model reference to download.", severity="warning")
                return
            self.run_operation({"operation": "model_download", "model": ref}, "models")
            return
        table = {"hive": "hives-table", "worker": "workers-table", "model": "models-table"}[button.split("-")[0]]
        key = self._selected(table)
        if key is None:
            return
        op = {"hive-start": {"operation": "hive_start", "alias": key},
              "hive-stop": {"operation": "hive_stop", "alias": key},
              "hive-install": {"operation": "hive_install", "alias": key},
              "worker-stop": {"operation": "worker_delete", "id": key,
                              "hive_id": self.worker_hives.get(key, LOCAL_HIVE)},
              "model-delete": {"operation": "model_delete", "id": key}}[button]
        self.run_operation(op, table.split("-")[0])

    @work(group="actions")
    async def run_operation(self, operation: dict, then_refresh: str) -> None:
        """Run a management job; its narration goes to the story pane, its errors to notifications."""
        try:
            client = await self.client()
            job = await client.submit(operation)
            async for event in client.stream(job.job_id):
                if isinstance(event, (Narration, Error, End)) or (
                        isinstance(event, Data) and event.action == "download_progress"):
                    self.show_event(event)
            self.notify(f"{operation['operation']} done", timeout=3)
        except RbeeError as exc:
            self.report(exc)
        self.load_view(then_refresh)

    @on(Button.Pressed, "#job-cancel")
    def cancel_selected_job(self) -> None:
        if (job_id := self._selected("jobs-table")) is not None:
            self.cancel_job(job_id)

    @on(Button.Pressed, "#job-watch")
    @on(DataTable.RowSelected, "#jobs-table")
    def watch_selected_job(self) -> None:
        if (job_id := self._selected("jobs-table")) is None:
            return
        self.query_one(TabbedContent).active = "infer"
        self.query_one(TokenPane).clear()
        self.query_one(NarrationPane).clear()
        self.stream_job(job_id=job_id)


def run_tui(queen_url: str | None, autostart: bool) -> None:
    RbeeApp(queen_url, autostart=autostart).run()
