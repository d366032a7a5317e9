"""Dialogs over the main screen: the keys (`?` or F6) and the conversations to resume (Ctrl+O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, OptionList, Static
from textual.widgets.option_list import Option

from keeper_tui.output import ago

# Keys that mean something only in one place, beside the app-wide bindings the help lists itself.
CONTEXT_KEYS = (
    ("Enter", "Chat: send the message · Models: chat with the selected model · Jobs: replay the job"),
    ("Tab / Shift+Tab", "move between fields, buttons and tables"),
    ("?", "these keys too, from anywhere but a text field (there it types a ?)"),
)


class HelpScreen(ModalScreen[None]):
    """Every key in one place, built from the app's own bindings so it cannot drift from them."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 90; max-width: 100%; height: auto; max-height: 100%;
                            border: round $primary; padding: 0 1; background: $surface; }
    HelpScreen #keys { height: auto; }
    """
    BINDINGS = [Binding("escape,f6,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        seen = set()
        for binding in self.app.BINDINGS:
            assert isinstance(binding, Binding)
            if binding.tooltip and binding.action not in seen:
                seen.add(binding.action)
                table.add_row(self.app.get_key_display(binding), binding.tooltip)
        for key, what in CONTEXT_KEYS:
            table.add_row(key, what)
        with Vertical() as box:
            box.border_title = "Keys"
            box.border_subtitle = "Esc closes"
            yield Static(table, id="keys")


@dataclass(frozen=True)
class ConversationChoice:
    """What the conversations dialog was closed with: resume or delete `conv_id`."""

    action: str  # "resume" | "delete"
    conv_id: str


class ConversationsScreen(ModalScreen["ConversationChoice | None"]):
    """The stored conversations, newest first: Enter resumes one."""

    DEFAULT_CSS = """
    ConversationsScreen { align: center middle; }
    ConversationsScreen > Vertical { width: 100; max-width: 100%; height: 80%; border: round $primary;
                                     padding: 0 1; background: $surface; }
    ConversationsScreen OptionList { height: 1fr; }
    ConversationsScreen Horizontal { height: auto; }
    ConversationsScreen Button { margin: 0 1 0 0; min-width: 8; width: auto; }
    """
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("delete", "delete", "Delete")]

    def __init__(self, conversations: list[dict[str, Any]]) -> None:
        super().__init__()
        self.conversations = conversations

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Conversations"
            box.border_subtitle = "Enter resumes · Del deletes · Esc closes"
            if not self.conversations:
                yield Label("No conversations yet: the first message of a chat starts one.")
            yield OptionList(*(Option(self._line(c), id=c["id"]) for c in self.conversations))
            with Horizontal():
                yield Button("Resume", id="conv-resume", variant="primary", compact=True)
                yield Button("Delete", id="conv-delete", variant="error", compact=True)
                yield Button("Close", id="conv-close", compact=True)

    @staticmethod
    def _line(conv: dict[str, Any]) -> Text:
        """The title, and below it (dim) what it was with and when, so any width shows both."""
        line = Text(overflow="ellipsis", no_wrap=True)
        line.append(conv.get("title") or "(untitled)", style="bold")
        line.append(f"\n{conv.get('model') or 'default model'} · {conv.get('message_count', 0)} messages · "
                    f"{ago(conv['updated_at'])}", style="dim")
        return line

    def _highlighted(self) -> str | None:
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return None
        return options.get_option_at_index(options.highlighted).id

    @on(OptionList.OptionSelected)
    @on(Button.Pressed, "#conv-resume")
    def resume(self) -> None:
        if (conv_id := self._highlighted()) is not None:
            self.dismiss(ConversationChoice("resume", conv_id))

    @on(Button.Pressed, "#conv-delete")
    def action_delete(self) -> None:
        if (conv_id := self._highlighted()) is not None:
            self.dismiss(ConversationChoice("delete", conv_id))

    @on(Button.Pressed, "#conv-close")
    def close(self) -> None:
        self.dismiss(None)
