"""Self-test of the multi-host harness (tests/support/netns.py), before any rbee test relies on it.

A harness that quietly fails is worse than none: a "cut" that sends RSTs, a capture that sees nothing,
or a namespace that leaks a daemon would make every multi-host test above it pass or fail for the wrong
reason. So this checks, against real sshds in real namespaces, what those tests will assume: the queen's
namespace reaches every host with asyncssh; hosts reach each other and the queen; the wire shows the SSH
banner but never what runs inside the encrypted channel; a cut host times out (no error, no RST) and
comes back; and stopping the cluster leaves no namespace, link or process behind, even after a failed start.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.support import netns
from tests.support.netns import Cluster, Host, require_netns, start_cluster

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

MARKER = "RBEE_SECRET_MARKER_123"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_netns()
    with start_cluster(tmp_path, ["alpha", "beta"]) as made:
        yield made


async def connect(cluster: Cluster, host: Host, *, timeout: float = 10.0) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(host.ip, port=host.port, username="root", client_keys=[str(cluster.client_key)],
                                  known_hosts=str(cluster.known_hosts), config=[], connect_timeout=timeout)


def leftovers(suffix: str) -> str:
    """Namespaces and links carrying this cluster's suffix, as `ip` lists them."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return "\n".join(line for line in (listed + links).splitlines() if suffix in line)


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_root_namespace_reaches_every_host_over_ssh(cluster: Cluster) -> None:
    assert len({host.ip for host in cluster.hosts}) == 2
    for host in cluster.hosts:
        async with await connect(cluster, host) as conn:
            result = await conn.run("echo hello", check=True)
        assert result.stdout == "hello\n"
        assert host.port == 22
        listening = host.listening()
        assert any(addr in ("0.0.0.0", "*") and port == 22 and name == "sshd" for addr, port, name in listening), \
            listening
        assert host.known_hosts.read_text().startswith(f"{host.ip} ssh-ed25519 ")


async def test_hosts_reach_each_other_and_the_bridge(cluster: Cluster) -> None:
    alpha, beta = cluster.hosts
    banner = alpha.run("bash", "-c", f"exec 3<>/dev/tcp/{beta.ip}/22; head -c 8 <&3").stdout
    assert banner == "SSH-2.0-"
    with socket.socket() as queen:  # where a hive would send heartbeats: the root namespace, at the bridge IP
        queen.bind((cluster.bridge_ip, 0))
        queen.listen()
        queen.settimeout(10)
        port = queen.getsockname()[1]
        beta.run("bash", "-c", f"exec 3<>/dev/tcp/{cluster.bridge_ip}/{port}; echo from-beta >&3")
        peer, (address, _) = queen.accept()
        with peer:
            peer.settimeout(10)
            assert peer.recv(100) == b"from-beta\n"
        assert address == beta.ip


async def test_capture_sees_the_handshake_but_not_the_channel(cluster: Cluster) -> None:
    host = cluster.hosts[0]
    with cluster.capture() as capture:
        async with await connect(cluster, host) as conn:
            result = await conn.run(f"echo {MARKER}", check=True)
    assert result.stdout == f"{MARKER}\n"
    assert capture.frames > 0 and len(capture.data) > 0
    assert capture.contains(b"SSH-2.0-")  # the banner is sent in clear: the capture really sees this connection
    assert not capture.contains(MARKER.encode())


async def test_cut_host_times_out_silently_and_comes_back(cluster: Cluster) -> None:
    alpha, beta = cluster.hosts
    async with await connect(cluster, alpha) as established:
        alpha.cut()
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):  # not refused, not unreachable: silence
                await connect(cluster, alpha, timeout=3)
            assert asyncio.get_running_loop().time() - started >= 2.5
            async with await connect(cluster, beta) as other:  # the rest of the cluster is unaffected
                assert (await other.run("echo up", check=True)).stdout == "up\n"
        finally:
            alpha.restore()
        # No RST was sent during the cut: the connection opened before it carries on, as after a replug.
        resumed = await asyncio.wait_for(established.run("echo resumed", check=True), 20)
        assert resumed.stdout == "resumed\n"
    async with await connect(cluster, alpha) as again:
        assert (await again.run("echo back", check=True)).stdout == "back\n"


async def test_stop_kills_everything_and_leaves_nothing(cluster: Cluster) -> None:
    host = cluster.hosts[1]
    async with await connect(cluster, host) as conn:  # a daemon outliving its ssh session, like a hive
        started = await conn.run("setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!", check=True)
    daemon = int(started.stdout)
    assert daemon in host.pids()
    pids = [pid for each in cluster.hosts for pid in each.pids()]
    sshds = [each.proc.pid for each in cluster.hosts if each.proc is not None]
    assert len(sshds) == 2 and set(sshds) <= set(pids)
    assert leftovers(cluster.suffix)

    cluster.stop()
    cluster.stop()  # idempotent: the fixture stops it once more

    assert leftovers(cluster.suffix) == ""
    assert [pid for pid in pids if running(pid)] == []
    for each in cluster.hosts:
        found = subprocess.run(["pgrep", "-f", str(each.root / "sshd_config")], capture_output=True, text=True)
        assert found.stdout == ""


def test_failed_start_cleans_up_what_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_netns()
    seen: list[Cluster] = []

    def broken(cluster: Cluster, bridge_mac: str) -> None:
        seen.append(cluster)
        raise RuntimeError("injected failure after namespaces and links exist")

    monkeypatch.setattr(netns, "_pin_neighbours", broken)
    with pytest.raises(RuntimeError, match="injected"):
        start_cluster(tmp_path, ["alpha", "beta"])
    assert len(seen) == 1 and len(seen[0].hosts) == 2
    assert leftovers(seen[0].suffix) == ""
