"""Models over the cluster's own links vs scp (#28): `rbee model push` of a GGUF from the queen's machine to a
remote hive, and `rbee model copy` from that hive to another, each against scp of the same file over the
same link (`scp -3` for the hive-to-hive path: through this machine, as the queen relays), side by side in
each round. Push and copy are timed end to end as a user waits for them: the hive's sha256 check of what
arrived and its catalog entry included. Then a push stopped half way (the job cancelled, as Ctrl+C does) is
run again: its overhead is its time beyond what its remaining bytes take at the full push's rate.

The remotes are network namespaces with their own sshd behind a bridge (tests/support/netns.py: root and
iproute2). The model is the built-in one padded to SIZE (tests/support/padded_gguf.py). The last line
printed is one JSON object.

    .venv/bin/python bench/model_transfer.py
"""

from __future__ import annotations

import asyncio
import getpass
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_run_in_temp_home  # noqa: E402
from shared.events import Data, Error  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from shared.operations import ModelCopy, ModelPush  # noqa: E402
from tests.support.netns import netns_available, start_cluster  # noqa: E402
from tests.support.padded_gguf import padded_model  # noqa: E402
from tests.support.processes import start_queen  # noqa: E402

BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")
SIZE = 400_000_000
ROUNDS = 3


async def job(client: JobClient, operation, *, stop_at: int | None = None, check: bool = True) -> tuple[float, list]:
    """Run a job to its end (or cancel it once `stop_at` bytes went); seconds and events."""
    started = time.perf_counter()
    submitted = await client.submit(operation)
    events = []
    async for event in client.stream(submitted.job_id):
        events.append(event)
        if (stop_at is not None and isinstance(event, Data) and event.action == "transfer_progress"
                and event.payload["done"] >= stop_at):
            await client.cancel(submitted.job_id)
            stop_at = None
    elapsed = time.perf_counter() - started
    if check and events[-1].state not in ("completed", "cancelled"):
        raise SystemExit(f"{operation.name}: " + "; ".join(e.message for e in events if isinstance(e, Error)))
    return elapsed, events


def payload(events: list, action: str) -> dict:
    return next(e.payload for e in events if isinstance(e, Data) and e.action == action)


def scp(cluster, *args: str) -> float:
    options = ["-q", "-i", str(cluster.client_key), "-o", f"UserKnownHostsFile={cluster.known_hosts}"]
    started = time.perf_counter()
    subprocess.run(["scp", *options, *args], check=True)
    return time.perf_counter() - started


async def run(home: Path) -> dict:
    reason = netns_available()
    if reason is not None:
        raise SystemExit(f"this benchmark needs network namespaces: {reason}")
    cluster = start_cluster(home / "net", ["hosta", "hostb"])
    queen = await asyncio.to_thread(start_queen, home / "queen")
    model = await asyncio.to_thread(padded_model, home / "Bench-400M.gguf", SIZE)
    model_id = f"file:{model}"
    user = getpass.getuser()
    hosta, hostb = cluster.hosts
    try:
        (home / "queen" / "config" / "hives.conf").write_text("".join(
            f"Host {h.name}\n    HostName {h.ip}\n    User {user}\n    IdentityFile {cluster.client_key}\n"
            f"    UserKnownHostsFile {cluster.known_hosts}\n    InstallDir {home / 'remote' / h.name}\n"
            f"    Python {BASE_PYTHON}\n    HivePort 7835\n\n" for h in cluster.hosts))
        scp_dir = {h.name: home / "scp" / h.name for h in cluster.hosts}
        for path in scp_dir.values():
            path.mkdir(parents=True)
        async with JobClient(queen.url, queen.token, request_timeout=600, stream_idle_timeout=120) as client:
            for alias in ("hosta", "hostb"):
                await job(client, _op("hive_install", alias))
                await job(client, _op("hive_start", alias))
            push_s, scp_s, copy_s, scp3_s, rates = [], [], [], [], []
            for _ in range(ROUNDS):
                for alias in ("hosta", "hostb"):  # each round sends the whole file
                    await job(client, _delete(alias, model_id), check=False)  # (none there the first time)
                scp_s.append(await asyncio.to_thread(scp, cluster, str(model), f"{user}@{hosta.ip}:{scp_dir['hosta']}/m.gguf"))
                elapsed, events = await job(client, ModelPush(path=str(model), hive_id="hosta"))
                push_s.append(elapsed)
                rates.append(payload(events, "model_push")["hives"][0]["bytes_per_s"])
                scp3_s.append(await asyncio.to_thread(scp, cluster, "-3", f"{user}@{hosta.ip}:{scp_dir['hosta']}/m.gguf",
                                                      f"{user}@{hostb.ip}:{scp_dir['hostb']}/m.gguf"))
                elapsed, _ = await job(client, ModelCopy(model=model_id, from_hive="hosta", to_hive="hostb"))
                copy_s.append(elapsed)
            # resume: a push stopped half way, then run again
            await job(client, _delete("hosta", model_id))
            await job(client, ModelPush(path=str(model), hive_id="hosta"), stop_at=SIZE // 2)
            resumed_s, events = await job(client, ModelPush(path=str(model), hive_id="hosta"))
            resumed = payload(events, "model_push")["hives"][0]
            full_push_s = statistics.median(push_s)
            overhead_s = resumed_s - full_push_s * resumed["sent_bytes"] / SIZE
            for alias in ("hosta", "hostb"):
                await job(client, _op("hive_stop", alias))
        mb = SIZE / 1e6
        return {
            "file_mb": round(mb), "rounds": ROUNDS, "link": "veth pair through a bridge (network namespaces)",
            "push_mb_s": round(mb / full_push_s, 1), "scp_mb_s": round(mb / statistics.median(scp_s), 1),
            "push_vs_scp": round(statistics.median(s / p for s, p in zip(scp_s, push_s)), 3),
            "push_transfer_only_mb_s": round(statistics.median(rates) / 1e6, 1),
            "copy_mb_s": round(mb / statistics.median(copy_s), 1), "scp3_mb_s": round(mb / statistics.median(scp3_s), 1),
            "copy_vs_scp3": round(statistics.median(s / c for s, c in zip(scp3_s, copy_s)), 3),
            "resume": {"resumed_at_mb": round(resumed["resumed_at"] / 1e6), "sent_mb": round(resumed["sent_bytes"] / 1e6),
                       "seconds": round(resumed_s, 2), "overhead_s": round(overhead_s, 2)},
        }
    finally:
        await asyncio.to_thread(queen.stop, 60)
        cluster.stop()


def _op(name: str, alias: str) -> dict:
    return {"operation": name, "alias": alias}


def _delete(alias: str, model_id: str) -> dict:
    return {"operation": "model_delete", "hive_id": alias, "id": model_id}


if __name__ == "__main__":
    print_run_in_temp_home(run)
