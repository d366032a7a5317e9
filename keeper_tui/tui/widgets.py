"""The live panes: a chat transcript whose last answer streams in, the answer pane itself, and the story
of how an answer (or a download, a hive start) is produced."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import Vertical, VerticalScroll
from textual.events import Resize
from textual.geometry import Size
from textual.message import Message
from textual.reactive import Reactive
from textual.widgets import Label, RichLog, Static, TextArea

from shared.events import Narration

LEVEL_STYLES = {"info": "cyan", "warn": "yellow", "error": "bold red"}
STORY_LINES = 2000  # entries a story pane keeps (and wraps again when its width changes)
FLUSH_HZ = 60  # at 30 the wait for the next frame alone was up to 33 ms; at 60 the median lag is ~15 ms
# A streaming answer in the transcript grows this many rows at a time: its height changing relays out the
# whole screen (~50 ms on 2 busy cores), so once per GROW_ROWS lines, not once per line.
GROW_ROWS = 8
CHAT_HINT = ("Type a message below and press Enter. The whole conversation is sent each time, and kept: "
             "Ctrl+O lists conversations to resume, Ctrl+N starts a new one. F6 shows every key.")


class TokenPane(TextArea):
    """An answer. Tokens are buffered and drawn at most FLUSH_HZ times a second, however fast they come:
    one widget update per frame, never one per token. A read-only TextArea soft-wraps and renders only
    the visible lines, so a frame costs the same for a long answer as for a short one."""

    DEFAULT_CSS = "TokenPane { width: 100%; height: 1fr; border: none; padding: 0 1; }"
    can_focus = False  # the transcript around it scrolls; a cursor in a finished answer is only noise
    # Each new row of text changes the virtual size, which by default lays out the whole screen again
    # (10-80 ms on 2 busy cores: most of the lag of a streaming answer). What the layout depends on is
    # the pane's height: set below in steps of GROW_ROWS in the transcript, fixed in a scrolling pane
    # (which asks for a layout itself, for its scrollbar). So a new row is only a repaint of the pane.
    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    @dataclass
    class Flushed(Message):
        """New text was drawn: the transcript follows it if it was showing the end. At most one waits in
        the queue: a newer one says the same."""

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, TokenPane.Flushed)

    def __init__(self, text: str = "", *, grow: bool = False, **kwargs) -> None:
        super().__init__(text, read_only=True, soft_wrap=True, show_line_numbers=False, **kwargs)
        self.grow = grow  # as tall as its text (in the transcript), else scrolls within its own height
        self._rows = 1
        self._pending: list[tuple[str, float]] = []  # (text, when it arrived), not yet drawn
        self.rendered_tokens = 0
        self.max_lag_s = 0.0
        self.lags_s: collections.deque[float] = collections.deque(maxlen=10_000)  # per frame, oldest token

    def on_mount(self) -> None:
        self.set_interval(1 / FLUSH_HZ, self.flush)

    def clear(self) -> None:
        self._pending.clear()
        self.rendered_tokens = 0
        self.max_lag_s = 0.0
        self.load_text("")

    def append(self, text: str) -> None:
        self._pending.append((text, time.perf_counter()))

    @property
    def full_text(self) -> str:
        """What was drawn and what waits for the next frame: the answer so far."""
        return self.text + "".join(t for t, _ in self._pending)

    def flush(self) -> None:
        if not self._pending or not self.is_mounted:
            return
        now = time.perf_counter()
        self.max_lag_s = max(self.max_lag_s, now - self._pending[0][1])
        self.lags_s.append(now - self._pending[0][1])
        new = "".join(t for t, _ in self._pending)
        self.rendered_tokens += len(self._pending)
        self._pending.clear()
        rows = self.wrapped_document.height
        self.insert(new, self.document.end, maintain_selection_offset=False)
        if not self.grow:
            if self.wrapped_document.height != rows:
                self.refresh(layout=True)  # its scrollbar
            self.scroll_end(animate=False)
        elif self.wrapped_document.height > self._rows:
            self._rows = self.wrapped_document.height + GROW_ROWS
            self.styles.height = self._rows
        self.post_message(self.Flushed())

    def settle(self) -> None:
        """The answer is complete: draw the rest and fit the text exactly (no rows kept for growth)."""
        self.flush()
        if self.grow:
            self.styles.height = None  # back to the stylesheet's height: auto


class NarrationPane(RichLog):
    """The story: narration from every daemon, one entry each, wrapped under its text and scrollable.
    RichLog wraps a line when it is written; a new width (a resized terminal, the layout stacking the
    panes) wraps every kept entry again, so none stays cut at an old width."""

    DEFAULT_CSS = "NarrationPane { height: 1fr; overflow-y: auto; }"

    def __init__(self, **kwargs) -> None:
        # min_width: RichLog draws lines at least 78 wide by default, which scrolls sideways in a narrow pane
        super().__init__(wrap=True, markup=False, highlight=False, max_lines=STORY_LINES, min_width=16, **kwargs)
        self.lines_written = 0
        self._entries: collections.deque[RenderableType] = collections.deque(maxlen=STORY_LINES)
        self._wrapped_at = 0

    def _add(self, entry: RenderableType) -> None:
        self._entries.append(entry)
        self.write(entry)

    def clear(self) -> "NarrationPane":
        self._entries.clear()
        return super().clear()

    def on_resize(self, event: Resize) -> None:  # RichLog's own handler runs after this one
        if self._wrapped_at and event.size.width != self._wrapped_at and self._entries:
            super().clear()
            for entry in self._entries:
                self.write(entry)
        self._wrapped_at = event.size.width

    def narration(self, event: Narration) -> None:
        line = Table.grid(padding=(0, 1))
        line.add_column(width=6, justify="right", style="dim", no_wrap=True)
        line.add_column(ratio=1)
        line.add_row(event.actor, Text(event.human, style=LEVEL_STYLES.get(event.level, "")))
        self._add(line)
        self.lines_written += 1

    def say(self, message: str, level: str = "info") -> None:
        self.narration(Narration(actor="rbee", action="keeper", human=message, level=level))  # type: ignore[arg-type]

    def rule(self, title: str) -> None:
        """A divider between the stories of two jobs, so the older one can still be scrolled back to."""
        if self.lines_written:
            self._add(Text(f"── {title} ", style="dim", no_wrap=True, overflow="ellipsis"))


class MessageBox(Vertical):
    """One message of the transcript: who speaks, then the text (an answer streams into a TokenPane)."""

    DEFAULT_CSS = """
    MessageBox { height: auto; margin: 0 0 1 0; padding: 0 0 0 1; }
    MessageBox.user { border-left: thick $accent; }
    MessageBox.assistant { border-left: thick $success; }
    MessageBox > .role { color: $text-muted; text-style: bold; }
    MessageBox > Static.body { padding: 0 1; }
    MessageBox > TokenPane { height: auto; padding: 0 1; background: transparent; overflow-y: hidden; }
    MessageBox > .failure { color: $error; padding: 0 1; }
    """

    def __init__(self, role: str, who: str, body: Static | TokenPane, text: str = "") -> None:
        super().__init__(Label(who, classes="role"), body, classes=role)
        self.role = role
        self.body = body
        self._text = text

    @property
    def text(self) -> str:
        return self.body.full_text if isinstance(self.body, TokenPane) else self._text

    def fail(self, message: str) -> None:
        self.mount(Static(Text(message), classes="failure"))


class Transcript(VerticalScroll):
    """The conversation so far; it follows a streaming answer while it shows the end, and stays put
    when scrolled back to read."""

    DEFAULT_CSS = "Transcript { height: 1fr; padding: 0 1; } Transcript > .hint { color: $text-muted; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(Static(CHAT_HINT, classes="hint"), **kwargs)
        self.answer: TokenPane | None = None

    def clear(self) -> None:
        self.answer = None
        self.remove_children()
        self.mount(Static(CHAT_HINT, classes="hint"))

    def _add(self, box: MessageBox) -> MessageBox:
        self.remove_children(".hint")
        self.mount(box)
        self.call_after_refresh(self.scroll_end, animate=False)
        return box

    def add_message(self, role: str, content: str, who: str) -> MessageBox:
        return self._add(MessageBox(role, who, Static(Text(content), classes="body"), content))

    def start_answer(self, who: str) -> MessageBox:
        """A new assistant message to stream into (`self.answer`)."""
        self.answer = TokenPane(grow=True)
        return self._add(MessageBox("assistant", who, self.answer))

    def on_token_pane_flushed(self, event: TokenPane.Flushed) -> None:
        event.stop()
        if self.scroll_y >= self.max_scroll_y - 1:
            self.call_after_refresh(self.scroll_end, animate=False)
