"""The queen's record of its remote hives: one token each, owner-only, revocable."""

from __future__ import annotations

import pytest

from queen.errors import QueenError
from queen.hives.remote.store import RemoteHiveStore


def test_tokens_are_per_hive_private_and_revocable(tmp_path):
    store = RemoteHiveStore(tmp_path)
    a, b = store.issue_token("a"), store.issue_token("b")
    assert a != b and len(a) >= 40
    assert oct(store.path.stat().st_mode)[-3:] == "600"
    store.set_keep_running("a", True)
    again = RemoteHiveStore(tmp_path)  # what a restarted queen reads
    assert again.token("a") == a and again.to_keep_running() == ["a"]
    again.revoke("a")
    assert RemoteHiveStore(tmp_path).token("a") is None and RemoteHiveStore(tmp_path).token("b") == b
    assert store.issue_token("b") != b  # a reinstall gets a new one


def test_a_damaged_file_is_reported_not_overwritten(tmp_path):
    (tmp_path / "remote-hives.json").write_text("{not json")
    with pytest.raises(QueenError, match="unreadable"):
        RemoteHiveStore(tmp_path).token("a")
    assert (tmp_path / "remote-hives.json").read_text() == "{not json"
