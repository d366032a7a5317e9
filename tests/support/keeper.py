"""The real `rbee` executable for tests: run with its own RBEE_HOME and queen port, through pipes or a
pseudo-terminal (as a person at a terminal types into it), and the queen it woke stopped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from shared.job_client import JobClient
from shared.paths import RbeePaths
from shared.token import load_or_create_token
from tests.support.processes import daemon_env, pid_alive
from tests.support.waiting import wait_until

RBEE = str(Path(sys.executable).parent / "rbee")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_lines(stdout: str) -> list[dict]:
    lines = stdout.strip().splitlines()
    return [json.loads(line) for line in lines]  # every line must parse


class Keeper:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = daemon_env(home, RBEE_LOCAL_HIVE_PORT="0", RBEE_QUEEN_URL=self.url)

    def __call__(self, *args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
        """Run `rbee ARGS`; stdin is `input` through a pipe, or nothing (/dev/null)."""
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run([RBEE, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              **stdin)

    def popen(self, *args: str, text: bool = True) -> subprocess.Popen:
        return subprocess.Popen([RBEE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
                                env=self.env, stdin=subprocess.DEVNULL)

    def terminal(self, *args: str) -> "Terminal":
        return Terminal([RBEE, *args], {**self.env, "TERM": "dumb"})

    def queen(self, call: Callable[[JobClient], Awaitable[Any]]) -> Any:
        """One call of the queen's client API, as the keeper makes it (its token, its URL)."""
        async def run() -> Any:
            async with JobClient(self.url, load_or_create_token(RbeePaths.from_env(self.env))) as client:
                return await call(client)
        return asyncio.run(run())

    def queen_pid(self) -> int | None:
        pid_file = self.home / "state" / "queen.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def stop(self) -> None:
        pid = self.queen_pid()
        self("queen", "stop", timeout=60)
        if pid is not None:
            wait_until(lambda: not pid_alive(pid), timeout=20, interval=0.1,
                       what="the queen to exit after `rbee queen stop`")


@contextlib.contextmanager
def running_keeper(home: Path) -> Iterator[Keeper]:
    """A Keeper, and whatever queen it woke stopped at the end."""
    keeper = Keeper(home)
    try:
        yield keeper
    finally:
        keeper.stop()


def _take_the_terminal() -> None:
    """In the child, after setsid: make the pty its controlling terminal, so Ctrl+C there is SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A program on a pseudo-terminal: what it writes is read from the master side, keys are written to it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                     start_new_session=True, preexec_fn=_take_the_terminal)
        os.close(slave)
        self.master = master
        self.seen = ""  # everything shown so far
        self._read_to = 0  # where the last expect() stopped

    def expect(self, text: str, timeout: float = 60) -> str:
        """Wait until `text` shows after what was expected before; return what showed up to its end."""
        deadline = time.monotonic() + timeout
        while text not in self.seen[self._read_to:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise AssertionError(f"waited {timeout:g} s for {text!r}; the terminal shows:\n"
                                     f"{self.seen[self._read_to:][-2000:]}")
        end = self.seen.index(text, self._read_to) + len(text)
        shown, self._read_to = self.seen[self._read_to:end], end
        return shown

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program has exited and closed the terminal
            return False
        self.seen += data.decode(errors="replace")
        return bool(data)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_until_reading(self, timeout: float = 10) -> None:
        """Wait until the program sleeps in its read of the terminal. CPython's readline prints its prompt,
        then selects on stdin: a Ctrl+C typed between the two (a test types it the moment the prompt shows;
        on 2 busy cores the program is often not running yet) sets Python's flag with no system call to
        interrupt, and is only seen after the next key. A person is never that fast."""
        wchan = f"/proc/{self.proc.pid}/task/{self.proc.pid}/wchan"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(wchan) as f:
                    if any(call in f.read() for call in ("select", "poll")):
                        return
            except OSError:
                time.sleep(0.5)  # no /proc here: a pause instead
                return
            time.sleep(0.01)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)  # keep the terminal drained, so the program never blocks writing
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
