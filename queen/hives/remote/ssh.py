"""SSH to remote hives with asyncssh: connect with host keys checked, run commands with their output
narrated, upload over SFTP with progress. Only keys (or an agent) are used; passwords are never stored."""

from __future__ import annotations

import asyncio
import collections
import getpass
import shlex
import time
from pathlib import Path
from typing import Any

import asyncssh

from queen.errors import QueenError
from queen.hives.remote.hives_conf import RemoteHost
from queen.hives.remote.send_path import GatheringTcp, without_ignore_packets
from shared.events import narrate

CONNECT_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 1.0
# A hive's link: a keepalive every 2 s, and 3 unanswered ones close it (a dead link is seen within ~8 s).
KEEPALIVE_INTERVAL_S = 2.0
KEEPALIVE_COUNT_MAX = 3


class SshError(QueenError):
    title = "SSH problem"
    code = "SSH_ERROR"
    status = 502


class RemoteCommandFailed(SshError):
    code = "REMOTE_COMMAND_FAILED"


# AES-GCM first: it runs on the CPU's AES instructions, and through asyncssh it carries about 1.7x the bytes
# per second of chacha20-poly1305 (asyncssh's own first choice): 260 vs 150 MB/s measured on loopback, which
# is what a model push is made of. The server still picks among the rest when it offers neither.
_PREFERRED_CIPHERS = (b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com")


def _ciphers() -> list[str]:
    supported = asyncssh.encryption.get_default_encryption_algs()
    preferred = [c for c in _PREFERRED_CIPHERS if c in supported]
    return [c.decode() for c in preferred + [c for c in supported if c not in preferred]]


def _known_hosts(path: Path):
    return asyncssh.read_known_hosts(str(path)) if path.exists() else asyncssh.import_known_hosts("")


async def connect(host: RemoteHost, *, keepalive: bool = False) -> asyncssh.SSHClientConnection:
    known_hosts_path = Path(host.known_hosts).expanduser()
    options: dict[str, Any] = dict(
        port=host.port, username=host.user or getpass.getuser(), config=[],  # never read ~/.ssh/config
        known_hosts=_known_hosts(known_hosts_path), connect_timeout=CONNECT_TIMEOUT_S,
        password=None, kbdint_auth=False, encryption_algs=_ciphers(), tunnel=GatheringTcp())
    if keepalive:
        options.update(keepalive_interval=KEEPALIVE_INTERVAL_S, keepalive_count_max=KEEPALIVE_COUNT_MAX)
    if host.identity_file:
        key = Path(host.identity_file).expanduser()
        if not key.exists():
            raise SshError(f"IdentityFile {key} for {host.alias} does not exist.", code="SSH_KEY_MISSING")
        options["client_keys"] = [str(key)]
    try:
        conn = await asyncio.wait_for(asyncssh.connect(host.hostname, **options), CONNECT_TIMEOUT_S + 5)
    except asyncssh.HostKeyNotVerifiable:
        conn = await _unknown_host(host, known_hosts_path, options)
    except asyncssh.PermissionDenied as exc:
        raise SshError(f"{host.where} refused authentication for {host.alias} ({exc.reason}). rbee logs in with "
                       f"keys only: check IdentityFile in hives.conf and the remote's authorized_keys.",
                       code="SSH_AUTH_REFUSED", status=401) from None
    except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or "timed out"
        raise SshError(f"Cannot reach {host.alias} at {host.hostname}:{host.port}: {reason}.",
                       code="SSH_UNREACHABLE", status=504) from None
    without_ignore_packets(conn)
    return conn


async def _unknown_host(host: RemoteHost, known_hosts_path: Path, options: dict[str, Any]):
    key = await asyncio.wait_for(asyncssh.get_server_host_key(host.hostname, host.port, config=[]),
                                 CONNECT_TIMEOUT_S)
    if key is None:
        raise SshError(f"{host.alias} at {host.hostname}:{host.port} offered no host key.", code="SSH_HOST_KEY")
    fingerprint = key.get_fingerprint()
    name = host.hostname if host.port == 22 else f"[{host.hostname}]:{host.port}"
    if host.strict_host_key_checking != "accept-new":
        raise SshError(
            f"The host key of {host.alias} ({host.hostname}:{host.port}, {fingerprint}) is not in "
            f"{known_hosts_path}, so rbee does not trust it. After checking the fingerprint, either add it: "
            f"`ssh-keyscan -p {host.port} {host.hostname} >> {known_hosts_path}`, or set "
            f"`StrictHostKeyChecking accept-new` for {host.alias} in hives.conf.", code="SSH_UNKNOWN_HOST_KEY",
            status=403)
    known_hosts_path.parent.mkdir(parents=True, exist_ok=True)
    with open(known_hosts_path, "a") as f:
        f.write(f"{name} {key.export_public_key().decode().strip()}\n")
    narrate("ssh_host_key", f"Trusted the new host key of {host.alias} ({fingerprint}), added to {known_hosts_path}",
            target=host.alias, level="warn")
    options["known_hosts"] = _known_hosts(known_hosts_path)
    return await asyncssh.connect(host.hostname, **options)


async def run(conn: asyncssh.SSHClientConnection, host: RemoteHost, command: str, *, action: str,
              check: bool = True, quiet: bool = False, timeout: float = 600) -> tuple[int, list[str]]:
    """Run a shell command remotely; each output line becomes narration (unless quiet)."""
    tail: collections.deque[str] = collections.deque(maxlen=15)
    lines: list[str] = []
    async with conn.create_process(command, stderr=asyncssh.STDOUT) as proc:
        async def pump() -> None:
            async for line in proc.stdout:
                line = line.rstrip()
                lines.append(line)
                tail.append(line)
                if not quiet and line:
                    narrate(action, line, target=host.alias)

        await asyncio.wait_for(pump(), timeout)
        result = await proc.wait()
    while lines and not lines[-1]:
        lines.pop()  # the reader yields an empty string at EOF
    status = result.exit_status if result.exit_status is not None else -1
    if check and status != 0:
        raise RemoteCommandFailed(f"`{_short(command)}` failed on {host.alias} (exit {status}). Last lines:\n"
                                  + ("\n".join(tail) or "(no output)"))
    return status, lines


async def upload(conn: asyncssh.SSHClientConnection, host: RemoteHost, files: list[Path], remote_dir: str) -> None:
    total = sum(f.stat().st_size for f in files)
    done_before = 0
    last = 0.0
    started = time.monotonic()

    def progress(_src: bytes, _dst: bytes, copied: int, _size: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or done_before + copied == total:
            last = now
            done = done_before + copied
            rate = done / max(now - started, 1e-6)
            narrate("hive_install", f"Uploading to {host.alias}: {100 * done / total:.0f}% "
                                    f"({done / 1e6:.1f} MB of {total / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s)",
                    target=host.alias)

    async with conn.start_sftp_client() as sftp:
        for f in files:
            await sftp.put(str(f), f"{remote_dir}/{f.name}", progress_handler=progress)
            done_before += f.stat().st_size


async def install_dir(conn: asyncssh.SSHClientConnection, host: RemoteHost) -> str:
    """InstallDir as an absolute path on the remote (~/ is the remote user's home)."""
    path = host.install_dir
    if path.startswith("~/"):
        _, lines = await run(conn, host, 'echo "$HOME"', action="hive_install", quiet=True)
        path = lines[-1].strip().rstrip("/") + path[1:]
    if not path.startswith("/"):
        raise SshError(f"InstallDir of {host.alias} must be absolute or start with ~/, not {host.install_dir!r}.")
    return path


def q(value: str) -> str:
    return shlex.quote(value)


def _short(command: str) -> str:
    return command if len(command) < 120 else command[:117] + "..."
