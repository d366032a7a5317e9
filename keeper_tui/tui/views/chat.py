"""The chat tab: a conversation with a model (a ChatSession, as `rbee chat` holds it), each answer
streaming into the transcript while the story of how it is produced is told beside it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Select, Static

from keeper_tui.chat_session import ChatSession, Exchange
from keeper_tui.output import short_id
from keeper_tui.tui.queen import QueenLink
from keeper_tui.tui.screens import ConversationChoice, ConversationsScreen
from keeper_tui.tui.views.base import View
from keeper_tui.tui.widgets import MessageBox, NarrationPane, Transcript
from shared.errors import RbeeError
from shared.events import End, Error, Event, Narration, Token
from shared.inference import SAMPLING_DEFAULTS, Generation
from shared.models import BUILTIN_MODEL
from shared.operations import Infer
from shared.wire import field_types

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


def end_stats(end: End) -> str:
    """The stats line of a finished answer."""
    s = end.stats
    if "tokens_out" in s:
        return (f"{end.state.value} · {s['tokens_out']} tokens · first token {s.get('ttft_ms') or 0:.0f} ms · "
                f"{s.get('tokens_per_s') or 0:.1f} tokens/s · {s.get('worker_id')} on {s.get('hive_id')}")
    return end.state.value


class ChatView(View):
    """The first tab: model picker and options, transcript and story, stats line and prompt."""

    DEFAULT_CSS = """
    ChatView .bar { height: 1; padding: 0 1; }
    ChatView .bar Label { padding: 0 1 0 1; color: $text-muted; }
    ChatView #model { width: 1fr; min-width: 16; max-width: 48; }
    ChatView #hive { width: 12; }
    ChatView #max_tokens { width: 7; }
    ChatView #temperature { width: 6; }
    ChatView #panes { height: 1fr; }
    ChatView #transcript { width: 2fr; border: round $primary; border-title-color: $primary; }
    ChatView #story { width: 1fr; border: round $secondary; }
    Screen.-narrow ChatView #panes { layout: vertical; }
    Screen.-narrow ChatView #transcript { width: 1fr; height: 1fr; }
    Screen.-narrow ChatView #story { width: 1fr; height: 6; }
    ChatView #stats { height: 1; padding: 0 1; color: $text-muted; }
    ChatView #prompt-row { height: auto; }
    ChatView #prompt { width: 1fr; }
    ChatView #prompt-row Button { margin: 1 0 0 1; min-width: 6; width: auto; }
    """
    SCOPED_CSS = False  # the rules name the view themselves: some hang on the screen's width class
    focus_id = "prompt"

    def __init__(self, queen: QueenLink) -> None:
        super().__init__("Chat", queen, id="infer")
        self.session = ChatSession(queen.client)
        self.turn: Turn | None = None  # the answer on its way, if any
        self.last_job: str | None = None
        self.last_end: End | None = None
        self.model_names = {BUILTIN_MODEL}  # the model picker's choices: every catalog's aliases
        self.model_names_shown = [BUILTIN_MODEL]

    def compose(self) -> ComposeResult:
        with Horizontal(id="chat-bar", classes="bar"):
            yield Label("model")
            yield Select([(BUILTIN_MODEL, BUILTIN_MODEL)], value=BUILTIN_MODEL, allow_blank=False, compact=True,
                         id="model")
            yield Label("hive")
            yield Input(placeholder="any", id="hive", compact=True)
            yield Label("max")
            yield Input(value=str(SAMPLING_DEFAULTS["max_tokens"]), id="max_tokens", type="integer", compact=True)
            yield Label("temp")
            yield Input(value=str(SAMPLING_DEFAULTS["temperature"]), id="temperature", type="number", compact=True)
        with Horizontal(id="panes"):
            transcript = Transcript(id="transcript")
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

    def on_mount(self) -> None:
        self.set_interval(1 / STATS_HZ, self._show_live_stats)

    @property
    def transcript(self) -> Transcript:
        return self.query_one("#transcript", Transcript)

    @property
    def story(self) -> NarrationPane:
        return self.query_one("#story", NarrationPane)

    @property
    def stats(self) -> Static:
        return self.query_one("#stats", Static)

    # -- the model picker -----------------------------------------------------------------------------

    @property
    def model(self) -> str:
        value = self.query_one("#model", Select).value
        return value if isinstance(value, str) else BUILTIN_MODEL

    def set_model(self, model: str, known: set[str] | None = None) -> None:
        """Pick `model` in the model picker, whose choices are `known` (or the current ones) and itself."""
        names = sorted((self.model_names if known is None else known) | {model})
        select = self.query_one("#model", Select)
        if names != self.model_names_shown:
            select.set_options([(n, n) for n in names])
            self.model_names_shown = names
        self.model_names = set(names)
        select.value = model

    def offer_models(self, names: set[str]) -> None:
        """The models every running hive has: the picker's choices (the current one stays picked)."""
        self.set_model(self.model, names | {BUILTIN_MODEL})

    # -- asking ---------------------------------------------------------------------------------------

    @on(Input.Submitted, "#chat-bar Input, #prompt")
    @on(Button.Pressed, "#run")
    def submit_prompt(self) -> None:
        prompt_input = self.query_one("#prompt", Input)
        prompt = prompt_input.value
        if not prompt.strip():
            self.notify("Type a message first.", severity="warning")
            return
        if self.turn is not None:
            self.notify("An answer is still coming: Esc stops it.", severity="warning")
            return
        fields: dict = {"model": self.model, "hive_id": self.query_one("#hive", Input).value.strip() or None}
        types = field_types(Generation)
        for name in ("max_tokens", "temperature"):
            raw = self.query_one(f"#{name}", Input).value.strip()
            if raw:
                try:
                    fields[name] = types[name](raw)
                except ValueError:
                    self.notify(f"{name.replace('_', ' ')} must be a number, not {raw!r}.", severity="error")
                    return
        try:
            operation = self.session.operation(prompt, **fields)
        except RbeeError as exc:
            self.report(exc)
            return
        prompt_input.value = ""
        self.transcript.add_message("user", prompt, "you")
        answer = self.transcript.start_answer(operation.model)
        self.story.rule(prompt[:40])
        self.turn = Turn(prompt)
        self.ask(operation, answer)

    @work(exclusive=True, group="chat")
    async def ask(self, operation: Infer, answer: MessageBox) -> None:
        """Send the conversation with the new message; the answer streams into `answer`. The queen stores
        the exchange when the job ends, and the session records it the same way."""
        pane = answer.body
        self.last_end = None
        exchange: Exchange | None = None
        try:
            exchange = await self.session.ask(operation)
            self.running_job = self.last_job = exchange.job_id
            self.app.sub_title = f"job {short_id(exchange.job_id)}"
            async for event in self.session.follow(exchange):
                self.show_event(event, answer)
        except RbeeError as exc:
            self.report(exc)
            answer.fail(exc.message)
        finally:
            self.running_job = None
            pane.settle()
            self.turn = None
        if exchange is not None and self.session.record(exchange):
            self.transcript.border_title = self.session.messages[0][1][:60]  # the queen titles it the same way

    def show_event(self, event: Event, answer: MessageBox) -> None:
        if isinstance(event, Token):
            answer.body.append(event.t)
            if self.turn is not None:
                self.turn.tokens += 1
                self.turn.first_token = self.turn.first_token or time.monotonic()
        elif isinstance(event, Narration):
            self.story.narration(event)
        elif isinstance(event, Error):
            answer.fail(f"{event.code}: {event.message}")
            self.notify(event.message, title=event.code, severity="error", timeout=8)
        elif isinstance(event, End):
            self.last_end = event
            self.stats.update(end_stats(event))
            self.app.sub_title = f"job {short_id(self.last_job or '')} {event.state.value}"

    def _show_live_stats(self) -> None:
        if self.turn is not None and self.last_end is None:
            self.stats.update(self.turn.live_stats())

    # -- conversations --------------------------------------------------------------------------------

    @on(Button.Pressed, "#new-chat")
    def new_chat(self) -> None:
        if self.turn is not None:
            self.notify("An answer is still coming: Esc stops it first.", severity="warning")
            return
        self.session.new()
        self.transcript.clear()
        self.transcript.border_title = "new conversation"
        self.stats.update("")
        self.post_message(self.Show(self))

    @on(Button.Pressed, "#open-chats")
    def open_conversations(self) -> None:
        self.list_conversations()

    @work(group="conversations")
    async def list_conversations(self) -> None:
        try:
            conversations = await (await self.queen.client()).conversations()
        except RbeeError as exc:
            self.report(exc)
            return
        self.app.push_screen(ConversationsScreen(conversations), self._conversation_chosen)

    def _conversation_chosen(self, choice: ConversationChoice | None) -> None:
        if choice is None:
            return
        if choice.action == "delete":
            self.delete_conversation(choice.conv_id)
        elif self.turn is not None:
            self.notify("An answer is still coming: Esc stops it first.", severity="warning")
        else:
            self.resume_conversation(choice.conv_id)

    @work(group="conversations")
    async def delete_conversation(self, conv_id: str) -> None:
        try:
            await (await self.queen.client()).delete_conversation(conv_id)
        except RbeeError as exc:
            self.report(exc)
            return
        if conv_id == self.session.conversation_id:
            self.new_chat()
        self.notify(f"Deleted conversation {short_id(conv_id)}.", timeout=3)
        self.list_conversations()

    @work(exclusive=True, group="chat")
    async def resume_conversation(self, conv_id: str) -> None:
        """Show a stored conversation and go on with it: its messages are the history sent from now on."""
        try:
            conversation = await self.session.resume(conv_id)
        except RbeeError as exc:
            self.report(exc)
            return
        model = self.session.stored_model or self.model
        self.transcript.clear()
        for role, content in self.session.messages:
            self.transcript.add_message(role, content, "you" if role == "user" else model)
        self.transcript.border_title = self.session.title or f"conversation {short_id(conversation['id'])}"
        self.set_model(model)
        self.query_one("#hive", Input).value = conversation.get("hive_id") or ""
        self.stats.update(f"resumed · {len(self.session.messages)} messages")
        self.post_message(self.Show(self))
