"""rbee's terminal UI: chat with a model while the story of each answer is told beside it, and manage
hives, workers, models and jobs. The app is the shell: the keys, the tabs (one view each, in views/) and
the queen they share; the views do the work, network I/O in async workers, errors as notifications."""

from __future__ import annotations

import gc

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, TabbedContent

from keeper_tui.queen_control import default_queen_url
from keeper_tui.tui.queen import QueenLink
from keeper_tui.tui.screens import HelpScreen
from keeper_tui.tui.views.base import View
from keeper_tui.tui.views.chat import ChatView
from keeper_tui.tui.views.hives import HivesView
from keeper_tui.tui.views.jobs import JobsView
from keeper_tui.tui.views.models import ModelsView
from keeper_tui.tui.views.workers import WorkersView
from shared.paths import RbeePaths


class RbeeApp(App):
    TITLE = "rbee"
    SUB_TITLE = "your machines, one prompt"
    CSS_PATH = "app.tcss"
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
        self.queen = QueenLink((queen_url or default_queen_url()).rstrip("/"), paths or RbeePaths.from_env(),
                               autostart=autostart)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="infer"):
            yield ChatView(self.queen)
            yield HivesView(self.queen)
            yield WorkersView(self.queen)
            yield ModelsView(self.queen)
            yield JobsView(self.queen)
        yield Footer()

    def on_mount(self) -> None:
        self.queen.say = self.chat.story.say  # waking the queen for no tab in particular is the chat's story
        self.query_one("#prompt").focus()
        self.query_one(ModelsView).load(quiet=True)  # the chat's model picker
        # A full garbage collection walks every object the app holds (40-50 ms on 2 busy cores: most of the
        # worst lag of a streaming answer). What exists once the app is up lives as long as the app, so it
        # is frozen out of collections (as Textual pauses the collector while it scrolls).
        self.call_after_refresh(gc.freeze)

    async def on_unmount(self) -> None:
        gc.unfreeze()  # what the app held may be collected again
        await self.queen.close()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Over a dialog only its own keys and Quit work: a tab switch under it would be invisible."""
        if isinstance(self.screen, ModalScreen) and action != "quit":
            return False
        return True

    @property
    def chat(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def view(self) -> View:
        """The tab shown now."""
        return self.query_one(TabbedContent).active_pane  # type: ignore[return-value]

    # -- keys -----------------------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        # A focused widget in the pane being hidden would hand the focus to a sibling there, which pulls
        # its tab back (TabPane.Focused): drop the focus first, then give it to the new tab's main widget.
        self.screen.set_focus(None)
        tabs = self.query_one(TabbedContent)
        tabs.active = tab
        view = tabs.get_pane(tab)
        assert isinstance(view, View)
        self.query_one(f"#{view.focus_id}").focus()

    def action_cancel_job(self) -> None:
        self.view.cancel_running()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_refresh(self) -> None:
        self.view.reload()

    def action_conversations(self) -> None:
        self.chat.open_conversations()

    def action_new_chat(self) -> None:
        self.chat.new_chat()

    # -- what the views ask of each other -------------------------------------------------------------

    @on(TabbedContent.TabActivated)
    def tab_activated(self) -> None:
        self.action_refresh()

    def on_view_show(self, message: View.Show) -> None:
        if message.view.id is not None:
            self.action_tab(message.view.id)

    def on_models_view_catalog_loaded(self, message: ModelsView.CatalogLoaded) -> None:
        self.chat.offer_models(message.names)

    def on_models_view_model_chosen(self, message: ModelsView.ModelChosen) -> None:
        self.chat.set_model(message.model)
        self.notify(f"The chat now uses {self.chat.model}.", timeout=3)


def run_tui(queen_url: str | None, autostart: bool) -> None:
    RbeeApp(queen_url, autostart=autostart).run()
