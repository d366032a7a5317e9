"""A queen beyond loopback: HTTPS with the certificate `rbee queen tls-init` makes, `rbee` checking it by a
pinned fingerprint or a CA file, clear errors for a wrong pin and for plain HTTP, and a queen that refuses
to listen beyond loopback in clear text unless told to."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import urllib.request

import pytest

from tests.support.keeper import RBEE, Keeper, json_lines, running_keeper
from tests.support.processes import BIN, daemon_env, start_queen


@pytest.fixture
def keeper(tmp_path, slow):
    with running_keeper(tmp_path / "home") as keeper:
        yield keeper


def rbee(keeper: Keeper, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([RBEE, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**keeper.env, **env})


def test_https_queen_checked_by_pin_or_ca(keeper):
    made = keeper("--json", "queen", "tls-init")
    assert made.returncode == 0, made.stderr
    result = json_lines(made.stdout)[-1]
    cert, key, sha = result["certificate"], result["key"], result["fingerprint"]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(sha) == 95  # 32 bytes as AB:CD:…
    assert "127.0.0.1" in result["addresses"] and "localhost" in result["names"]
    again = keeper("queen", "tls-init")
    assert again.returncode == 1 and "exists" in again.stderr and sha in again.stderr  # never replaced by accident

    queen = start_queen(keeper.home, "--tls-cert", cert, "--tls-key", key)
    try:
        assert queen.url.startswith("https://127.0.0.1:")
        https = {"RBEE_QUEEN_URL": queen.url}
        # on this machine: the certificate tls-init made here is pinned by itself
        answer = rbee(keeper, "infer", "--max-tokens", "4", "hi", **https)
        assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr  # workers reach it over loopback
        assert rbee(keeper, "status", **https, RBEE_QUEEN_FINGERPRINT=sha).returncode == 0
        assert rbee(keeper, "--queen-ca", cert, "status", **https).returncode == 0
        wrong = "AA:" * 31 + "AA"
        refused = rbee(keeper, "--queen-fingerprint", wrong, "status", **https)
        assert refused.returncode != 0 and "is not the one pinned" in refused.stderr and sha in refused.stderr
        assert "Traceback" not in refused.stderr
        plain = rbee(keeper, "--no-autostart", "status", RBEE_QUEEN_URL=queen.url.replace("https:", "http:"))
        assert plain.returncode != 0 and "Traceback" not in plain.stderr
        context = ssl.create_default_context(cafile=cert)  # what curl --cacert and the API clients do
        with urllib.request.urlopen(queen.url + "/health", context=context, timeout=5) as resp:
            assert resp.status == 200
    finally:
        queen.stop(30)


def test_beyond_loopback_only_with_tls_or_when_told(tmp_path, slow):
    home = tmp_path / "home"
    refused = subprocess.run([str(BIN / "queen-rbee"), "--host", "0.0.0.0", "--port", "0"], capture_output=True,
                             text=True, timeout=60, env=daemon_env(home))
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0 without TLS" in refused.stderr
    assert "rbee queen tls-init" in refused.stderr and "--insecure-http" in refused.stderr
    half = subprocess.run([str(BIN / "queen-rbee"), "--tls-cert", "x.pem"], capture_output=True, text=True,
                          timeout=60, env=daemon_env(home))
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr
    missing = subprocess.run([str(BIN / "queen-rbee"), "--tls-cert", "x.pem", "--tls-key", "y.pem"],
                             capture_output=True, text=True, timeout=60, env=daemon_env(home))
    assert missing.returncode == 2 and "No such file: x.pem" in missing.stderr
    queen = start_queen(home, "--host", "0.0.0.0", "--insecure-http")
    try:
        assert queen.health() is not None
    finally:
        queen.stop(30)
