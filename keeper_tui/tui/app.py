"""rbee's terminal UI: chat with a model while the story of each answer is told beside it, and manage
hives, workers, models and jobs. All network I/O runs in async workers; errors are notifications."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import (
    Button, Checkbox, DataTable, Footer, Header, Input, Label, ProgressBar, Select, Static, TabbedContent, TabPane,
)

from keeper_tui.output import needs, short_id
from keeper_tui.queen_control import default_queen_url, ensure_queen
from keeper_tui.tui.screens import ConversationChoice, ConversationsScreen, HelpScreen
from keeper_tui.tui.widgets import ChatView, MessageBox, NarrationPane, TokenPane
from shared.errors import RbeeError
from shared.events import Data, End, Error, Event, JobState, Narration, Token
from shared.inference import SAMPLING_DEFAULTS, Generation
from shared.job_client import JobClient
from shared.models import BUILTIN_MODEL
from shared.operations import LOCAL_HIVE, Infer, parse_operation
from shared.paths import RbeePaths
from shared.token import load_or_create_token
from shared.wire import field_types

CSS = """
.bar { height: 1; padding: 0 1; }
.bar Label { padding: 0 1 0 1; color: $text-muted; }
#model { width: 1fr; min-width: 16; max-width: 48; }
#hive { width: 12; }
#max_tokens { width: 7; }
#temperature { width: 6; }
#panes { height: 1fr; }
#transcript { width: 2fr; border: round $primary; border-title-color: $primary; }
#story { width: 1fr; border: round $secondary; }
Screen.-narrow #panes { layout: vertical; }
Screen.-narrow #transcript { width: 1fr; height: 1fr; }
Screen.-narrow #story { width: 1fr; height: 6; }
#stats { height: 1; padding: 0 1; color: $text-muted; }
#prompt-row { height: auto; }
#prompt { width: 1fr; }
#prompt-row Button { margin: 1 0 0 1; min-width: 6; width: auto; }
.toolbar { height: auto; padding: 0 1; }
.toolbar Button { margin: 0 1 0 0; min-width: 6; width: auto; }
.toolbar Label { padding: 0 1; color: $text-muted; }
#model-ref { width: 1fr; min-width: 24; margin: 0 1 0 0; }
#download-progress { height: 1; padding: 0 1; display: none; }
#download-progress.-active { display: block; }
.activity { height: 4; border-top: solid $secondary; display: none; }
.activity.-used { display: block; }
DataTable { height: 1fr; }
#job-view { height: 1fr; display: none; }
#job-view.-watching { display: block; }
#job-view TokenPane { width: 2fr; border: round $primary; }
#job-view NarrationPane { width: 1fr; border: round $secondary; }
Screen.-narrow #job-view { layout: vertical; }
Screen.-narrow #job-view TokenPane, Screen.-narrow #job-view NarrationPane { width: 1fr; }
"""

VIEWS = ("hives", "workers", "models", "jobs")
STATS_HZ = 4  # live tokens/s while an answer streams


@dataclass
class Turn:
    """The answer being generated: the live stats line is computed from it."""

    prompt: str
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    tokens: int = 0

    def live_stats(self) -> str:
        if self.first_token is None:
            return f"waiting for the first token · {time.monotonic() - self.started:.1f} s"
        elapsed = time.monotonic() - self.first_token
        rate = f"{(self.tokens - 1) / elapsed:.1f}" if elapsed > 0 and self.tokens > 1 else "-"
        return (f"generating · {self.tokens} tokens · first token {(self.first_token - self.started) * 1000:.0f} ms"
                f" · {rate} tokens/s")


class RbeeApp(App):
    TITLE = "rbee"
    SUB_TITLE = "your machines, one prompt"
    CSS = CSS
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    ENABLE_COMMAND_PALETTE = False  # every action has a key (F6 lists them) or a button
    BINDINGS = [
        # priority: a focused field or table must not keep these keys, and the focus moves into the
        # new tab (a focused widget left in a hidden tab pulls its tab back)
        Binding("f1", "tab('infer')", "Chat", priority=True, tooltip="the chat: a conversation with a model"),
        Binding("f2", "tab('hives')", "Hives", priority=True, tooltip="hives: start, stop, install"),
        Binding("f3", "tab('workers')", "Workers", priority=True, tooltip="workers of every hive: stop one"),
        Binding("f4", "tab('models')", "Models", priority=True, tooltip="models: download, cancel, delete"),
        Binding("f5", "tab('jobs')", "Jobs", priority=True, tooltip="jobs: cancel one, replay its stream"),
        # not priority: an open drop-down closes first
        Binding("escape", "cancel_job", "Cancel", tooltip="cancel the job this tab runs (an answer, a download)"),
        Binding("f6", "help", "Keys", priority=True, tooltip="these keys"),
        Binding("question_mark", "help", "Keys", show=False),  # not priority: a text field types it
        Binding("ctrl+o", "conversations", "Conversations", show=False, priority=True,
                tooltip="the stored conversations: resume or delete one"),
        Binding("ctrl+n", "new_chat", "New chat", show=False, priority=True,
                tooltip="a new conversation (the current one stays stored)"),
        Binding("ctrl+r", "refresh", "Refresh", show=False, priority=True, tooltip="reload the table of this tab"),
        Binding("ctrl+q", "quit", "Quit", priority=True, tooltip="quit (the queen keeps running, workers stay warm)"),
    ]

    def __init__(self, queen_url: str | None = None, *, autostart: bool = True, paths: RbeePaths | None = None):
        super().__init__()
        self.queen_url = (queen_url or default_queen_url()).rstrip("/")
        self.autostart = autostart
        self.paths = paths or RbeePaths.from_env()
        self.tab_jobs: dict[str, str] = {}  # tab -> the job it runs now (Esc cancels it)
        self.last_job: str | None = None  # the chat's latest job
        self.last_end: End | None = None
        self.turn: Turn | None = None
        self.history: list[tuple[str, str]] = []  # the conversation as sent: (role, content)
        self.conversation_id: str | None = None
        self.conversation_model: str | None = None  # the model the stored conversation names
        self.worker_hives: dict[str, str] = {}  # worker id -> its hive, from the Workers view
        self.model_rows: dict[str, dict[str, Any]] = {}  # models-table row key -> catalog entry (+ hive)
        self.model_names = {BUILTIN_MODEL}  # the model picker's choices: every catalog's aliases
        self.model_names_shown = [BUILTIN_MODEL]
        self._client: JobClient | None = None
        self._waking = asyncio.Lock()  # one queen start, however many workers ask at once

    # -- layout ---------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="infer"):
            with TabPane("Chat", id="infer"):
                with Horizontal(id="chat-bar", classes="bar"):
                    yield Label("model")
                    yield Select([(BUILTIN_MODEL, BUILTIN_MODEL)], value=BUILTIN_MODEL, allow_blank=False,
                                 compact=True, id="model")
                    yield Label("hive")
                    yield Input(placeholder="any", id="hive", compact=True)
                    yield Label("max")
                    yield Input(value=str(SAMPLING_DEFAULTS["max_tokens"]), id="max_tokens", type="integer",
                                compact=True)
                    yield Label("temp")
                    yield Input(value=str(SAMPLING_DEFAULTS["temperature"]), id="temperature", type="number",
                                compact=True)
                with Horizontal(id="panes"):
                    transcript = ChatView(id="transcript")
                    transcript.border_title = "new conversation"
                    yield transcript
                    story = NarrationPane(id="story")
                    story.border_title = "story"
                    yield story
                yield Static("", id="stats")
                with Horizontal(id="prompt-row"):
                    yield Input(placeholder="Message (Enter sends)", id="prompt")
                    yield Button("Send", id="run", variant="primary", compact=True)
                    yield Button("New", id="new-chat", compact=True)
                    yield Button("Chats", id="open-chats", compact=True)
            with TabPane("Hives", id="hives"):
                with Horizontal(classes="toolbar"):
                    yield Button("Refresh", id="hives-refresh", compact=True)
                    yield Button("Start", id="hive-start", compact=True)
                    yield Button("Stop", id="hive-stop", compact=True)
                    yield Button("Install", id="hive-install", compact=True)
                yield NarrationPane(id="hives-log", classes="activity")
                yield DataTable(id="hives-table", cursor_type="row")
            with TabPane("Workers", id="workers"):
                with Horizontal(classes="toolbar"):
                    yield Button("Refresh", id="workers-refresh", compact=True)
                    yield Button("Stop worker", id="worker-stop", compact=True)
                yield NarrationPane(id="workers-log", classes="activity")
                yield DataTable(id="workers-table", cursor_type="row")
            with TabPane("Models", id="models"):
                with Horizontal(classes="toolbar"):
                    yield Input(placeholder="hf:<org>/<repo>:<file>.gguf or file:<path>", id="model-ref",
                                compact=True)
                    yield Button("Download", id="model-download", compact=True)
                    yield Button("Cancel", id="model-cancel", compact=True)
                    yield Button("Delete", id="model-delete", compact=True)
                    yield Button("Refresh", id="models-refresh", compact=True)
                yield ProgressBar(id="download-progress", show_eta=False)
                yield NarrationPane(id="models-log", classes="activity")
                yield DataTable(id="models-table", cursor_type="row")
            with TabPane("Jobs", id="jobs"):
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
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (("hives-table", ("alias", "state", "url", "host")),
                                  ("workers-table", ("id", "hive", "model", "state", "device", "slots busy", "pid")),
                                  ("models-table", ("alias", "hive", "size", "needs", "id", "path")),
                                  ("jobs-table", ("job", "operation", "state", "summary"))):
            self.query_one(f"#{table_id}", DataTable).add_columns(*columns)
        self.query_one("#prompt", Input).focus()
        self.set_interval(1 / STATS_HZ, self._show_live_stats)
        self.load_models(quiet=True)

    async def on_unmount(self) -> None:
        if self._client is not None:
            await self._client.close()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Over a dialog only its own keys and Quit work: a tab switch under it would be invisible."""
        if isinstance(self.screen, ModalScreen) and action != "quit":
            return False
        return True

    # -- the queen ------------------------------------------------------------------------------------

    async def client(self, say=None) -> JobClient:
        """A client for the queen, waking it first (the story pane says so) unless autostart is off."""
        async with self._waking:
            await ensure_queen(self.queen_url, self.paths, autostart=self.autostart,
                               say=say or self.query_one("#story", NarrationPane).say)
        if self._client is None:
            self._client = JobClient(self.queen_url, load_or_create_token(self.paths))
        return self._client

    def report(self, exc: RbeeError) -> None:
        self.notify(exc.message, title=exc.title, severity="error", timeout=8)

    # -- chat -----------------------------------------------------------------------------------------

    @property
    def chat(self) -> ChatView:
        return self.query_one("#transcript", ChatView)

    @property
    def chat_model(self) -> str:
        value = self.query_one("#model", Select).value
        return value if isinstance(value, str) else BUILTIN_MODEL

    def set_chat_model(self, model: str, known: set[str] | None = None) -> None:
        """Pick `model` in the model picker, whose choices are `known` (or the current ones) and itself."""
        names = sorted((self.model_names if known is None else known) | {model})
        select = self.query_one("#model", Select)
        if names != self.model_names_shown:
            select.set_options([(n, n) for n in names])
            self.model_names_shown = names
        self.model_names = set(names)
        select.value = model

    @on(Input.Submitted, "#chat-bar Input, #prompt")
    @on(Button.Pressed, "#run")
    def submit_prompt(self) -> None:
        prompt_input = self.query_one("#prompt", Input)
        prompt = prompt_input.value
        if not prompt.strip():
            self.notify("Type a message first.", severity="warning")
            return
        if self.turn is not None:  # an answer is on its way
            self.notify("An answer is still coming: Esc stops it.", severity="warning")
            return
        body: dict[str, Any] = {"operation": "infer", "model": self.chat_model,
                                "messages": [{"role": r, "content": c} for r, c in [*self.history, ("user", prompt)]]}
        if hive := self.query_one("#hive", Input).value.strip():
            body["hive_id"] = hive
        types = field_types(Generation)
        for name in ("max_tokens", "temperature"):
            raw = self.query_one(f"#{name}", Input).value.strip()
            if raw:
                try:
                    body[name] = types[name](raw)
                except ValueError:
                    self.notify(f"{name.replace('_', ' ')} must be a number, not {raw!r}.", severity="error")
                    return
        try:
            operation = parse_operation(body)
        except RbeeError as exc:
            self.report(exc)
            return
        assert isinstance(operation, Infer)
        prompt_input.value = ""
        self.chat.add_message("user", prompt, "you")
        answer = self.chat.start_answer(operation.model)
        self.query_one("#story", NarrationPane).rule(prompt[:40])
        self.turn = Turn(prompt)
        self.ask(operation, answer)

    @work(exclusive=True, group="chat")
    async def ask(self, operation: Infer, answer: MessageBox) -> None:
        """Send the conversation with the new message; the answer streams into `answer`. The queen stores
        the exchange in the conversation when the job ends; the history here follows what it stores."""
        pane = answer.body
        self.last_end = None
        try:
            client = await self.client()
            if self.conversation_id is None:
                conv = await client.new_conversation(model=operation.model, hive_id=operation.hive_id)
                self.conversation_id, self.conversation_model = conv["id"], operation.model
            elif self.conversation_model != operation.model:
                await client.update_conversation(self.conversation_id, model=operation.model)
                self.conversation_model = operation.model
            operation = dataclasses.replace(operation, conversation_id=self.conversation_id)
            job_id = (await client.submit(operation)).job_id
            self.tab_jobs["infer"] = self.last_job = job_id
            self.sub_title = f"job {short_id(job_id)}"
            async for event in client.stream(job_id):
                self.show_chat_event(event, answer)
        except RbeeError as exc:
            self.report(exc)
            answer.fail(exc.message)
        finally:
            self.tab_jobs.pop("infer", None)
            pane.settle()
            end, turn, self.turn = self.last_end, self.turn, None
        text = pane.full_text
        if end is not None and (end.state is JobState.COMPLETED or (end.state is JobState.CANCELLED and text)):
            self.history += [("user", turn.prompt), ("assistant", text)]
            self.chat.border_title = self.history[0][1][:60]  # the queen titles it the same way

    def show_chat_event(self, event: Event, answer: MessageBox) -> None:
        if isinstance(event, Token):
            answer.body.append(event.t)
            if self.turn is not None:
                self.turn.tokens += 1
                self.turn.first_token = self.turn.first_token or time.monotonic()
        elif isinstance(event, Narration):
            self.query_one("#story", NarrationPane).narration(event)
        elif isinstance(event, Error):
            answer.fail(f"{event.code}: {event.message}")
            self.notify(event.message, title=event.code, severity="error", timeout=8)
        elif isinstance(event, End):
            self.last_end = event
            self.query_one("#stats", Static).update(self._stats(event))
            self.sub_title = f"job {short_id(self.last_job or '')} {event.state.value}"

    def _show_live_stats(self) -> None:
        if self.turn is not None and self.last_end is None:
            self.query_one("#stats", Static).update(self.turn.live_stats())

    @staticmethod
    def _stats(end: End) -> str:
        s = end.stats
        if "tokens_out" in s:
            return (f"{end.state.value} · {s['tokens_out']} tokens · first token {s.get('ttft_ms') or 0:.0f} ms · "
                    f"{s.get('tokens_per_s') or 0:.1f} tokens/s · {s.get('worker_id')} on {s.get('hive_id')}")
        return end.state.value

    @on(Button.Pressed, "#new-chat")
    def action_new_chat(self) -> None:
        if self.turn is not None:  # an answer is on its way
            self.notify("An answer is still coming: Esc stops it first.", severity="warning")
            return
        self.history, self.conversation_id, self.conversation_model = [], None, None
        self.chat.clear()
        self.chat.border_title = "new conversation"
        self.query_one("#stats", Static).update("")
        self.action_tab("infer")

    @on(Button.Pressed, "#open-chats")
    def action_conversations(self) -> None:
        self.list_conversations()

    @work(group="conversations")
    async def list_conversations(self) -> None:
        try:
            conversations = await (await self.client()).conversations()
        except RbeeError as exc:
            self.report(exc)
            return
        self.push_screen(ConversationsScreen(conversations), self._conversation_chosen)

    def _conversation_chosen(self, choice: ConversationChoice | None) -> None:
        if choice is None:
            return
        if choice.action == "delete":
            self.delete_conversation(choice.conv_id)
        elif self.turn is not None:  # an answer is on its way
            self.notify("An answer is still coming: Esc stops it first.", severity="warning")
        else:
            self.resume_conversation(choice.conv_id)

    @work(group="conversations")
    async def delete_conversation(self, conv_id: str) -> None:
        try:
            client = await self.client()
            await client.delete_conversation(conv_id)
        except RbeeError as exc:
            self.report(exc)
            return
        if conv_id == self.conversation_id:
            self.action_new_chat()
        self.notify(f"Deleted conversation {short_id(conv_id)}.", timeout=3)
        self.list_conversations()

    @work(exclusive=True, group="chat")
    async def resume_conversation(self, conv_id: str) -> None:
        """Show a stored conversation and go on with it: its messages are the history sent from now on."""
        try:
            conv = await (await self.client()).conversation(conv_id)
        except RbeeError as exc:
            self.report(exc)
            return
        model = conv.get("model") or self.chat_model
        self.history = [(m["role"], m["content"]) for m in conv["messages"]]
        self.conversation_id, self.conversation_model = conv["id"], conv.get("model")
        self.chat.clear()
        for role, content in self.history:
            self.chat.add_message(role, content, "you" if role == "user" else model)
        self.chat.border_title = conv.get("title") or f"conversation {short_id(conv['id'])}"
        self.set_chat_model(model)
        self.query_one("#hive", Input).value = conv.get("hive_id") or ""
        self.query_one("#stats", Static).update(f"resumed · {len(self.history)} messages")
        self.action_tab("infer")

    # -- jobs of every tab ----------------------------------------------------------------------------

    def action_cancel_job(self) -> None:
        tab = self.query_one(TabbedContent).active
        job_id = self.tab_jobs.get(tab)
        if job_id is None:
            self.notify("Nothing is running in this tab.", severity="warning", timeout=3)
            return
        self.cancel_job(job_id, tab)

    @work(group="cancel")
    async def cancel_job(self, job_id: str, tab: str) -> None:
        try:
            state = (await (await self.client()).cancel(job_id)).get("state")
        except RbeeError as exc:
            self.report(exc)
            return
        self.notify(f"{short_id(job_id)}: {state}.", timeout=3)
        if tab == "jobs":
            self.load_view("jobs")

    def _log(self, tab: str) -> NarrationPane:
        """Where a tab's own jobs tell their story: never another tab's pane."""
        pane_id = {"infer": "story", "jobs": "job-story"}.get(tab, f"{tab}-log")
        pane = self.query_one(f"#{pane_id}", NarrationPane)
        pane.add_class("-used")
        return pane

    @work(group="actions")
    async def run_operation(self, operation: dict, tab: str) -> None:
        """Run a management job from `tab`: its story goes to the tab's activity log, a download's progress
        to the bar (shown only while it runs), errors to notifications, and only success says so."""
        log = self._log(tab)
        bar = self.query_one("#download-progress", ProgressBar)
        end: End | None = None
        try:
            client = await self.client(say=log.say)
            job_id = (await client.submit(operation)).job_id
            self.tab_jobs[tab] = job_id
            log.rule(f"{operation['operation']} {short_id(job_id)}")
            async for event in client.stream(job_id):
                if isinstance(event, Narration):
                    log.narration(event)
                elif isinstance(event, Error):
                    log.say(f"{event.code}: {event.message}", "error")
                    self.notify(event.message, title=event.code, severity="error", timeout=8)
                elif isinstance(event, Data) and event.action == "download_progress":
                    bar.add_class("-active")
                    bar.update(total=event.payload.get("total") or None, progress=event.payload.get("done", 0))
                elif isinstance(event, End):
                    end = event
                    log.say(f"{operation['operation']} {end.state.value}",
                            "info" if end.state is JobState.COMPLETED else "warn")
        except RbeeError as exc:
            self.report(exc)
        finally:
            self.tab_jobs.pop(tab, None)
            bar.remove_class("-active")
            bar.update(total=None, progress=0)
        if end is not None and end.state is JobState.COMPLETED:
            self.notify(f"{operation['operation']} completed", timeout=3)
        elif end is not None and end.state is JobState.CANCELLED:
            self.notify(f"{operation['operation']} cancelled", severity="warning", timeout=3)
        self.load_view(tab)

    # -- views ----------------------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        # A focused widget in the pane being hidden would hand the focus to a sibling there, which pulls
        # its tab back (TabPane.Focused): drop the focus first, then give it to the new tab's main widget.
        self.screen.set_focus(None)
        self.query_one(TabbedContent).active = tab
        self.query_one("#prompt" if tab == "infer" else f"#{tab}-table").focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_refresh(self) -> None:
        tab = self.query_one(TabbedContent).active
        if tab in VIEWS:
            self.load_view(tab)

    @on(TabbedContent.TabActivated)
    def tab_activated(self) -> None:
        self.action_refresh()

    @on(Button.Pressed, "#hives-refresh, #workers-refresh, #models-refresh, #jobs-refresh")
    @on(Checkbox.Changed, "#jobs-all")
    def refresh_pressed(self) -> None:
        self.action_refresh()

    def load_view(self, view: str) -> None:
        if view == "models":
            self.load_models()
        else:
            self.load_table(view)

    @work(exclusive=True, group="view")
    async def load_table(self, view: str) -> None:
        try:
            client = await self.client(say=lambda message: self._log(view).say(message))
            if view == "jobs":
                everything = self.query_one("#jobs-all", Checkbox).value
                rows = [(j["job_id"], short_id(j["job_id"]), j["operation"], j["state"], (j.get("about") or "")[:50])
                        for j in await client.list(all=everything)]
            elif view == "workers":  # the queen's registry: every hive's workers, from their heartbeats
                workers = (await client.request("GET", "/v1/workers"))["workers"]
                self.worker_hives = {w["worker_id"]: w["hive_id"] for w in workers}
                rows = [(w["worker_id"], w["worker_id"], w["hive_id"],
                         w["model"] + (" (embedding)" if w.get("embedding") else ""), w["state"], w["device"],
                         f"{w.get('slots_busy', 0)}/{w.get('slots', 1)}", w["pid"]) for w in workers]
            else:
                rows = [(h["alias"], h["alias"], h["state"], h.get("url"), h.get("host"))
                        for h in await self._hives(client)]
        except RbeeError as exc:
            self.report(exc)
            return
        self._fill(f"#{view}-table", rows)

    def _fill(self, table_id: str, rows: list[tuple]) -> None:
        """Replace a table's rows; each row is (key, cells…); the cursor stays on the same row."""
        table = self.query_one(table_id, DataTable)
        cursor = table.cursor_row
        table.clear()
        for key, *cells in rows:
            table.add_row(*(("" if c is None else str(c)) for c in cells), key=str(key))
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    async def _hives(self, client: JobClient) -> list[dict[str, Any]]:
        return (await self._data_of(client, {"operation": "hive_list"})).get("hives", [])

    @work(exclusive=True, group="models")
    async def load_models(self, quiet: bool = False) -> None:
        """Every running hive's catalog, for the Models table and the chat's model picker. `quiet` (at
        start-up) leaves a missing queen to the first thing the user asks for."""
        try:
            client = await self.client(say=None if quiet else lambda message: self._log("models").say(message))
            entries = []
            for hive in await self._hives(client):
                if hive["alias"] == LOCAL_HIVE or hive["state"] == "running":
                    catalog = await self._data_of(client, {"operation": "model_list", "hive_id": hive["alias"]})
                    entries += [{**m, "hive": hive["alias"]} for m in catalog.get("models", [])]
        except RbeeError as exc:
            if not quiet:
                self.report(exc)
            return
        self.model_rows = {f"{m['hive']}\t{m['id']}": m for m in entries}
        self._fill("#models-table", [(key, m.get("alias") or m["id"], m["hive"], f"{m['size'] / 1e6:.1f} MB",
                                      needs(m), m["id"], m["path"]) for key, m in self.model_rows.items()])
        self.set_chat_model(self.chat_model, {m.get("alias") or m["id"] for m in entries} | {BUILTIN_MODEL})

    async def _data_of(self, client: JobClient, operation: dict) -> Any:
        job = await client.submit(operation)
        payload = None
        async for event in client.stream(job.job_id):
            if isinstance(event, Data):
                payload = event.payload
            elif isinstance(event, Error):
                raise RbeeError(event.message, code=event.code)
        return payload or {}

    def _selected(self, table_id: str) -> str | None:
        table = self.query_one(f"#{table_id}", DataTable)
        if table.row_count == 0:
            self.notify("Nothing selected.", severity="warning")
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    @on(DataTable.RowSelected, "#models-table")
    def chat_with_selected_model(self) -> None:
        if (key := self._selected("models-table")) is None:
            return
        model = self.model_rows[key]
        self.set_chat_model(model.get("alias") or model["id"])
        self.notify(f"The chat now uses {self.chat_model}.", timeout=3)

    @on(Button.Pressed, "#hive-start, #hive-stop, #hive-install, #worker-stop, #model-delete, #model-download")
    def action_button(self, event: Button.Pressed) -> None:
        button = event.button.id
        assert button is not None
        tab = {"hive": "hives", "worker": "workers", "model": "models"}[button.split("-")[0]]
        if self.tab_jobs.get(tab):
            self.notify("A job of this tab is still running: Esc cancels it.", severity="warning")
            return
        if button == "model-download":
            ref = self.query_one("#model-ref", Input).value.strip()
            if not ref:
                self.notify("Type a model reference to download.", severity="warning")
                return
            self.run_operation({"operation": "model_download", "model": ref}, tab)
            return
        key = self._selected(f"{tab}-table")
        if key is None:
            return
        if button == "model-delete":
            model = self.model_rows[key]
            op = {"operation": "model_delete", "id": model["id"], "hive_id": model["hive"]}
        else:
            op = {"hive-start": {"operation": "hive_start", "alias": key},
                  "hive-stop": {"operation": "hive_stop", "alias": key},
                  "hive-install": {"operation": "hive_install", "alias": key},
                  "worker-stop": {"operation": "worker_delete", "id": key,
                                  "hive_id": self.worker_hives.get(key, LOCAL_HIVE)}}[button]
        self.run_operation(op, tab)

    @on(Button.Pressed, "#model-cancel")
    def cancel_model_job(self) -> None:
        self.action_cancel_job()  # the button is in the Models tab, so that tab's job

    @on(Button.Pressed, "#job-cancel")
    def cancel_selected_job(self) -> None:
        if (job_id := self._selected("jobs-table")) is not None:
            self.cancel_job(job_id, "jobs")

    @on(Button.Pressed, "#job-watch")
    @on(DataTable.RowSelected, "#jobs-table")
    def watch_selected_job(self) -> None:
        if (job_id := self._selected("jobs-table")) is not None:
            self.watch_job(job_id)

    @work(exclusive=True, group="watch")
    async def watch_job(self, job_id: str) -> None:
        """Replay a job's stream from its start below the job list (and follow it if it still runs)."""
        tokens, story = self.query_one("#job-tokens", TokenPane), self.query_one("#job-story", NarrationPane)
        self.query_one("#job-view").add_class("-watching")
        tokens.clear()
        story.clear()
        story.say(f"job {job_id}")
        self.tab_jobs["jobs"] = job_id
        try:
            async for event in (await self.client(say=story.say)).stream(job_id):
                if isinstance(event, Token):
                    tokens.append(event.t)
                elif isinstance(event, Narration):
                    story.narration(event)
                elif isinstance(event, Error):
                    story.say(f"{event.code}: {event.message}", "error")
                elif isinstance(event, End):
                    story.say(self._stats(event), "info" if event.state is JobState.COMPLETED else "warn")
        except RbeeError as exc:
            self.report(exc)
        finally:
            if self.tab_jobs.get("jobs") == job_id:
                del self.tab_jobs["jobs"]


def run_tui(queen_url: str | None, autostart: bool) -> None:
    RbeeApp(queen_url, autostart=autostart).run()
