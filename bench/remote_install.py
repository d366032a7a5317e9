"""From `rbee hive install` on a fresh remote to the first token generated there, in steps: install
(wheelhouse built here, uploaded, pip install there), start (SSH link, forwards, hive up), and the first
inference (worker spawn, model load, first token). The remote is a network namespace with its own sshd
behind a bridge (tests/support/netns.py, needs root and iproute2), or this machine's loopback sshd where
namespaces are not available. The wheelhouse is built once before timing (it is cached afterwards; its
first build is a one-off per rbee version). The last line printed is one JSON object.

    .venv/bin/python bench/remote_install.py
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROMPT, print_run_in_temp_home  # noqa: E402
from shared.events import Data, Error, Token  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from shared.operations import Infer  # noqa: E402
from tests.support.netns import netns_available, start_cluster  # noqa: E402
from tests.support.processes import start_queen  # noqa: E402
from tests.support.sshd import start_sshd  # noqa: E402

BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


async def timed(client: JobClient, operation) -> tuple[float, list, float | None]:
    started = time.perf_counter()
    job = await client.submit(operation)
    events, first_token = [], None
    async for event in client.stream(job.job_id):
        events.append(event)
        if isinstance(event, Token) and first_token is None:
            first_token = time.perf_counter() - started
    if events[-1].state != "completed":
        raise SystemExit(f"{operation}: " + "; ".join(e.message for e in events if isinstance(e, Error)))
    return time.perf_counter() - started, events, first_token


async def run(home: Path) -> dict:
    reason = netns_available()
    cluster = server = None
    if reason is None:
        cluster = start_cluster(home / "net", ["remote"])
        host = cluster.hosts[0]
        block = (f"Host remote\n    HostName {host.ip}\n    IdentityFile {cluster.client_key}\n"
                 f"    UserKnownHostsFile {cluster.known_hosts}\n")
        where = "network namespace behind a bridge"
    else:
        server = start_sshd(home / "sshd")
        block = (f"Host remote\n    HostName 127.0.0.1\n    Port {server.port}\n    IdentityFile {server.client_key}\n"
                 f"    UserKnownHostsFile {server.known_hosts}\n")
        where = f"loopback sshd ({reason})"
    queen = await asyncio.to_thread(start_queen, home / "queen")
    try:
        (home / "queen" / "config" / "hives.conf").write_text(
            block + f"    User {getpass.getuser()}\n    InstallDir {home / 'remote-install'}\n    Python {BASE_PYTHON}\n")
        async with JobClient(queen.url, queen.token, request_timeout=600) as client:
            # Warm the wheelhouse cache (a one-off per rbee version), so what is timed is the install.
            sys.path.insert(0, str(ROOT))
            from queen.hives.remote.wheelhouse import build_wheelhouse
            await build_wheelhouse(home / "queen" / "data")
            install_s, events, _ = await timed(client, {"operation": "hive_install", "alias": "remote"})
            info = next(e.payload for e in events if isinstance(e, Data) and e.action == "hive_install")
            start_s, _, _ = await timed(client, {"operation": "hive_start", "alias": "remote"})
            infer_s, _, ttft = await timed(client, Infer(prompt=PROMPT, max_tokens=8, temperature=0, hive_id="remote"))
            warm_s, _, warm_ttft = await timed(client, Infer(prompt=PROMPT + " 13,", max_tokens=8, temperature=0,
                                                             hive_id="remote"))
            await timed(client, {"operation": "hive_stop", "alias": "remote"})
        return {"remote": where, "install_s": round(install_s, 1), "wheels": info.get("wheels"),
                "llama": info.get("llama"), "start_s": round(start_s, 2),
                "first_infer_ttft_s": round(ttft or 0, 2), "first_infer_s": round(infer_s, 2),
                "install_to_first_token_s": round(install_s + start_s + (ttft or 0), 1),
                "warm_ttft_ms": round((warm_ttft or 0) * 1000, 1), "warm_infer_s": round(warm_s, 2)}
    finally:
        await asyncio.to_thread(queen.stop, 60)
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    print_run_in_temp_home(run)
