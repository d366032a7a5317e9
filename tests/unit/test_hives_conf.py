"""hives.conf (OpenSSH-config style): parsing, validation with messages that say where, and importing hosts
from an OpenSSH config."""

from __future__ import annotations

import pytest

from queen.errors import QueenError
from queen.hives.remote.hives_conf import (
    DEFAULT_INSTALL_DIR,
    HivesConfError,
    RemoteHost,
    import_ssh_config,
    load_hives_conf,
    parse_ssh_style,
)
from shared.ports import DEFAULT_HIVE_PORT


def write(tmp_path, text, name="hives.conf"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- parse_ssh_style ---------------------------------------------------------------------------------

def test_blocks_in_file_order_with_lower_cased_keywords_and_host_line_numbers():
    text = (
        "# a comment line\n"
        "\n"
        "Host gpu1\n"
        "    HostName 10.0.0.1   # a trailing comment\n"
        "    HIVEPORT=9000\n"
        "    User = me\n"
        "Host a b\n"
        '    IdentityFile "~/.ssh/my key"\n'
    )
    assert parse_ssh_style(text, "conf") == [
        (["gpu1"], {"hostname": "10.0.0.1", "hiveport": "9000", "user": "me"}, 3),
        (["a", "b"], {"identityfile": "~/.ssh/my key"}, 7),
    ]


def test_first_value_wins_as_in_openssh():
    blocks = parse_ssh_style("Host x\n  Port 1\n  port 2\n", "conf")
    assert blocks == [(["x"], {"port": "1"}, 1)]


def test_options_before_any_host_are_ignored_and_a_match_block_names_no_host():
    text = "User everyone\nHost x\n  Port 1\nMatch host y\n  User them\nHost z\n"
    # the Match block's options stay in it (no patterns, so no host gets them), not in the Host above
    assert parse_ssh_style(text, "conf") == [(["x"], {"port": "1"}, 2), ([], {"user": "them"}, 4), (["z"], {}, 6)]


@pytest.mark.parametrize("line", ["Host", "!!! what", "Host x\n  Port"])
def test_a_line_that_is_not_keyword_value_names_source_and_line(line):
    with pytest.raises(HivesConfError) as err:
        parse_ssh_style(line, "/etc/some.conf")
    number = line.count("\n") + 1
    assert err.value.message == (f"/etc/some.conf, line {number}: expected 'Keyword value'; is this an "
                                 "OpenSSH config?")  # the line itself is never repeated


# --- load_hives_conf -----------------------------------------------------------------------------------

def test_missing_file_means_no_remote_hives(tmp_path):
    assert load_hives_conf(tmp_path / "nope.conf") == {}


def test_a_bare_host_gets_every_default(tmp_path):
    hosts = load_hives_conf(write(tmp_path, "Host gpu1\n"))
    assert hosts == {"gpu1": RemoteHost(alias="gpu1", hostname="gpu1")}
    host = hosts["gpu1"]
    assert (host.port, host.user, host.identity_file) == (22, None, None)
    assert host.hive_port == DEFAULT_HIVE_PORT == 7835
    assert host.install_dir == DEFAULT_INSTALL_DIR == "~/.local/share/rbee-hive"
    assert (host.python, host.known_hosts, host.strict_host_key_checking) == ("python3", "~/.ssh/known_hosts", "yes")
    assert host.where == "gpu1:22"


def test_every_keyword_is_read(tmp_path):
    conf = write(tmp_path, """
Host gpu1
    HostName 192.168.1.20
    Port 2222
    User me
    IdentityFile ~/.ssh/id_ed25519
    HivePort 9000
    InstallDir /opt/rbee   # on the remote
    Python python3.12
    UserKnownHostsFile ~/.ssh/rbee_known_hosts
    StrictHostKeyChecking Accept-New

host gpu2
    hostname=gpu2.lan
""")
    hosts = load_hives_conf(conf)
    assert list(hosts) == ["gpu1", "gpu2"]
    assert hosts["gpu1"] == RemoteHost(
        alias="gpu1", hostname="192.168.1.20", port=2222, user="me", identity_file="~/.ssh/id_ed25519",
        hive_port=9000, install_dir="/opt/rbee", python="python3.12", known_hosts="~/.ssh/rbee_known_hosts",
        strict_host_key_checking="accept-new")
    assert isinstance(hosts["gpu1"].port, int) and isinstance(hosts["gpu1"].hive_port, int)
    assert hosts["gpu1"].where == "me@192.168.1.20:2222"
    assert hosts["gpu1"].to_dict()["hive_port"] == 9000 and hosts["gpu1"].to_dict()["alias"] == "gpu1"
    assert hosts["gpu2"].hostname == "gpu2.lan" and hosts["gpu2"].port == 22


@pytest.mark.parametrize("keyword, value", [
    ("Port", "70000"), ("Port", "abc"), ("Port", "0"), ("Port", "-1"), ("HivePort", "65536"), ("HivePort", "x1"),
])
def test_a_bad_port_names_the_keyword_the_alias_and_the_value(tmp_path, keyword, value):
    conf = write(tmp_path, f"Host gpu1\n    {keyword} {value}\n")
    with pytest.raises(HivesConfError) as err:
        load_hives_conf(conf)
    assert err.value.message == (f"{conf}: {keyword} of gpu1 must be a port number (1-65535), not {value!r}.")


@pytest.mark.parametrize("port", ["1", "65535"])
def test_the_ends_of_the_port_range_are_fine(tmp_path, port):
    hosts = load_hives_conf(write(tmp_path, f"Host gpu1\n    Port {port}\n    HivePort {port}\n"))
    assert hosts["gpu1"].port == hosts["gpu1"].hive_port == int(port)


def test_an_unknown_keyword_is_refused_with_the_known_ones(tmp_path):
    conf = write(tmp_path, "Host gpu1\n    HostName x\n\nHost gpu2\n    ForwardAgent yes\n    Color blue\n")
    with pytest.raises(HivesConfError) as err:
        load_hives_conf(conf)
    message = err.value.message
    assert message.startswith(f"{conf}, line 4: unknown keyword 'color' for gpu2. Known: ")
    assert "hiveport" in message and "stricthostkeychecking" in message


def test_any_is_reserved_for_placement(tmp_path):
    conf = write(tmp_path, "Host any\n    HostName 10.0.0.9\n")
    with pytest.raises(HivesConfError, match="'any' means \"wherever there is room\" to rbee"):
        load_hives_conf(conf)
    report = import_ssh_config(write(tmp_path, "Host any\n", name="ssh_config"), tmp_path / "new.conf", 7835)
    assert report.added == [] and report.skipped == [("any", "not usable as a hive alias")]


def test_localhost_is_the_queens_own_hive(tmp_path):
    conf = write(tmp_path, "Host gpu1\nHost localhost\n    HostName 127.0.0.1\n")
    with pytest.raises(HivesConfError) as err:
        load_hives_conf(conf)
    assert err.value.message == f"{conf}, line 2: 'localhost' is the queen's own hive; pick another alias."


@pytest.mark.parametrize("patterns", ["gpu1 gpu2", "gpu*", "me@box", "-x"])
def test_a_host_line_names_exactly_one_usable_alias(tmp_path, patterns):
    conf = write(tmp_path, f"Host {patterns}\n    HostName x\n")
    with pytest.raises(HivesConfError) as err:
        load_hives_conf(conf)
    assert err.value.message.startswith(f"{conf}, line 1: a hive's Host line names exactly one alias")
    assert err.value.message.endswith(f"not {patterns!r}.")


def test_a_match_block_is_not_a_hive(tmp_path):
    with pytest.raises(HivesConfError, match="names exactly one alias"):
        load_hives_conf(write(tmp_path, "Match host x\n    User me\n"))


@pytest.mark.parametrize("value, expected", [("yes", "yes"), ("YES", "yes"), ("accept-new", "accept-new")])
def test_strict_host_key_checking_accepts_yes_and_accept_new(tmp_path, value, expected):
    hosts = load_hives_conf(write(tmp_path, f"Host gpu1\n    StrictHostKeyChecking {value}\n"))
    assert hosts["gpu1"].strict_host_key_checking == expected


@pytest.mark.parametrize("value", ["no", "off", "ask"])
def test_strict_host_key_checking_never_turns_checking_off(tmp_path, value):
    conf = write(tmp_path, f"Host gpu1\n    StrictHostKeyChecking {value}\n")
    with pytest.raises(HivesConfError) as err:
        load_hives_conf(conf)
    assert err.value.message == f"{conf}: StrictHostKeyChecking of gpu1 must be yes or accept-new, not {value!r}."


def test_the_error_is_a_queen_error_with_its_own_code(tmp_path):
    with pytest.raises(HivesConfError) as err:
        load_hives_conf(write(tmp_path, "Host localhost\n"))
    assert isinstance(err.value, QueenError)
    assert err.value.code == "HIVES_CONF" and err.value.status == 400


# --- import_ssh_config -----------------------------------------------------------------------------------

SSH_CONFIG = """
Host *
    ServerAliveInterval 30

Host gpu1
    HostName 10.0.0.1

Host box web-?
    HostName 10.0.0.9
    Port 2200
    User admin
    IdentityFile ~/.ssh/box_key

Host localhost me@odd !neg
    User x

Host tower
    Port notanumber

Host box
    HostName elsewhere
"""


def test_import_adds_new_hosts_and_says_why_others_were_skipped(tmp_path):
    ssh_config = write(tmp_path, SSH_CONFIG, name="ssh_config")
    existing = "# my hives\nHost gpu1\n    HostName 192.168.1.20\n    HivePort 9000\n"
    hives_conf = write(tmp_path, existing)

    report = import_ssh_config(ssh_config, hives_conf, default_hive_port=7900)

    assert report.added == ["box"]
    assert report.skipped == [
        ("*", "wildcard"),
        ("gpu1", "already in hives.conf"),
        ("web-?", "wildcard"),
        ("localhost", "not usable as a hive alias"),
        ("me@odd", "not usable as a hive alias"),
        ("!neg", "wildcard"),
        ("tower", "its Port is not a port number"),  # an entry hives.conf could not hold as it is
        ("box", "already in hives.conf"),  # a second block for the same alias
    ]
    text = hives_conf.read_text()
    assert text.startswith(existing)  # what was there is kept as it was
    hosts = load_hives_conf(hives_conf)
    assert list(hosts) == ["gpu1", "box"]
    assert hosts["gpu1"] == RemoteHost(alias="gpu1", hostname="192.168.1.20", hive_port=9000)  # not overwritten
    assert hosts["box"] == RemoteHost(alias="box", hostname="10.0.0.9", port=2200, user="admin",
                                      identity_file="~/.ssh/box_key", hive_port=7900)


def test_import_keeps_a_blank_line_between_old_and_new(tmp_path):
    ssh_config = write(tmp_path, "Host new\n", name="ssh_config")
    hives_conf = write(tmp_path, "Host old")  # no newline at the end
    import_ssh_config(ssh_config, hives_conf, default_hive_port=7835)
    assert hives_conf.read_text() == "Host old\n\nHost new\n    HostName new\n    Port 22\n    HivePort 7835\n"


def test_import_creates_hives_conf_when_there_is_none(tmp_path):
    ssh_config = write(tmp_path, "Host new\n    User me\n", name="ssh_config")
    hives_conf = tmp_path / "config" / "hives.conf"
    report = import_ssh_config(ssh_config, hives_conf, default_hive_port=7835)
    assert report.added == ["new"] and report.skipped == []
    assert load_hives_conf(hives_conf) == {"new": RemoteHost(alias="new", hostname="new", user="me")}


def test_import_with_nothing_new_leaves_hives_conf_alone(tmp_path):
    ssh_config = write(tmp_path, "Host *\n    User me\nHost gpu1\n", name="ssh_config")
    hives_conf = write(tmp_path, "Host gpu1\n")
    report = import_ssh_config(ssh_config, hives_conf, default_hive_port=7835)
    assert report.added == [] and [why for _, why in report.skipped] == ["wildcard", "already in hives.conf"]
    assert hives_conf.read_text() == "Host gpu1\n"


def test_import_refuses_a_broken_hives_conf_before_touching_it(tmp_path):
    ssh_config = write(tmp_path, "Host new\n", name="ssh_config")
    hives_conf = write(tmp_path, "Host localhost\n")
    with pytest.raises(HivesConfError, match="'localhost' is the queen's own hive"):
        import_ssh_config(ssh_config, hives_conf, default_hive_port=7835)
    assert hives_conf.read_text() == "Host localhost\n"


def test_import_from_a_missing_ssh_config_is_a_clear_404(tmp_path):
    missing = tmp_path / "no_ssh_config"
    with pytest.raises(HivesConfError) as err:
        import_ssh_config(missing, tmp_path / "hives.conf", default_hive_port=7835)
    assert err.value.message == f"The OpenSSH config {missing} does not exist."
    assert err.value.code == "SSH_CONFIG_MISSING" and err.value.status == 404
    assert not (tmp_path / "hives.conf").exists()


def test_a_file_that_is_not_an_ssh_config_is_refused_without_repeating_it(tmp_path):
    passwd = write(tmp_path, "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
                   name="passwd")
    hives_conf = tmp_path / "hives.conf"
    with pytest.raises(HivesConfError) as err:
        import_ssh_config(passwd, hives_conf, default_hive_port=7835)
    assert "/bin/bash" not in err.value.message and ":x:0:0" not in err.value.message
    assert "line 1" in err.value.message
    assert not hives_conf.exists()
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HivesConfError, match="is not a text file"):
        import_ssh_config(binary, hives_conf, default_hive_port=7835)


def test_values_that_hives_conf_could_not_hold_are_skipped(tmp_path):
    ssh_config = write(tmp_path, "Host evil\n  HostName a b;rm -rf ~\nHost ok\n  HostName 10.0.0.2\n", name="c")
    hives_conf = tmp_path / "hives.conf"
    report = import_ssh_config(ssh_config, hives_conf, default_hive_port=7835)
    assert report.added == ["ok"] and report.skipped == [("evil", "its HostName is not a host name or address")]
    assert "rm -rf" not in hives_conf.read_text()


def test_hive_port_zero_means_any_free_port(tmp_path):
    from queen.hives.remote.hives_conf import load_hives_conf

    conf = tmp_path / "hives.conf"
    conf.write_text("Host gpu1\n    HostName 10.0.0.5\n    HivePort 0\n")
    assert load_hives_conf(conf)["gpu1"].hive_port == 0
