"""Several "machines" on one Linux box, for tests of remote hives that need real networks between hosts.

Each host is a network namespace with its own `eth0`, its own IP and its own sshd on port 22, plugged
through a veth pair into a bridge in the root namespace. The queen under test runs in the root
namespace, as on a real controller: it reaches each host at `Host.ip`, and hosts reach it at
`Cluster.bridge_ip`. On top of that:

- `Host.cut()` / `Host.restore()` pull and replug a host's cable (see `Host.cut` for how, and why it is
  silent: no RST, no "No route to host");
- `Capture` records every frame crossing the bridge, so a test can assert what an eavesdropper on the
  wire would (not) see;
- `Cluster.stop()` kills whatever the tests started inside the hosts: `ip netns del` alone does not.

Everything needs root, `ip` (iproute2), `ss` and sshd: tests call `require_netns()` first, which skips
outside CI and fails in CI (a CI machine that silently skips the multi-host suite tests nothing).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Callable

import pytest

from tests.support.sshd import keygen, sshd_binary
from tests.support.waiting import wait_until

ETH_P_ALL = 0x0003
SSH_PORT = 22
MAX_HOSTS = 200  # host i is .(2+i) of a /24, and its root-side veth is "rbv<i><suffix>" (≤ 15 chars)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_USERS = re.compile(r'users:\(\("([^"]*)"')


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _quiet(*args: str) -> None:
    """Run `ip` for cleanup: it must never raise, whatever state a failed start left behind."""
    try:
        _ip(*args, check=False)
    except (OSError, subprocess.SubprocessError):
        pass


@functools.lru_cache(maxsize=1)
def netns_available() -> str | None:
    """None when this machine can run a cluster, else why not (cached: the answer does not change)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "ss"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    if sshd_binary() is None:
        return "sshd (openssh-server) is not installed"
    probe = f"rbee-probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails: {made.stderr.strip()}"
    _quiet("netns", "del", probe)
    bridge = f"rbpr{secrets.token_hex(3)}"
    made = _ip("link", "add", bridge, "type", "bridge", check=False)
    if made.returncode != 0:
        return f"`ip link add type bridge` fails: {made.stderr.strip()}"
    _quiet("link", "del", bridge)
    return None


def require_netns() -> None:
    """Skip the calling test where namespaces cannot work; in CI (`CI=true`) fail instead."""
    reason = netns_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"multi-host harness unavailable in CI: {reason}")
    pytest.skip(reason)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the machine already has an address or a route in, so ours collides with none."""
    found: list[ipaddress.IPv4Network] = []
    addresses = _ip("-o", "-4", "addr", check=False).stdout
    routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
    for word in f"{addresses} {routes}".split():
        try:
            found.append(ipaddress.IPv4Network(word, strict=False))
        except ValueError:
            continue
    return found


def _pick_network() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(500):
        candidate = ipaddress.IPv4Network(f"10.{random.randint(1, 254)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 network on this machine")


@dataclass
class Host:
    """One machine of the cluster: a network namespace with its own eth0, IP and sshd on port 22."""

    name: str
    namespace: str
    ip: str
    veth_root: str  # the root-namespace end of this host's cable, a port of the bridge
    port: int
    known_hosts: Path  # this host's key alone, as `<ip> ssh-ed25519 ...`
    root: Path  # sshd config, host key, authorized_keys, pid file and sshd.log
    mac: str = field(default="", repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespace (network only: same files and users as the box)."""
        return subprocess.run(["ip", "netns", "exec", self.namespace, *argv], capture_output=True, text=True,
                              check=check, timeout=timeout, input=input)

    def listening(self) -> list[tuple[str, int, str]]:
        """(address, port, process name) of every listening TCP socket in this host.

        The address is as `ss` prints it without brackets: "0.0.0.0", "*", "::", "10.x.y.z"; the process
        name is "" when `ss` cannot tell.
        """
        found: list[tuple[str, int, str]] = []
        for line in self.run("ss", "-ltnpH").stdout.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            address, _, port = fields[3].rpartition(":")
            address = address.strip("[]").split("%", 1)[0]
            users = _USERS.search(line)
            found.append((address, int(port), users.group(1) if users else ""))
        return found

    def pids(self) -> list[int]:
        """Every process living in this host's namespace: its sshd, its sessions, what they started."""
        listed = _ip("netns", "pids", self.namespace, check=False)
        return [int(word) for word in listed.stdout.split() if word.isdigit()]

    def cut(self) -> None:
        """Pull the cable: from now on every packet to or from this host is silently dropped.

        Done by setting the root-side veth down: the bridge stops forwarding to that port and the host's
        eth0 loses carrier, so both directions drop without a RST or an ICMP error, and established TCP
        connections stay open (they resume after `restore()`, as after a real unplug). `tc netem` is not
        available on every kernel (it is not here), `ip link` always is. What makes it silent rather than
        "No route to host" after ~3 s: the cluster pins permanent ARP entries (root <-> host), so no ARP
        resolution fails and new connects simply time out.
        """
        _ip("link", "set", self.veth_root, "down")

    def restore(self) -> None:
        """Plug the cable back and wait until the bridge forwards to this host again."""
        _ip("link", "set", self.veth_root, "up")
        state = Path(f"/sys/class/net/{self.veth_root}/brport/state")

        def forwarding() -> bool:
            carrier = "LOWER_UP" in _ip("-o", "link", "show", self.veth_root).stdout
            return carrier and state.read_text().strip() == "3"  # BR_STATE_FORWARDING

        wait_until(forwarding, interval=0.02, what=f"{self.veth_root} to forward again")


@dataclass
class Cluster:
    """Hosts on one bridge in the root namespace, and what tests need to ssh into them."""

    suffix: str  # in every name we create (namespaces, links): parallel runs never collide
    root: Path
    bridge: str
    bridge_ip: str
    network: str
    client_key: Path  # authorized on every host, for root
    known_hosts: Path  # every host's key line
    hosts: list[Host] = field(default_factory=list)
    _mac_prefix: str = field(default="", repr=False)
    _namespaces: list[str] = field(default_factory=list, repr=False)  # created by us, so ours to delete
    _links: list[str] = field(default_factory=list, repr=False)

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def capture(self) -> Capture:
        """A capture of every frame between the root namespace (the queen) and any host."""
        return Capture(self.bridge)

    def stop(self) -> None:
        """Kill every process inside the hosts, then delete namespaces, veths and bridge. Never raises."""
        procs = [host.proc for host in self.hosts if host.proc is not None]
        _kill_namespaces(self._namespaces, reap=lambda: [proc.poll() for proc in procs])
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for link in reversed(self._links):  # deleting a veth end deletes its peer in the namespace too
            _quiet("link", "del", link)
        for namespace in self._namespaces:
            _quiet("netns", "del", namespace)
        self._links.clear()
        self._namespaces.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def _namespace_pids(namespace: str) -> list[int]:
    try:
        listed = _ip("netns", "pids", namespace, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(word) for word in listed.stdout.split() if word.isdigit()]


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_namespaces(namespaces: list[str], *, reap: Callable[[], object], grace: float = 3.0) -> None:
    """SIGTERM everything in the namespaces, SIGKILL what is left after `grace` seconds.

    Polled until empty, because a dying sshd session or a daemon's supervisor may spawn a last child;
    `reap` collects our own children (the sshds) so they do not linger as zombies meanwhile.
    """
    def alive() -> list[int]:
        reap()
        return [pid for namespace in namespaces for pid in _namespace_pids(namespace)]

    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        while pids := alive():
            if time.monotonic() > deadline:
                break
            _signal_all(pids, signum)
            time.sleep(0.05)
        else:
            return


def _sshd_config(host_root: Path) -> str:
    return f"""Port {SSH_PORT}
ListenAddress 0.0.0.0
HostKey {host_root / 'host_key'}
PidFile {host_root / 'sshd.pid'}
AuthorizedKeysFile {host_root / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
AllowTcpForwarding yes
ClientAliveInterval 2
ClientAliveCountMax 3
PrintMotd no
LogLevel ERROR
"""


def start_cluster(root: Path, names: list[str]) -> Cluster:
    """Create the bridge and one namespace + sshd per name; cleans up everything it made if a step fails."""
    if not names or len(set(names)) != len(names) or len(names) > MAX_HOSTS:
        raise ValueError(f"need 1 to {MAX_HOSTS} distinct host names, got {names!r}")
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"host name {name!r} must match {_NAME.pattern}")
    binary = sshd_binary()
    assert binary, "sshd is not installed"
    root.mkdir(parents=True, exist_ok=True)
    suffix = secrets.token_hex(3)
    network = _pick_network()
    bridge_ip = str(network.network_address + 1)
    cluster = Cluster(suffix=suffix, root=root, bridge=f"rbbr{suffix}", bridge_ip=bridge_ip,
                      network=str(network), client_key=root / "client_key", known_hosts=root / "known_hosts",
                      _mac_prefix="02:" + ":".join(suffix[i:i + 2] for i in range(0, 6, 2)))
    try:
        _build(cluster, names, binary)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _build(cluster: Cluster, names: list[str], binary: str) -> None:
    prefix = int(cluster.network.split("/")[1])
    bridge_mac = f"{cluster._mac_prefix}:00:01"  # fixed: a bridge otherwise takes its ports' MACs, changing
    _ip("link", "add", cluster.bridge, "address", bridge_mac, "type", "bridge")
    cluster._links.append(cluster.bridge)
    _ip("addr", "add", f"{cluster.bridge_ip}/{prefix}", "dev", cluster.bridge)
    _ip("link", "set", cluster.bridge, "up")
    keygen(cluster.client_key)
    authorized = cluster.client_key.with_suffix(".pub").read_text()
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    base = ipaddress.IPv4Network(cluster.network).network_address
    for i, name in enumerate(names):
        ip, mac = str(base + 2 + i), f"{cluster._mac_prefix}:01:{i:02x}"
        namespace, veth = f"rbee-{cluster.suffix}-{name}", f"rbv{i}{cluster.suffix}"
        _ip("netns", "add", namespace)
        cluster._namespaces.append(namespace)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "address", mac, "netns", namespace)
        cluster._links.append(veth)
        _ip("link", "set", veth, "master", cluster.bridge, "up")
        for args in (("addr", "add", f"{ip}/{prefix}", "dev", "eth0"), ("link", "set", "lo", "up"),
                     ("link", "set", "eth0", "up"), ("route", "add", "default", "via", cluster.bridge_ip)):
            _ip("-n", namespace, *args)
        host_root = cluster.root / name
        host_root.mkdir(parents=True, exist_ok=True)
        cluster.hosts.append(Host(name=name, namespace=namespace, ip=ip, veth_root=veth, port=SSH_PORT,
                                  known_hosts=host_root / "known_hosts", root=host_root, mac=mac))
    _pin_neighbours(cluster, bridge_mac)
    for host in cluster.hosts:
        _start_sshd(host, binary, authorized)
    lines = []
    for host in cluster.hosts:
        _wait_accepting(host)
        key_type, key_b64 = (host.root / "host_key.pub").read_text().split()[:2]
        line = f"{host.ip} {key_type} {key_b64}\n"
        host.known_hosts.write_text(line)
        lines.append(line)
    cluster.known_hosts.write_text("".join(lines))


def _pin_neighbours(cluster: Cluster, bridge_mac: str) -> None:
    """Permanent ARP entries between every pair: a cut host then times out instead of failing ARP.

    Without them a connect to a cut host fails with EHOSTUNREACH after ~3 s of unanswered ARP, which is
    not what a pulled cable behind a switch looks like to the queen.
    """
    for host in cluster.hosts:
        _ip("neigh", "replace", host.ip, "lladdr", host.mac, "dev", cluster.bridge, "nud", "permanent")
        _ip("-n", host.namespace, "neigh", "replace", cluster.bridge_ip, "lladdr", bridge_mac, "dev", "eth0",
            "nud", "permanent")
        for other in cluster.hosts:
            if other is not host:
                _ip("-n", host.namespace, "neigh", "replace", other.ip, "lladdr", other.mac, "dev", "eth0",
                    "nud", "permanent")


def _start_sshd(host: Host, binary: str, authorized: str) -> None:
    keygen(host.root / "host_key")
    (host.root / "authorized_keys").write_text(authorized)
    config = host.root / "sshd_config"
    config.write_text(_sshd_config(host.root))
    with open(host.root / "sshd.log", "wb") as log:
        host.proc = subprocess.Popen(["ip", "netns", "exec", host.namespace, binary, "-D", "-e", "-f", str(config)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)


def _wait_accepting(host: Host) -> None:
    def accepting() -> bool:
        assert host.proc is not None
        if host.proc.poll() is not None:
            raise RuntimeError(f"sshd of {host.name} exited: {(host.root / 'sshd.log').read_text()}")
        try:
            with socket.create_connection((host.ip, host.port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(accepting, interval=0.05, what=f"sshd of {host.name} to accept connections on {host.ip}:22")


class Capture:
    """Every frame seen on one interface (a raw AF_PACKET socket), read by a thread until stopped.

    On the cluster's bridge it sees all traffic between the root namespace and the hosts, not traffic
    between two hosts (that only crosses the bridge's ports: capture on a `Host.veth_root` for it).
    Frames are concatenated into `data`, which stops growing at `limit` bytes (`truncated` is then True).
    """

    def __init__(self, interface: str, *, limit: int = 64 * 1024 * 1024) -> None:
        self.interface = interface
        self.limit = limit
        self.frames = 0
        self.truncated = False
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Capture:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # SO_RCVBUFFORCE: root may exceed rmem_max
        except OSError:
            pass
        sock.bind((self.interface, 0))
        sock.settimeout(0.05)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, name=f"capture-{self.interface}", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._sock is not None
        chunk = bytearray(256 * 1024)  # GSO frames on veth/bridge can be ~64 KB, far over the MTU
        view = memoryview(chunk)
        drain_until: float | None = None
        while True:
            if drain_until is None and self._stop.is_set():
                drain_until = time.monotonic() + 1.0  # read what arrived before stop(), not a busy link forever
            elif drain_until is not None and time.monotonic() > drain_until:
                return
            try:
                size = self._sock.recv_into(chunk)
            except (TimeoutError, socket.timeout, BlockingIOError):
                if drain_until is not None:  # queue empty after stop(): done
                    return
                continue
            except OSError:
                return
            with self._lock:
                self.frames += 1
                if len(self._buffer) + size <= self.limit:
                    self._buffer += view[:size]
                else:
                    self.truncated = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._buffer)

    def contains(self, needle: bytes) -> bool:
        with self._lock:
            return needle in self._buffer

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
