"""The start-up handshake: a daemon prints one line once bound, and its parent reads the URL from it.

Ports are often 0 (the OS picks), so the line is the only way a parent learns where its child listens.
Both sides live here so the format has one writer and one reader.
"""

from __future__ import annotations

import re

_LINE = re.compile(r"listening on (https?://\S+)")


def listening_line(prog: str, name: str, url: str) -> str:
    """What a daemon prints (one line, flushed) once its socket is bound."""
    return f"{prog} {name} listening on {url}"


def listening_url(line: str | bytes) -> str | None:
    """The URL a handshake line announces, or None when the line is something else."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    m = _LINE.search(text)
    return m.group(1) if m else None
