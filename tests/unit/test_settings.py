"""rbee.toml and the daemons' settings (shared/settings.py): every key, bad values, unknown keys, and which of
flag, environment, file and default wins."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from hive.config import HiveConfig
from queen.config import QueenConfig
from queen.prefix_index import RouteGuard
from shared.settings import (
    SETTINGS,
    Effective,
    SettingsError,
    add_flags,
    given_flags,
    read_file,
    resolve,
    setting,
    settings_of,
)

# A valid value other than the default, for every setting.
OTHER = {int: 3, float: 42.5, bool: False, str: "q8_0"}
SPECIAL = {("queen", "host"): "0.0.0.0", ("queen", "port"): 7900, ("queen", "local_hive_port"): 7901,
           ("queen", "worker_progress_timeout"): 30.0, ("queen", "route_guard_ratio"): 3.0,
           ("queen", "tls_cert"): "/etc/rbee/queen.crt", ("queen", "tls_key"): "/etc/rbee/queen.key",
           ("hive", "worker_ctx_size"): 4096, ("hive", "flash_attn"): "on", ("hive", "vram_budget_mb"): 8000}


def other_value(s):
    return SPECIAL.get((s.section, s.key), OTHER[s.kind])


def toml_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else str(value)


def write(tmp_path, text: str):
    path = tmp_path / "rbee.toml"
    path.write_text(text)
    return path


def test_the_declared_defaults_are_the_daemons_own():
    queen, hive = QueenConfig(paths=object()), HiveConfig(paths=object())  # type: ignore[arg-type]
    expected = {
        ("queen", "host"): queen.host, ("queen", "port"): queen.port, ("queen", "local_hive_port"): queen.local_hive_port,
        ("queen", "max_workers_per_hive"): queen.max_workers_per_hive,
        ("queen", "worker_idle_timeout"): queen.worker_idle_timeout_s, ("queen", "worker_slots"): queen.worker_slots,
        ("queen", "worker_progress_timeout"): queen.worker_progress_timeout_s,
        ("queen", "heartbeat_timeout"): queen.heartbeat_timeout_s, ("queen", "cache_routing"): queen.cache_routing,
        ("queen", "models_from_hives"): queen.models_from_hives,
        ("queen", "route_guard_slots"): RouteGuard.abs_slots, ("queen", "route_guard_ratio"): RouteGuard.rel,
        ("queen", "tls_cert"): None, ("queen", "tls_key"): None,
        ("hive", "worker_slots"): hive.worker_slots, ("hive", "worker_ctx_size"): hive.worker_ctx_size,
        ("hive", "worker_stop_timeout"): hive.worker_stop_timeout_s, ("hive", "kv_cache_type"): hive.worker_kv_cache_type,
        ("hive", "flash_attn"): hive.worker_flash_attn, ("hive", "prompt_cache_mb"): hive.prompt_cache_mb,
        ("hive", "vram_budget_mb"): hive.vram_budget_bytes,
    }
    assert {(s.section, s.key): s.default for s in SETTINGS} == expected


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: f"{s.section}.{s.key}")
def test_every_key_of_the_file_is_taken_with_its_line(tmp_path, s):
    value = other_value(s)
    lines = ["# rbee settings", f"[{s.section}]", f"{s.key} = {toml_value(value)}"]
    if s.key == "tls_cert":
        lines.append('tls_key = "/etc/rbee/queen.key"')
    elif s.key == "tls_key":
        lines.append('tls_cert = "/etc/rbee/queen.crt"')
    effective = resolve(s.section, read_file(write(tmp_path, "\n".join(lines) + "\n")))
    assert effective[s.key] == Effective(value, "file", 3)
    assert all(e.source == "default" for k, e in effective.items() if k not in (s.key, "tls_cert", "tls_key"))


def test_no_file_means_every_default(tmp_path):
    effective = resolve("hive", read_file(tmp_path / "rbee.toml"))
    assert {k: e.source for k, e in effective.items()} == {s.key: "default" for s in settings_of("hive")}


@pytest.mark.parametrize("text, words", [
    ("[queen]\n\nworker_slots = 99\n", "rbee.toml, line 3: [queen] worker_slots must be between 1 and 64, not 99."),
    ("[queen]\nport = 70000\n", "line 2: [queen] port must be between 0 and 65535, not 70000."),
    ("[queen]\nworker_idle_timeout = 'soon'\n", "line 2: [queen] worker_idle_timeout must be a number, not 'soon'."),
    ("[queen]\nmax_workers_per_hive = 1.5\n", "line 2: [queen] max_workers_per_hive must be a whole number, not 1.5."),
    ("[queen]\ncache_routing = 'yes'\n", "line 2: [queen] cache_routing must be true or false, not 'yes'."),
    ("[queen]\nworker_progress_timeout = 5\n", "worker_progress_timeout must be at least 12, not 5."),
    ("[hive]\nkv_cache_type = 'q2'\n", "line 2: [hive] kv_cache_type must be one of f16, q8_0, q4_0, not 'q2'."),
    ("[hive]\nslots = 8\n", "line 2: [hive] has no setting 'slots'; it has: worker_slots, worker_ctx_size"),
    ("[queen]\nport = 1\n[hives]\nx = 1\n", "line 3: unknown section [hives]; rbee.toml has [queen] and [hive]."),
    ("port = 7833\n", "line 1: 'port' is outside a section; settings go under [queen] or [hive]."),
    ("[queen\nport = 1\n", "is not valid TOML: Expected ']' at the end of a table declaration (at line 1"),
    ("[hive]\nkv_cache_type = 'q4_0'\nflash_attn = 'off'\n",
     "a q4_0 KV cache needs flash attention (llama.cpp reads a quantized V cache only through it): use --flash-attn "
     "auto or on with --kv-cache-type q4_0, or keep --flash-attn off with --kv-cache-type f16 (kv_cache_type from "
     "file (line 2), flash_attn from file (line 3))."),
    ("[queen]\ntls_cert = '/c.pem'\n", "--tls-cert and --tls-key go together"),
])
def test_a_bad_file_names_the_key_and_the_line(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        file = read_file(path)
        resolve("queen", file)
        resolve("hive", file)
    assert words in err.value.message and "Traceback" not in err.value.message


def test_a_file_that_cannot_be_read_is_said(tmp_path):
    path = tmp_path / "rbee.toml"
    path.write_bytes(b"[queen]\nhost = '\xff'\n")
    with pytest.raises(SettingsError, match="Cannot read .*rbee.toml"):
        read_file(path)


def parser_for(section: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daemon", exit_on_error=False)
    add_flags(parser, section)
    return parser


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path):
    file = read_file(write(tmp_path, "[queen]\nlocal_hive_port = 7001\nworker_idle_timeout = 60\nport = 7002\n"))
    args = parser_for("queen").parse_args(["--port", "7100", "--no-cache-routing"])
    effective = resolve("queen", file, given_flags(args, "queen"), {"RBEE_LOCAL_HIVE_PORT": "7200"})
    assert effective["port"] == Effective(7100, "flag")
    assert effective["cache_routing"] == Effective(False, "flag")
    assert effective["local_hive_port"] == Effective(7200, "env")
    assert effective["worker_idle_timeout"] == Effective(60.0, "file", 3)
    assert effective["max_workers_per_hive"] == Effective(1, "default")
    with pytest.raises(SettingsError, match=r"\$RBEE_LOCAL_HIVE_PORT must be a whole number, not 'x'"):
        resolve("queen", file, {}, {"RBEE_LOCAL_HIVE_PORT": "x"})
    empty = resolve("queen", file, {}, {"RBEE_LOCAL_HIVE_PORT": ""})  # set but empty: as unset
    assert empty["local_hive_port"] == Effective(7001, "file", 2)


@pytest.mark.parametrize("argv, words", [
    (["--worker-slots", "99"], "argument --worker-slots: must be between 1 and 64, not 99"),
    (["--worker-slots", "many"], "argument --worker-slots: must be a whole number, not 'many'"),
    (["--worker-idle-timeout", "-1"], "argument --worker-idle-timeout: must be at least 1, not -1"),
])
def test_a_bad_flag_is_refused_by_the_same_rules(argv, words):
    with pytest.raises(argparse.ArgumentError) as err:
        parser_for("queen").parse_args(argv)
    assert words in str(err.value)


def test_help_says_the_default_and_the_file_key():
    text = " ".join(parser_for("hive").format_help().split())
    assert "rbee.toml [hive] worker_ctx_size" in text and "(default 2048;" in text
    assert setting("hive", "kv_cache_type").choices == ("f16", "q8_0", "q4_0")
    assert all(dataclasses.is_dataclass(s) for s in SETTINGS)
