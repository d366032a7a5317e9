"""Run a daemon's app until a signal, its shutdown endpoint or a fatal condition; clean up either way.

Every daemon prints the start-up handshake (shared/handshake.py) once bound, which is how a parent
learns the port (port 0 is common); `app[appkeys.LISTENING]` holds the URL for the app itself.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import ssl
import sys
from typing import Awaitable, Callable

from aiohttp import web

from shared import appkeys
from shared.handshake import listening_line
from shared.ports import valid_port
from shared.process import watch_parent

log = logging.getLogger("rbee.daemon")


def port_number(text: str) -> int:
    """argparse type for a port option: a TCP port, 0 letting the OS pick."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not valid_port(port, allow_zero=True):
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {port}")
    return port


def daemon_arg_parser(prog: str, description: str, example: str, *, default_port: int,
                      host_help: str = "address to bind (default 127.0.0.1)") -> argparse.ArgumentParser:
    """The command line every daemon starts from: what it is, an example, --host and --port."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=f"example: {example}")
    parser.add_argument("--host", default="127.0.0.1", help=host_help)
    parser.add_argument("--port", type=port_number, default=default_port,
                        help=f"port (default {default_port}{'; 0 lets the OS pick' if default_port else ', the OS picks'})")
    return parser


def configure_logging(prog: str) -> None:
    """Daemons log to stderr (their log file when started by a parent); RBEE_LOG=info shows more."""
    logging.basicConfig(level=os.environ.get("RBEE_LOG", "WARNING").upper(), stream=sys.stderr,
                        format=f"{prog} %(levelname)s %(name)s: %(message)s")


def advertised_url(host: str, port: int, scheme: str = "http") -> str:
    """How a daemon's own children and local clients reach it: its bind address, or loopback when it
    binds every interface. Remote machines never use it: they reach rbee only through SSH forwards."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"{scheme}://{shown}:{port}"


async def serve(
    app: web.Application,
    *,
    prog: str,
    name: str,
    host: str,
    port: int,
    fatal: Callable[[], Awaitable[str]] | None = None,
    exit_with_parent: bool = False,
    on_listening: Callable[[int], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Returns the exit code: 0 after a signal or a shutdown request, 1 when it cannot run.

    With `ssl_context` the daemon serves HTTPS at host:port, and plain HTTP on a loopback port of its own
    for its children (the local hive, workers, the SSH forwards of remote hives): what they reach it by
    (appkeys.LISTENING), so none of them needs the certificate."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    watcher = asyncio.create_task(watch_parent(parent)) if exit_with_parent and parent != 1 else None
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
    except Exception as exc:  # a resource that cannot start (a database it cannot open, ...)
        print(f"{prog}: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
            if ssl_context is not None:
                await web.TCPSite(runner, "127.0.0.1", 0).start()  # for its children (see above)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            hint = " (is another one running? pick another --port)" if exc.errno == errno.EADDRINUSE else ""
            print(f"{prog}: cannot listen on {host}:{port}: {reason}{hint}", file=sys.stderr)
            return 1
        bound_port = runner.addresses[0][1]
        url = advertised_url(host, bound_port, "https" if ssl_context is not None else "http")
        app[appkeys.LISTENING].set(url if ssl_context is None else advertised_url("127.0.0.1", runner.addresses[-1][1]))
        if on_listening is not None:
            on_listening(bound_port)
        print(listening_line(prog, name, url), flush=True)
        waits: dict[asyncio.Future, str] = {
            asyncio.ensure_future(stop.wait()): "signal",
            asyncio.ensure_future(app[appkeys.SHUTDOWN_REQUESTED].wait()): "shutdown request",
        }
        if fatal is not None:
            waits[asyncio.ensure_future(fatal())] = "fatal"
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        first = done.pop()
        if waits[first] == "fatal":
            print(f"{prog}: {first.result()}", file=sys.stderr)
            return 1
        log.info("%s shutting down (%s)", prog, waits[first])
        return 0
    finally:
        if watcher:
            watcher.cancel()
        await runner.cleanup()
