"""Three machines on one box: the queen in the root network namespace, two remotes ("hosta", "hostb")
in namespaces of their own behind a bridge, each with its own sshd, host key and authorized key
(tests/support/netns.py). Everything between the queen and a remote must go through SSH.

The tests share one cluster with both hives installed and started (installing takes most of the time),
and run in file order; each leaves both hives serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from shared.events import Error, Narration, Token
from shared.job_client import JobClient
from shared.operations import Infer
from tests.integration.test_remote_hive import BASE_PYTHON, payload, run
from tests.support.netns import require_netns, start_cluster
from tests.support.processes import start_queen

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

HOSTS = ("hosta", "hostb")


def completed(events):
    assert events[-1].state == "completed", [e.message for e in events if isinstance(e, Error)]
    return events


def hive_pids(host) -> list[int]:
    pids = []
    for pid in host.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hive.main" in cmd:
            pids.append(pid)
    return pids


class Setup:
    def __init__(self, cluster, home: Path) -> None:
        self.cluster = cluster
        self.home = home
        self.queen = None

    def start_queen(self):
        self.queen = start_queen(self.home)
        return self.queen

    def client(self, **options) -> JobClient:
        return JobClient(self.queen.url, self.queen.token, request_timeout=120, **options)

    def hive_tokens(self) -> list[str]:
        store = json.loads((self.home / "config" / "remote-hives.json").read_text())
        return [store[h]["token"] for h in HOSTS]


@contextlib.contextmanager
def two_remotes(root: Path) -> Iterator[Setup]:
    """A queen and both remotes installed and started (the slow part: shared by the modules that need it);
    everything stopped after."""
    require_netns()
    cluster = start_cluster(root / "net", list(HOSTS))
    s = Setup(cluster, root / "queen-home")
    s.remote = root / "remote"
    try:
        s.start_queen()
        (s.home / "config" / "hives.conf").write_text("".join(
            f"Host {h.name}\n    HostName {h.ip}\n    User {getpass.getuser()}\n    IdentityFile {cluster.client_key}\n"
            f"    UserKnownHostsFile {cluster.known_hosts}\n    InstallDir {s.remote / h.name}\n"
            f"    Python {BASE_PYTHON}\n    HivePort 7835\n\n" for h in cluster.hosts))

        async def install_and_start():
            async with s.client() as client:
                for alias in HOSTS:  # one at a time: two pip installs at once crawl on two cores
                    started = time.monotonic()
                    events = completed(await run(client, {"operation": "hive_install", "alias": alias}))
                    s.install_s = time.monotonic() - started
                    assert payload(events, "hive_install")["llama"] == "wheel"
                for alias in HOSTS:
                    completed(await run(client, {"operation": "hive_start", "alias": alias}))

        asyncio.run(install_and_start())
        yield s
    finally:
        async def stop_hives():
            async with s.client() as client:
                for alias in HOSTS:
                    await run(client, {"operation": "hive_stop", "alias": alias})

        if s.queen is not None:
            try:
                asyncio.run(stop_hives())
            finally:
                s.queen.stop(60)
        cluster.stop()  # kills whatever is left in the namespaces


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with two_remotes(tmp_path_factory.mktemp("multi")) as s:
        yield s


async def test_two_remotes_serve_and_only_ssh_crosses_the_network(setup):
    prompt = "The zanzibar quokka 7391 said that the capital of France is"
    with setup.cluster.capture() as capture:
        async with setup.client() as client:
            for alias in HOSTS:
                events = completed(await run(client, Infer(prompt=prompt, max_tokens=8, temperature=0,
                                                           hive_id=alias)))
                assert events[-1].stats["hive_id"] == alias
                assert "".join(e.t for e in events if isinstance(e, Token)).strip()
    assert capture.frames > 20 and len(capture.data) > 10_000  # the SSH traffic of two inferences
    for secret in [setup.queen.token, *setup.hive_tokens(), prompt, "zanzibar quokka"]:
        assert not capture.contains(secret.encode()), f"{secret[:12]}... crossed the network in clear"
    for host in setup.cluster.hosts:
        exposed = [(addr, port, name) for addr, port, name in host.listening()
                   if not addr.startswith("127.") and addr not in ("::1", "[::1]")]
        assert exposed and all(name == "sshd" for _, _, name in exposed), exposed


async def test_a_killed_hive_is_restarted_and_serves_again(setup):
    host = setup.cluster.host("hostb")
    before = hive_pids(host)
    assert before
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    async with setup.client() as client:
        while True:
            status = payload(await run(client, {"operation": "hive_status", "alias": "hostb"}), "hive_status")
            if status["state"] == "running" and set(hive_pids(host)) - set(before):
                break
            assert time.monotonic() - killed < 15, status
            await asyncio.sleep(0.3)
        completed(await run(client, Infer(prompt="Hello", max_tokens=4, hive_id="hostb")))
    assert time.monotonic() - killed < 15
    assert any("restarting it" in n["human"] for n in status["notes"])


async def test_a_cut_link_is_reported_and_heals_by_itself(setup):
    host = setup.cluster.host("hostb")
    async with setup.client(stream_idle_timeout=30) as client:
        job = await client.submit(Infer(prompt="1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=2000, temperature=0,
                                        hive_id="hostb"))
        events, last = [], -1
        async for last, event in client.stream_with_ids(job.job_id):  # noqa: B007  (`last` is read after the loop)
            events.append(event)
            if sum(isinstance(e, Token) for e in events) >= 5:
                break
        host.cut()
        cut_at = time.monotonic()
        try:
            async for event in client.stream(job.job_id, after=last):
                events.append(event)
            ended = time.monotonic() - cut_at
            error = next(e for e in events if isinstance(e, Error))
            assert "Lost the connection to hostb" in error.message, error.message
            assert ended < 12, f"the stream ended {ended:.1f} s after the cut"
            while True:
                status = payload(await run(client, {"operation": "hive_status", "alias": "hostb"}), "hive_status")
                if status["state"] == "unreachable":
                    break
                assert time.monotonic() - cut_at < 10, f"still {status['state']} 10 s after the cut"
                await asyncio.sleep(0.2)
            events = await run(client, Infer(prompt="Hello", max_tokens=4, hive_id="hostb"))
            error = next(e for e in events if isinstance(e, Error))
            assert error.code == "HIVE_UNREACHABLE" and "unreachable" in error.message, error.message
            assert "start it" not in error.message and "install" not in error.message
            completed(await run(client, Infer(prompt="Hello", max_tokens=4, hive_id="hosta")))  # the other one
        finally:
            host.restore()
        restored = time.monotonic()
        while True:
            status = payload(await run(client, {"operation": "hive_status", "alias": "hostb"}), "hive_status")
            if status["state"] == "running":
                break
            assert time.monotonic() - restored < 30, status
            await asyncio.sleep(0.5)
        events = completed(await run(client, Infer(prompt="Hello", max_tokens=4, hive_id="hostb")))
        assert not [e for e in events if isinstance(e, Narration) and e.action == "schedule"]  # warm worker


async def test_a_queen_restart_readopts_both_hives_and_their_warm_workers(setup):
    async with setup.client() as client:
        workers = {alias: payload(await run(client, {"operation": "worker_list", "hive_id": alias}),
                                  "worker_list")["workers"] for alias in HOSTS}
    assert all(len(w) == 1 for w in workers.values()), workers
    hives_before = {h.name: hive_pids(h) for h in setup.cluster.hosts}
    setup.queen.stop(60)
    setup.start_queen()
    async with setup.client() as client:
        for alias in HOSTS:
            events = completed(await run(client, Infer(prompt="Hello", max_tokens=4, hive_id=alias)))
            assert events[-1].stats["worker_id"] == workers[alias][0]["id"]  # the warm worker, not a new one
            assert not [e for e in events if isinstance(e, Narration) and e.action == "worker_spawn"]
    assert {h.name: hive_pids(h) for h in setup.cluster.hosts} == hives_before  # adopted, not restarted


def newer_rbee(where: Path) -> tuple[Path, str]:
    """A copy of rbee's source with the next version number (the protocol unchanged): what a `git pull`
    brings. Returns the copy and its version."""
    import shutil

    from shared.version import VERSION

    root = Path(__file__).resolve().parents[2]
    newer = VERSION + ".1"
    for package in ("shared", "queen", "hive", "worker", "keeper_tui"):
        shutil.copytree(root / package, where / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, where / name)
    for path, old, new in [(where / "pyproject.toml", f'version = "{VERSION}"', f'version = "{newer}"'),
                           (where / "shared" / "__init__.py", f'__version__ = "{VERSION}"', f'__version__ = "{newer}"')]:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return where, newer


@pytest.mark.timeout(900)
async def test_upgrade_all_while_four_clients_stream(setup, tmp_path):
    """The queen restarts on a newer rbee, sees both hives behind, and `hive upgrade --all` brings them to it
    one at a time while four clients keep asking: no answer fails, each is the undisturbed one."""
    import sys

    from shared.operations import HiveUpgrade
    from tests.support.processes import start_daemon

    request = Infer(prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", max_tokens=24, temperature=0)
    async with setup.client() as client:
        reference = completed(await run(client, request))
    expected = "".join(e.t for e in reference if isinstance(e, Token))
    source, newer = newer_rbee(tmp_path / "rbee-newer")
    setup.queen.stop(60)
    run_queen = (f"import sys, runpy; sys.path.insert(0, {str(source)!r}); "
                 "runpy.run_module('queen.main', run_name='__main__')")
    setup.queen = start_daemon([sys.executable, "-c", run_queen, "--port", "0", "--local-hive-port", "0"], setup.home)
    async with setup.client() as client:
        for alias in HOSTS:  # adopted again (it waits for each to be up)
            completed(await run(client, {"operation": "hive_start", "alias": alias}))
        status = payload(await run(client, {"operation": "status"}), "status")
        assert status["queen"]["version"] == newer
        behind = {h["alias"]: h for h in status["hives"] if h["alias"] in HOSTS}
        assert all(h["skew"] and h["compatible"] and h["version"] != newer for h in behind.values()), behind

        answers: list[str] = []
        failures: list[str] = []
        upgrading = asyncio.Event()

        async def keep_asking() -> None:
            async with setup.client() as own:
                while not upgrading.is_set():
                    events = await run(own, request)
                    if events[-1].state != "completed":
                        failures.append("; ".join(e.message for e in events if isinstance(e, Error)))
                    answers.append("".join(e.t for e in events if isinstance(e, Token)))

        clients = [asyncio.create_task(keep_asking()) for _ in range(4)]
        try:
            events = await run(client, HiveUpgrade(all=True, deadline_s=20))
        finally:
            upgrading.set()
            await asyncio.gather(*clients)
        completed(events)
        done = payload(events, "hive_upgrade")["upgraded"]
        assert [(h["alias"], h["version"], h["state"]) for h in done] == [(a, newer, "running") for a in HOSTS]
        said = [e.human for e in events if isinstance(e, Narration)]
        assert any("Draining hive hosta" in h for h in said) and any("Draining hive hostb" in h for h in said)
        assert not failures, failures
        assert len(answers) >= 8 and all(a == expected for a in answers), set(answers)
        for alias in HOSTS:
            events = completed(await run(client, Infer(prompt="Hello", max_tokens=4, hive_id=alias)))
            hive = payload(await run(client, {"operation": "hive_status", "alias": alias}), "hive_status")
            assert (hive["version"], hive["skew"]) == (newer, False)
    for host in setup.cluster.hosts:
        install = setup.home.parent / "remote" / host.name
        assert json.loads((install / "rbee-install.json").read_text())["rbee"] == newer
        assert not (install / "venv-old").exists() and not (install / "venv-next").exists()
        assert list(install.glob(f"venv/lib/python*/site-packages/rbee-{newer}.dist-info"))
