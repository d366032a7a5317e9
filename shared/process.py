"""Process hygiene shared by daemons: die with the parent, so a SIGKILLed parent leaves no orphans."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger("rbee.process")

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when the parent dies (Linux). Elsewhere, `watch_parent` covers it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on polling")


async def watch_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Send ourselves SIGTERM once the parent is gone (reparented), for systems without PDEATHSIG.

    Also covers the race where the parent died before `die_with_parent` ran.
    """
    while True:
        if os.getppid() != parent_pid:
            log.warning("parent process %d is gone; shutting down", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await asyncio.sleep(interval_s)


# Where rbee starts its daemons: `python -m pkg` puts the working directory first on sys.path, so a
# daemon started from a directory that holds a `shared/` (or `queen/`, ...) folder would import that.
# Every path handed to a child is absolute (RbeePaths are), so no child needs the parent's directory.
CHILD_CWD = "/"


def keep_files_private() -> None:
    """Files and directories this process creates are its user's alone (databases with every prompt,
    their -wal/-shm, logs, pid files): the token is not the only secret rbee writes."""
    os.umask(0o077)


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return not sys.platform.startswith("linux")


def tail_file(path, lines: int = 10) -> str:
    """The last lines of a log, for error messages that say what a process said before it died."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"
