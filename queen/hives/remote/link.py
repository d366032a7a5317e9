"""One SSH connection per remote hive, carrying every byte between the queen and that machine.

The hive and its workers listen on the remote's 127.0.0.1 only. The queen reaches the hive and each
worker through local port forwards (a port on the queen's own loopback per remote port), and the
workers' heartbeats reach the queen through one remote forward (a port on the remote's loopback). So
no rbee port is open on a remote, nothing crosses the network outside SSH's encryption, and there is
no address to advertise or get wrong. SSH keepalives notice a dead link within about
KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT_MAX seconds; the connection then closes, and with it every
forwarded stream, so nothing waits on a silent socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh

from queen.hives.remote import ssh
from queen.hives.remote.hives_conf import RemoteHost
from shared import hive_control

CONTROL_SOURCE = Path(hive_control.__file__).read_text  # read when used, not at import
CONTROL_TIMEOUT_S = 90.0
MAX_FORWARDS = 256  # a hive and its workers need a handful; a remote cannot make the queen open ports without end


class HiveLink:
    def __init__(self, host: RemoteHost, conn: asyncssh.SSHClientConnection, root: str) -> None:
        self.host = host
        self.conn = conn
        self.root = root  # the install dir on the remote, absolute
        self.queen_port: int | None = None  # on the remote's loopback, forwarded to the queen
        self._forwards: dict[int, asyncssh.SSHListener] = {}
        self._closed = asyncio.Event()
        self.close_reason = ""
        self._watch = asyncio.ensure_future(self._wait_closed())
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_lock = asyncio.Lock()

    @classmethod
    async def open(cls, host: RemoteHost) -> "HiveLink":
        conn = await ssh.connect(host, keepalive=True)
        try:
            root = await ssh.install_dir(conn, host)
        except BaseException:
            conn.close()
            raise
        return cls(host, conn, root)

    async def _wait_closed(self) -> None:
        try:
            await self.conn.wait_closed()
        except Exception as exc:  # noqa: BLE001 - the reason is what we keep
            self.close_reason = str(exc) or type(exc).__name__
        self.close_reason = self.close_reason or "the connection closed"
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def home(self) -> str:
        return f"{self.root}/home"

    @property
    def venv_python(self) -> str:
        return f"{self.root}/venv/bin/python"

    async def forward_queen(self, queen_url: str) -> str:
        """A port on the remote's loopback that reaches the queen; returns the URL the hive should use."""
        if self.queen_port is None:
            where = urlsplit(queen_url)
            host = "127.0.0.1" if where.hostname in (None, "0.0.0.0", "::") else where.hostname
            try:
                listener = await self.conn.forward_remote_port("127.0.0.1", 0, host, where.port)
            except asyncssh.ChannelListenError as exc:
                raise ssh.SshError(f"The SSH server of {self.host.alias} refused a port forward ({exc}); rbee needs "
                                   "`AllowTcpForwarding yes` (the default) in its sshd_config.",
                                   code="SSH_FORWARDING_REFUSED") from None
            self.queen_port = listener.get_port()
        return f"http://127.0.0.1:{self.queen_port}"

    async def local_url(self, remote_url: str) -> str:
        """The queen-side URL for a URL on the remote's loopback (the hive's or a worker's)."""
        parts = urlsplit(remote_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            raise ssh.SshError(f"{self.host.alias} reported {remote_url!r}, which is not on its loopback.",
                               code="REMOTE_ADDRESS")
        listener = self._forwards.get(parts.port)
        if listener is None:
            if len(self._forwards) >= MAX_FORWARDS:
                raise ssh.SshError(f"{self.host.alias} asked for more than {MAX_FORWARDS} forwarded ports.",
                                   code="REMOTE_ADDRESS")
            listener = await self.conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", parts.port)
            if parts.port in self._forwards:  # another call made one meanwhile: keep that one
                listener.close()
            else:
                self._forwards[parts.port] = listener
            listener = self._forwards[parts.port]
        return f"http://127.0.0.1:{listener.get_port()}"

    async def control(self, command: str, *args: str, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        """Run shared/hive_control.py with the remote's own python (not the venv's: it works on a broken
        install too); returns its JSON answer."""
        line = " ".join([shlex.quote(self.host.python), "-", command, "--home", shlex.quote(self.home),
                         "--python", shlex.quote(self.venv_python), *map(shlex.quote, args)])
        try:
            result = await asyncio.wait_for(self.conn.run(line, input=CONTROL_SOURCE(), check=False), timeout)
        except asyncio.TimeoutError:
            raise ssh.SshError(f"Controlling the hive on {self.host.alias} ({command}) took over {timeout:g} s.",
                               code="REMOTE_TIMEOUT") from None
        out = str(result.stdout or "").strip().splitlines()
        try:
            answer = json.loads(out[-1])
            assert isinstance(answer, dict)
        except (IndexError, ValueError, AssertionError):
            err = str(result.stderr or "").strip().splitlines()[-5:]
            raise ssh.RemoteCommandFailed(
                f"Controlling the hive on {self.host.alias} ({command}) failed (exit {result.exit_status}):\n"
                + "\n".join(err or out[-5:] or ["(no output)"])) from None
        return answer

    async def sftp(self) -> asyncssh.SFTPClient:
        """One SFTP session on the link, started when first needed (model transfers), closed with it."""
        async with self._sftp_lock:
            if self._sftp is None:
                try:
                    self._sftp = await asyncio.wait_for(self.conn.start_sftp_client(), ssh.CONNECT_TIMEOUT_S)
                except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
                    raise ssh.SshError(f"The SSH server of {self.host.alias} would not start SFTP ({exc or 'timed out'}); "
                                       "rbee sends models with it: check `Subsystem sftp` in its sshd_config.",
                                       code="SSH_NO_SFTP") from None
            return self._sftp

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
        self.conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._watch), 5)
