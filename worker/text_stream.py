"""`TextStream`: a generation's token pieces (bytes) turned into the text a client may see, as it comes.

Three things make this more than joining pieces: a UTF-8 character may be split across tokens (its
bytes wait for the rest), the answer ends at the first stop string (which is not shown), and text that
might be the start of a stop string is held back until the next pieces say it is not (so a client never
sees half a stop string). Pure Python, no model: the owner thread feeds it one piece per token.
"""

from __future__ import annotations

import codecs
from typing import Iterable


class TextStream:
    """Feed `push(piece)` per token; each call returns the text now safe to show. `finish()` at the end
    releases what was held back. After a stop string, `stopped_by` names it and nothing more comes out."""

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self.stops = tuple(s for s in stops if s)  # an empty stop string would end every answer at once
        self.stopped_by: str | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text not yet released (it may be the start of a stop string)
        self._done = False

    @property
    def settled(self) -> bool:
        """Everything pushed so far is in what was released: nothing held back, no half character."""
        return not self._held and not self._decoder.getstate()[0]

    def push(self, piece: bytes) -> str:
        """One token's bytes in; the text that may be shown now out (possibly "")."""
        if self._done:
            return ""
        self._held += self._decoder.decode(piece)
        hit = min((i for i in (self._held.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:  # the earliest stop string ends the text; among those starting there, the first given
            self.stopped_by = next(s for s in self.stops if self._held.find(s) == hit)
            text, self._held, self._done = self._held[:hit], "", True
            self._decoder.reset()  # bytes after the stop string are not the answer's
            return text
        keep = _stop_prefix_len(self._held, self.stops)
        text, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
        return text

    def finish(self) -> str:
        """The end of the answer: what was held back, and a half character as U+FFFD ("" after a stop)."""
        if self._done:
            return ""
        self._done = True
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return text


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """How much of the end of `text` could be the start of a stop string (held back until it is not)."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:length]):
                best = length
                break
    return best
