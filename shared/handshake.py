"""The start-up handshake: a daemon prints one line once bound, and its parent reads the URL from it.

Ports are often 0 (the OS picks), so the line is the only way a parent learns where its child listens.
The line also says which rbee the daemon runs (shared/version.py), so a parent started on other code
finds out before it sends anything. Both sides live here so the format has one writer and one reader.
"""

from __future__ import annotations

import re

from shared.version import PROTOCOL, VERSION, PeerVersion

_LINE = re.compile(r"listening on (https?://\S+)")
_VERSION = re.compile(r"\(rbee (\S+), protocol (\d+)\)")


def listening_line(prog: str, name: str, url: str) -> str:
    """What a daemon prints (one line, flushed) once its socket is bound."""
    return f"{prog} {name} listening on {url} (rbee {VERSION}, protocol {PROTOCOL})"


def _text(line: str | bytes) -> str:
    return line.decode(errors="replace") if isinstance(line, bytes) else line


def listening_url(line: str | bytes) -> str | None:
    """The URL a handshake line announces, or None when the line is something else."""
    m = _LINE.search(_text(line))
    return m.group(1) if m else None


def listening_version(line: str | bytes) -> PeerVersion:
    """The rbee a handshake line says its daemon runs (protocol 0: a line from before versions were told)."""
    m = _VERSION.search(_text(line))
    return PeerVersion(m.group(1), int(m.group(2))) if m else PeerVersion(None, 0)
