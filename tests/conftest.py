"""Every test runs with its own RBEE_HOME, so nothing reads or writes the machine's real rbee config.

Tiers: each test is marked `unit`, `integration` or `tui` by its folder, and `slow` when it (or any fixture
it uses) requests the `slow` fixture: everything that starts a process (a daemon, llama.cpp, sshd, a
console script). `pytest -m "not slow"` is the fast tier; a test outside it that starts a process fails,
naming the fixture to request, so the tier cannot quietly grow slow.
"""

from __future__ import annotations

import subprocess

import pytest

# no process a test run started outlives it, however the run ends (a hook: a later `def` of one of these
# names here would replace it)
from tests.support.run_reaper import pytest_configure, pytest_runtest_setup, pytest_unconfigure  # noqa: F401

_ISOLATED_VARS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "HF_ENDPOINT", "HF_HOME", "HF_TOKEN")
_TIERS = ("unit", "integration", "tui")


@pytest.fixture(autouse=True)
def rbee_home(tmp_path, monkeypatch):
    home = tmp_path / "rbee-home"
    monkeypatch.setenv("RBEE_HOME", str(home))
    for var in _ISOLATED_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def slow() -> None:
    """Request this (in a test or in a fixture that starts processes) to put the test in the slow tier."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = next((part for part in item.path.parts[::-1] if part in _TIERS), None)
        if tier is not None:
            item.add_marker(tier)
        if "slow" in getattr(item, "fixturenames", ()):
            item.add_marker("slow")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A fast-tier test (its fixtures included) may not start a process."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    original = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def refuse(self, args, *rest, **kwargs):
        raise RuntimeError(f"{item.nodeid} starts a process ({args!r}) but is in the fast tier: request the "
                           f"`slow` fixture in the test, or in the fixture that starts it (tests/conftest.py)")

    subprocess.Popen._execute_child = refuse  # type: ignore[attr-defined]
    try:
        yield
    finally:
        subprocess.Popen._execute_child = original  # type: ignore[attr-defined]
