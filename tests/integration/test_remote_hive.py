"""Remote hives over SSH against a real OpenSSH server on loopback (the "remote" is this machine). The
multi-machine behaviour (namespaces, link cuts, captures) is in test_multi_host.py."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.events import Data, End, Error, Narration, Token
from shared.job_client import JobClient
from shared.operations import Infer
from shared.version import PROTOCOL, VERSION
from tests.support.processes import pid_alive, start_queen
from tests.support.sshd import free_port, keygen, sshd_binary, start_sshd

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if sshd_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("sshd is missing under CI: .ci/run must install openssh-server")
        pytest.skip("OpenSSH server (sshd) is not installed; `apt-get install openssh-server` to run these")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def host_block(alias: str, sshd, remote_root: Path, **overrides) -> str:
    options = {"HostName": "127.0.0.1", "Port": sshd.port, "User": getpass.getuser(),
               "IdentityFile": sshd.client_key, "HivePort": free_port(), "InstallDir": remote_root / alias,
               "Python": BASE_PYTHON, "UserKnownHostsFile": sshd.known_hosts, **overrides}
    return f"Host {alias}\n" + "".join(f"    {k} {v}\n" for k, v in options.items()) + "\n"


@pytest.fixture
async def queen(tmp_path):
    home = tmp_path / "home"
    daemon = await asyncio.to_thread(start_queen, home)
    daemon.home = home
    yield daemon
    await asyncio.to_thread(daemon.stop, 60)


async def run(client, operation):
    job = await client.submit(operation)
    return [e async for e in client.stream(job.job_id)]


def payload(events, action):
    found = [e.payload for e in events if isinstance(e, Data) and e.action == action]
    assert found, f"no {action} data; errors: {[e.message for e in events if isinstance(e, Error)]}"
    return found[0]


def error_of(events):
    assert events[-1] == End(state="failed"), events[-3:]
    return next(e for e in events if isinstance(e, Error))


def hive_processes(port: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (b"hive.main" in cmd or any(b"rbee-hive" in part for part in cmd)) and str(port).encode() in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def strays():
    """Hive processes a test starts by hand, killed at the end whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_install_start_infer_stop_uninstall(sshd, queen, tmp_path, strays):
    remote_root = tmp_path / "remote"
    block = host_block("remote1", sshd, remote_root)
    hive_port = int(block.split("HivePort ")[1].split()[0])
    (queen.home / "config" / "hives.conf").write_text(block)
    async with JobClient(queen.url, queen.token, request_timeout=60) as client:
        events = await run(client, {"operation": "ssh_test", "alias": "remote1"})
        info = payload(events, "ssh_test")
        assert info["python"] and info["system"].startswith("Linux")

        events = await run(client, {"operation": "hive_install", "alias": "remote1"})
        assert events[-1].state == "completed", [e for e in events if isinstance(e, Error)]
        said = [e.human for e in events if isinstance(e, Narration)]
        assert any("Uploading to remote1: 100%" in h for h in said)
        assert any("Successfully installed" in h for h in said)  # the remote pip's own output, streamed
        install_dir = remote_root / "remote1"
        assert (install_dir / "venv" / "bin" / "rbee-hive").exists()
        assert not (install_dir / "wheelhouse").exists()  # removed once installed
        assert json.loads((install_dir / "rbee-install.json").read_text())["state"] == "installed"
        # The hive's own token, not the queen's; the queen keeps it.
        token_file = install_dir / "home" / "config" / "token"
        hive_token = token_file.read_text().strip()
        assert hive_token != queen.token and oct(token_file.stat().st_mode)[-3:] == "600"
        store = json.loads((queen.home / "config" / "remote-hives.json").read_text())
        assert store["remote1"]["token"] == hive_token

        events = await run(client, {"operation": "hive_start", "alias": "remote1"})
        assert payload(events, "hive_start")["state"] == "running"
        assert hive_processes(hive_port)
        async with JobClient(f"http://127.0.0.1:{hive_port}", hive_token) as hive:  # a hive token drives
            with pytest.raises(Exception, match="Unknown API key"):                 # nothing at the queen
                await JobClient(queen.url, hive_token, session=hive.session).submit({"operation": "hive_list"})

        events = await run(client, Infer(prompt="The capital of France is", max_tokens=8, temperature=0,
                                         hive_id="remote1"))
        assert events[-1].state == "completed" and events[-1].stats["hive_id"] == "remote1"
        assert "Paris" in "".join(e.t for e in events if isinstance(e, Token))
        workers = payload(await run(client, {"operation": "worker_list", "hive_id": "remote1"}), "worker_list")
        assert len(workers["workers"]) == 1
        worker_pid = workers["workers"][0]["pid"]
        status = payload(await run(client, {"operation": "status"}), "status")
        hive = next(h for h in status["hives"] if h["alias"] == "remote1")
        worker = next(w for w in status["workers"] if w["hive_id"] == "remote1")
        for said in (status["queen"], hive, worker):
            assert (said["version"], said["protocol"]) == (VERSION, PROTOCOL) and not said.get("skew")

        # A hive of this install from before the lock file (started by hand, listening on every address) is
        # found by its command line and port, and stopped with the hive.
        stray_port = free_port()
        stray = subprocess.Popen([str(install_dir / "venv" / "bin" / "python"), "-m", "hive.main", "--host", "0.0.0.0",
                                  "--port", str(stray_port)], env={**os.environ, "RBEE_HOME": str(tmp_path / "old")},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        strays.append(stray)
        events = await run(client, {"operation": "hive_status", "alias": "remote1"})
        [found] = payload(events, "hive_status")["strays"]
        assert (found["pid"], found["host"], found["port"]) == (stray.pid, "0.0.0.0", str(stray_port))
        assert any("An rbee-hive from before the lock file runs on remote1" in e.human for e in events
                   if isinstance(e, Narration))

        # The remote's rbee turns into one of another protocol (as a newer release would be) and its hive
        # restarts on it: the queen sends it nothing and says why, naming both versions.
        [version_py] = install_dir.glob("venv/lib/python*/site-packages/shared/version.py")
        version_py.write_text(version_py.read_text().replace(f"PROTOCOL = {PROTOCOL}", "PROTOCOL = 99", 1))
        for pid in hive_processes(hive_port):
            os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while True:
            hive = payload(await run(client, {"operation": "hive_status", "alias": "remote1"}), "hive_status")
            if hive.get("protocol") == 99 and hive["state"] == "crashed" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert hive["compatible"] is False and hive["state"] == "crashed", hive
        assert (f"Hive remote1 runs rbee {VERSION} (protocol 99) and this queen runs rbee {VERSION} (protocol "
                f"{PROTOCOL})") in hive["problem"] and "upgrade this machine's rbee" in hive["problem"]
        error = error_of(await run(client, Infer(prompt="Hi", max_tokens=4, hive_id="remote1")))
        assert "protocol 99" in error.message

        events = await run(client, {"operation": "hive_stop", "alias": "remote1"})
        assert payload(events, "hive_stop")["state"] == "stopped"
        assert not hive_processes(hive_port) and not pid_alive(worker_pid)
        assert stray.wait(10) is not None  # the one from before the lock file too

        events = await run(client, {"operation": "hive_uninstall", "alias": "remote1"})
        assert payload(events, "hive_uninstall")["removed"] == str(install_dir)
        assert not install_dir.exists()
        assert "remote1" not in json.loads((queen.home / "config" / "remote-hives.json").read_text())  # revoked


async def test_ssh_faults_are_clear(sshd, queen, tmp_path):
    stranger = tmp_path / "stranger_key"
    keygen(stranger)
    empty_known_hosts = tmp_path / "known_hosts_empty"
    empty_known_hosts.write_text("")
    accepting_known_hosts = tmp_path / "known_hosts_accepting"
    closed = free_port()
    remote = tmp_path / "remote"
    (queen.home / "config" / "hives.conf").write_text(
        host_block("closed", sshd, remote, Port=closed)
        + host_block("stranger", sshd, remote, IdentityFile=stranger)
        + host_block("newhost", sshd, remote, UserKnownHostsFile=empty_known_hosts)
        + host_block("trusting", sshd, remote, UserKnownHostsFile=accepting_known_hosts,
                     StrictHostKeyChecking="accept-new")
        + host_block("nopython", sshd, remote, Python="/nonexistent/python3"))
    async with JobClient(queen.url, queen.token, request_timeout=60) as client:
        error = error_of(await run(client, {"operation": "ssh_test", "alias": "nowhere"}))
        assert error.code == "UNKNOWN_HIVE" and "Known hives: localhost, closed" in error.message

        error = error_of(await run(client, {"operation": "ssh_test", "alias": "closed"}))
        assert error.code == "SSH_UNREACHABLE" and f"127.0.0.1:{closed}" in error.message

        error = error_of(await run(client, {"operation": "ssh_test", "alias": "stranger"}))
        assert error.code == "SSH_AUTH_REFUSED" and "keys only" in error.message

        error = error_of(await run(client, {"operation": "ssh_test", "alias": "newhost"}))
        assert error.code == "SSH_UNKNOWN_HOST_KEY"
        assert "StrictHostKeyChecking accept-new" in error.message and "SHA256:" in error.message
        assert empty_known_hosts.read_text() == ""  # never trusted silently

        events = await run(client, {"operation": "ssh_test", "alias": "trusting"})
        assert events[-1].state == "completed"
        assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in accepting_known_hosts.read_text()

        error = error_of(await run(client, {"operation": "hive_install", "alias": "nopython"}))
        assert error.code == "REMOTE_PYTHON" and "No working '/nonexistent/python3' on nopython" in error.message

        error = error_of(await run(client, {"operation": "ssh_test", "alias": "localhost"}))
        assert error.code == "LOCAL_HIVE"


async def test_hive_port_taken_and_hive_dying_after_start(sshd, queen, tmp_path):
    remote = tmp_path / "remote"
    blocker = socket.socket()
    blocker.bind(("0.0.0.0", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    good_port = free_port()
    (queen.home / "config" / "hives.conf").write_text(
        host_block("busy", sshd, remote, HivePort=taken) + host_block("fragile", sshd, remote, HivePort=good_port))
    try:
        async with JobClient(queen.url, queen.token, request_timeout=60) as client:
            for alias in ("busy", "fragile"):
                assert (await run(client, {"operation": "hive_install", "alias": alias}))[-1].state == "completed"
            error = error_of(await run(client, {"operation": "hive_start", "alias": "busy"}))
            assert "exited right after starting" in error.message and "address already in use" in error.message

            assert (await run(client, {"operation": "hive_start", "alias": "fragile"}))[-1].state == "completed"
            first = hive_processes(good_port)
            for pid in first:
                os.kill(pid, 9)  # the hive dies after start: the queen notices and starts it again
            killed_at = time.monotonic()
            while not (set(hive_processes(good_port)) - set(first)):
                assert time.monotonic() - killed_at < 15, "the killed hive was not restarted within 15 s"
                await asyncio.sleep(0.2)
            events = await run(client, Infer(prompt="The capital of France is", max_tokens=4, temperature=0,
                                             hive_id="fragile"))
            assert events[-1].state == "completed", [e for e in events if isinstance(e, Error)]
            assert time.monotonic() - killed_at < 15, "serving again took longer than 15 s"
            status = payload(await run(client, {"operation": "hive_status", "alias": "fragile"}), "hive_status")
            assert status["state"] == "running"
            assert any("restarting it" in n["human"] for n in status["notes"]), status["notes"]
            for alias in ("busy", "fragile"):
                assert (await run(client, {"operation": "hive_uninstall", "alias": alias}))[-1].state == "completed"
    finally:
        blocker.close()
    assert not list(remote.iterdir())


async def test_import_from_an_openssh_config(queen, tmp_path):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n    ServerAliveInterval 30\n\nHost gpu1 gpu2\n    HostName 10.0.0.5\n"
                          "    User me\n    Port 2222\n\nHost *.lab\n    User lab\n")
    async with JobClient(queen.url, queen.token) as client:
        events = await run(client, {"operation": "hive_import_ssh", "ssh_config_path": str(ssh_config),
                                    "default_hive_port": 9000})
        report = payload(events, "hive_import_ssh")
        assert report["added"] == ["gpu1", "gpu2"]
        assert {s["host"]: s["reason"] for s in report["skipped"]} == {"*": "wildcard", "*.lab": "wildcard"}
        again = payload(await run(client, {"operation": "hive_import_ssh", "ssh_config_path": str(ssh_config)}),
                        "hive_import_ssh")
        assert again["added"] == [] and {"host": "gpu1", "reason": "already in hives.conf"} in again["skipped"]
        hives = payload(await run(client, {"operation": "hive_list"}), "hive_list")["hives"]
        assert [(h["alias"], h["host"]) for h in hives] == [("localhost", None), ("gpu1", "me@10.0.0.5:2222"),
                                                           ("gpu2", "me@10.0.0.5:2222")]
        error = error_of(await run(client, {"operation": "hive_import_ssh", "ssh_config_path": "/nope/config"}))
        assert "does not exist" in error.message


async def test_failing_remote_pip_install_shows_its_last_lines(sshd, queen, tmp_path):
    from queen.hives.remote.wheelhouse import dependencies_key, source_root

    # A wheelhouse that claims to be complete but holds none of the dependencies: pip on the remote fails.
    wheelhouse = queen.home / "data" / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    (wheelhouse / f".deps-{dependencies_key(source_root())}").touch()
    (queen.home / "config" / "hives.conf").write_text(host_block("broken", sshd, tmp_path / "remote"))
    async with JobClient(queen.url, queen.token, request_timeout=60) as client:
        error = error_of(await run(client, {"operation": "hive_install", "alias": "broken"}))
        assert error.code == "REMOTE_COMMAND_FAILED" and "failed on broken" in error.message
        assert "Last lines:" in error.message and "No matching distribution found" in error.message
        install_dir = tmp_path / "remote" / "broken"
        assert json.loads((install_dir / "rbee-install.json").read_text())["state"] == "installing"
        # A failed install can always be removed: its marker was written first.
        events = await run(client, {"operation": "hive_uninstall", "alias": "broken"})
        assert payload(events, "hive_uninstall")["removed"] == str(install_dir)
    assert not install_dir.exists()


async def test_a_stale_lock_or_pid_file_never_gets_an_unrelated_process_killed(sshd, queen, tmp_path):
    remote = tmp_path / "remote"
    (queen.home / "config" / "hives.conf").write_text(host_block("stale", sshd, remote))
    home = remote / "stale" / "home"
    (home / "state").mkdir(parents=True)
    (home / "config").mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        # What a crashed hive leaves, pointing at a pid that another process now has.
        (home / "state" / "hive.lock").write_text(json.dumps({"pid": bystander.pid, "port": 1}))
        (home / "hive.pid").write_text(f"{bystander.pid}\n")
        (remote / "stale" / "rbee-install.json").write_text("{}")
        async with JobClient(queen.url, queen.token, request_timeout=60) as client:
            events = await run(client, {"operation": "hive_stop", "alias": "stale"})
            assert events[-1].state == "completed"
            assert any("was not running" in e.human for e in events if isinstance(e, Narration))
        assert bystander.poll() is None, "hive_stop killed an unrelated process"
    finally:
        bystander.kill()
        bystander.wait()


def other_python() -> str | None:
    """An interpreter of another minor version than the queen's, if this machine has one."""
    import glob
    import shutil

    mine = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for path in sorted(glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*")):
        name = os.path.basename(path)
        if name != mine and name.replace("python", "").replace(".", "").isdigit() and shutil.which(path):
            if subprocess.run([path, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0:
                return path
    return None


async def test_install_on_a_remote_with_another_python_version(sshd, queen, tmp_path):
    python = other_python()
    if python is None:
        pytest.skip(f"this machine has no Python other than {sys.version_info[0]}.{sys.version_info[1]} with venv "
                    "(the wheel choice for other versions is tested in test_wheelhouse_targets.py)")
    (queen.home / "config" / "hives.conf").write_text(host_block("otherpy", sshd, tmp_path / "remote", Python=python))
    async with JobClient(queen.url, queen.token, request_timeout=60) as client:
        events = await run(client, {"operation": "hive_install", "alias": "otherpy"})
        assert events[-1].state == "completed", [e for e in events if isinstance(e, Error)]
        assert (await run(client, {"operation": "hive_start", "alias": "otherpy"}))[-1].state == "completed"
        events = await run(client, Infer(prompt="Hello", max_tokens=4, hive_id="otherpy"))
        assert events[-1].state == "completed", [e for e in events if isinstance(e, Error)]
        assert (await run(client, {"operation": "hive_uninstall", "alias": "otherpy"}))[-1].state == "completed"
