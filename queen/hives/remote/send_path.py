"""Two costs trimmed from how a hive's SSH link sends, for model pushes (32 KB SSH packets by the thousand).

asyncssh precedes every data packet with an empty MSG_IGNORE packet (a countermeasure against attacks on
CBC-mode ciphers, which AEAD ciphers do not need and OpenSSH does not send), and hands the transport one
write per packet: two packets, two encryptions and two system calls per 32 KB, the system calls alone a
fifth of the queen's time (cProfile). So:

- `GatheringTcp`: the TCP connection under the link, its writes gathered: what asyncssh writes in one turn
  of the event loop goes out as one send (the delay is a call_soon: nothing waits). It goes in through
  asyncssh's public `tunnel=` option (any object with `create_connection`).
- `without_ignore_packets`: once the link runs an AEAD cipher (AES-GCM, chacha20-poly1305), the empty
  MSG_IGNORE packets are left out.

Measured on loopback (a 200 MB push, alternating): gathered +10 %, and without the ignore packets another
+20-25 %. bench/model_transfer.py measures pushes through the cluster harness.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import asyncssh

MSG_IGNORE = 2  # RFC 4253
AEAD_CIPHERS = frozenset({"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"})


def without_ignore_packets(conn: asyncssh.SSHClientConnection) -> None:
    """Leave out asyncssh's empty MSG_IGNORE before each packet, on a link whose cipher is AEAD (it asks
    again at each packet: a rekey keeps the cipher, as both sides' preferences are unchanged)."""
    send = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and conn.get_extra_info("send_cipher") in AEAD_CIPHERS:
            return
        send(pkttype, *args, handler=handler)

    conn.send_packet = send_packet  # type: ignore[method-assign]


class GatheringTransport:
    """A transport whose writes within one turn of the loop become one write; everything else as it is."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        self._scheduled = False
        if self._pending and not self._transport.is_closing():
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)
        self._pending.clear()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # a disconnect message written just before must still go
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, pause_reading, ...
        return getattr(self._transport, name)


class _Gathering(asyncio.Protocol):
    """Stands between the socket and asyncssh's connection, handing it the gathering transport."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connection.connection_made(GatheringTransport(transport))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.connection.data_received(data)

    def eof_received(self) -> bool | None:
        return self.connection.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)

    def pause_writing(self) -> None:
        self.connection.pause_writing()

    def resume_writing(self) -> None:
        self.connection.resume_writing()


class GatheringTcp:
    """asyncssh's `tunnel=`: a plain TCP connection to the host, with gathered writes."""

    async def create_connection(self, session_factory: Callable[[], Any], host: str, port: int) -> tuple[Any, Any]:
        made: list[Any] = []

        def protocol() -> _Gathering:
            made.append(session_factory())
            return _Gathering(made[0])

        transport, _ = await asyncio.get_running_loop().create_connection(protocol, host, port)
        return transport, made[0]

    def close(self) -> None:
        """Nothing of its own to close: the connection closes with asyncssh's."""

    async def wait_closed(self) -> None:
        """As close()."""

    def __str__(self) -> str:
        return "TCP (writes gathered)"
