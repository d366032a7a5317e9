"""Versions and protocols (shared/version.py): what daemons say of themselves, and whom the queen schedules on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from queen.worker_registry import WorkerRegistry, WorkerStatus
from shared import __version__
from shared.heartbeat import parse_heartbeat
from shared.version import OLDEST_PROTOCOL, PROTOCOL, THIS, VERSION, PeerVersion, incompatibility

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_and_the_code_agree_on_the_version():
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared and declared.group(1) == __version__ == VERSION


@pytest.mark.parametrize("said, peer", [
    ({"version": VERSION, "protocol": PROTOCOL}, THIS),
    ({}, PeerVersion(None, 0)),  # from before versions were told
    (None, PeerVersion(None, 0)),
    ({"version": "", "protocol": "1"}, PeerVersion(None, 0)),  # not what a daemon says: as unknown
    ({"version": "9.0.0", "protocol": True}, PeerVersion("9.0.0", 0)),
    ({"version": "9.0.0", "protocol": PROTOCOL + 1}, PeerVersion("9.0.0", PROTOCOL + 1)),
])
def test_what_a_daemon_says_of_itself(said, peer):
    assert PeerVersion.of(said) == peer


def test_which_peers_the_queen_speaks_to_and_what_it_says_otherwise():
    assert THIS.compatible and not THIS.skewed
    older = PeerVersion(None, OLDEST_PROTOCOL)
    assert older.compatible and older.skewed and incompatibility("Hive gpu1", older, fix="x") is None
    assert older.to_dict() == {"version": None, "protocol": OLDEST_PROTOCOL, "skew": True, "compatible": True}
    newer = PeerVersion("9.0.0", PROTOCOL + 1)
    message = incompatibility("Hive gpu1", newer, fix="rbee hive install gpu1")
    assert message == (f"Hive gpu1 runs rbee 9.0.0 (protocol {PROTOCOL + 1}) and this queen runs rbee {VERSION} "
                       f"(protocol {PROTOCOL}): they cannot work together, so nothing is scheduled there; upgrade "
                       "this machine's rbee (`git pull && ./bootstrap.sh`, then `rbee queen restart`).")
    ancient = PeerVersion("0.0.1", OLDEST_PROTOCOL - 1)
    assert "run `rbee hive install gpu1`" in incompatibility("Hive gpu1", ancient, fix="rbee hive install gpu1")


def beat(worker_id: str, **said) -> dict:
    return {"worker_id": worker_id, "hive_id": "gpu1", "url": f"http://127.0.0.1:1/{worker_id}", "model": "m",
            "state": "ready", **said}


def test_a_worker_of_another_protocol_is_never_scheduled_and_says_why():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    same = registry.heartbeat(parse_heartbeat(beat("same", version=VERSION, protocol=PROTOCOL)))
    old = registry.heartbeat(parse_heartbeat(beat("old")))
    new = registry.heartbeat(parse_heartbeat(beat("new", version="9.0.0", protocol=PROTOCOL + 1)))
    assert same.state is WorkerStatus.READY and same.to_dict()["skew"] is False and same.to_dict()["problem"] is None
    assert old.state is WorkerStatus.READY and old.to_dict()["skew"] is True  # an older one, still spoken to
    assert new.state is WorkerStatus.INCOMPATIBLE and not new.alive and new.free_slots == 0
    said = new.to_dict()
    assert said["compatible"] is False and "Worker new runs rbee 9.0.0" in said["problem"]
    same.last_used, old.last_used = 2.0, 1.0
    picked = [registry.with_free_slot("m", None)]
    registry.lease(picked[0], "job-1")
    picked.append(registry.with_free_slot("m", None))
    registry.lease(picked[1], "job-2")
    assert picked == [old, same] and registry.with_free_slot("m", None) is None  # never `new`
    registry.heartbeat(parse_heartbeat(beat("new", version=VERSION, protocol=PROTOCOL)))  # upgraded in place
    assert new.state is WorkerStatus.READY and new.to_dict()["problem"] is None
