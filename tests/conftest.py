"""Every test runs with its own RBEE_HOME, so nothing reads or writes the machine's real rbee config."""

from __future__ import annotations

import pytest

_ISOLATED_VARS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "HF_ENDPOINT", "HF_HOME", "HF_TOKEN")


@pytest.fixture(autouse=True)
def rbee_home(tmp_path, monkeypatch):
    home = tmp_path / "rbee-home"
    monkeypatch.setenv("RBEE_HOME", str(home))
    for var in _ISOLATED_VARS:
        monkeypatch.delenv(var, raising=False)
    return home
