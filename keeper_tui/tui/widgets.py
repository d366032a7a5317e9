"""The two live panes: the answer as it streams, and the story of how it is produced."""

from __future__ import annotations

import collections
import time

from rich.text import Text
from textual.widgets import RichLog, TextArea

from shared.events import Narration

LEVEL_STYLES = {"info": "cyan", "warn": "yellow", "error": "bold red"}
FLUSH_HZ = 60  # at 30 the wait for the next frame alone was up to 33 ms; at 60 the median lag is ~15 ms


class TokenPane(TextArea):
    """The answer. Tokens are buffered and drawn at most FLUSH_HZ times a second, however fast they come:
    one widget update per frame, never one per token. A read-only TextArea soft-wraps and renders only
    the visible lines, so a frame costs the same for a long answer as for a short one."""

    DEFAULT_CSS = "TokenPane { width: 100%; height: 1fr; border: none; padding: 0 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", read_only=True, soft_wrap=True, show_line_numbers=False, **kwargs)
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

    def flush(self) -> None:
        if not self._pending:
            return
        now = time.perf_counter()
        self.max_lag_s = max(self.max_lag_s, now - self._pending[0][1])
        self.lags_s.append(now - self._pending[0][1])
        new = "".join(t for t, _ in self._pending)
        self.rendered_tokens += len(self._pending)
        self._pending.clear()
        self.insert(new, self.document.end, maintain_selection_offset=False)
        self.scroll_end(animate=False)


class NarrationPane(RichLog):
    DEFAULT_CSS = "NarrationPane { height: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, **kwargs)
        self.lines_written = 0

    def narration(self, event: Narration) -> None:
        line = Text()
        line.append(f"{event.actor:>6} ", style="dim")
        line.append(event.human, style=LEVEL_STYLES.get(event.level, ""))
        self.write(line)
        self.lines_written += 1

    def say(self, message: str, level: str = "info") -> None:
        self.narration(Narration(actor="rbee", action="keeper", human=message, level=level))  # type: ignore[arg-type]
