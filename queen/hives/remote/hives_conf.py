"""hives.conf: the remote machines the queen can install hives on, in OpenSSH-config style.

    Host gpu1
        HostName 192.168.1.20
        Port 22
        User me
        IdentityFile ~/.ssh/id_ed25519
        HivePort 7835
        InstallDir ~/.local/share/rbee-hive   # on the remote
        Python python3                        # the remote interpreter to build the venv with
        UserKnownHostsFile ~/.ssh/known_hosts
        StrictHostKeyChecking yes             # or accept-new: trust a host's key the first time

Keywords are case-insensitive, `Keyword value` or `Keyword=value`, `#` starts a comment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from queen.errors import QueenError
from shared.operations import ANY_HIVE, LOCAL_HIVE
from shared.ports import DEFAULT_HIVE_PORT, valid_port

DEFAULT_INSTALL_DIR = "~/.local/share/rbee-hive"
KEYS = {
    "hostname": "hostname", "port": "port", "user": "user", "identityfile": "identity_file",
    "hiveport": "hive_port", "installdir": "install_dir", "python": "python",
    "userknownhostsfile": "known_hosts", "stricthostkeychecking": "strict_host_key_checking",
}
ALIAS = re.compile(r"[A-Za-z0-9][\w.-]*")


class HivesConfError(QueenError):
    title = "hives.conf problem"
    code = "HIVES_CONF"


@dataclass(frozen=True)
class RemoteHost:
    alias: str
    hostname: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    hive_port: int = DEFAULT_HIVE_PORT
    install_dir: str = DEFAULT_INSTALL_DIR
    python: str = "python3"
    known_hosts: str = "~/.ssh/known_hosts"
    strict_host_key_checking: str = "yes"  # yes | accept-new

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.hostname}:{self.port}"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def port_number(text: str) -> int | None:
    """The TCP port a config value names (1-65535), or None."""
    if not (text.isascii() and text.isdigit()) or not valid_port(int(text)):
        return None
    return int(text)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HivesConfError(f"{path} is not a text file, so not an OpenSSH config.") from None
    except OSError as exc:
        raise HivesConfError(f"Cannot read {path}: {exc.strerror}.", code="SSH_CONFIG_UNREADABLE") from None


def parse_ssh_style(text: str, source: str) -> list[tuple[list[str], dict[str, str], int]]:
    """[(host patterns, {keyword: value}, line)] in file order; keywords lower-cased."""
    blocks: list[tuple[list[str], dict[str, str], int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"(\w+)\s*(?:=\s*|\s+)(.+)", line)
        if not m:
            # the line itself is not repeated: the file may be anything (a path typed by mistake)
            raise HivesConfError(f"{source}, line {number}: expected 'Keyword value'; is this an OpenSSH config?")
        key, value = m.group(1).lower(), m.group(2).strip().strip('"')
        if key == "host":
            blocks.append((value.split(), {}, number))
        elif key == "match":
            blocks.append(([], {}, number))  # Match blocks are not host aliases; their options are ignored
        elif blocks:
            blocks[-1][1].setdefault(key, value)  # OpenSSH: the first value wins
    return blocks


def load_hives_conf(path: Path) -> dict[str, RemoteHost]:
    if not path.exists():
        return {}
    hosts: dict[str, RemoteHost] = {}
    for patterns, options, line in parse_ssh_style(_read_text(path), str(path)):
        if len(patterns) != 1 or not ALIAS.fullmatch(patterns[0]):
            raise HivesConfError(f"{path}, line {line}: a hive's Host line names exactly one alias "
                                 f"(letters, digits, '.', '_', '-'), not {' '.join(patterns)!r}.")
        alias = patterns[0]
        if alias == LOCAL_HIVE:
            raise HivesConfError(f"{path}, line {line}: 'localhost' is the queen's own hive; pick another alias.")
        if alias == ANY_HIVE:
            raise HivesConfError(f"{path}, line {line}: '{ANY_HIVE}' means \"wherever there is room\" to rbee; "
                                 "pick another alias.")
        unknown = sorted(set(options) - set(KEYS))
        if unknown:
            raise HivesConfError(f"{path}, line {line}: unknown keyword '{unknown[0]}' for {alias}. "
                                 f"Known: {', '.join(sorted(KEYS))}.")
        fields = {KEYS[k]: v for k, v in options.items()}
        for key, keyword in (("port", "Port"), ("hive_port", "HivePort")):
            if key in fields:
                raw = fields[key]
                fields[key] = 0 if (key == "hive_port" and raw == "0") else port_number(raw)  # 0: any free port
                if fields[key] is None:
                    raise HivesConfError(f"{path}: {keyword} of {alias} must be a port number (1-65535), "
                                         f"not {raw!r}.")
        shk = fields.get("strict_host_key_checking", "yes").lower()
        if shk not in ("yes", "accept-new"):
            raise HivesConfError(f"{path}: StrictHostKeyChecking of {alias} must be yes or accept-new, not {shk!r}.")
        fields["strict_host_key_checking"] = shk
        hosts[alias] = RemoteHost(alias=alias, hostname=fields.pop("hostname", alias), **fields)
    return hosts


def append_hosts(path: Path, hosts: list[RemoteHost]) -> None:
    """Add hosts at the end of hives.conf, keeping what is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for h in hosts:
        lines += [f"Host {h.alias}", f"    HostName {h.hostname}", f"    Port {h.port}"]
        if h.user:
            lines.append(f"    User {h.user}")
        if h.identity_file:
            lines.append(f"    IdentityFile {h.identity_file}")
        lines += [f"    HivePort {h.hive_port}", ""]
    existing = path.read_text() if path.exists() else ""
    if existing and not existing.endswith("\n\n"):
        existing += "\n" if existing.endswith("\n") else "\n\n"
    path.write_text(existing + "\n".join(lines))


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (pattern, why)


_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_%-]*")
_USER = re.compile(r"[A-Za-z0-9_][\w.@-]*")


def _unusable(options: dict[str, str]) -> str | None:
    """Why a host's options cannot go into hives.conf as they are (nothing of the values is repeated)."""
    if "hostname" in options and not _HOSTNAME.fullmatch(options["hostname"]):
        return "its HostName is not a host name or address"
    if "user" in options and not _USER.fullmatch(options["user"]):
        return "its User is not a user name"
    if port_number(options.get("port", "22")) is None:
        return "its Port is not a port number"
    if any(ord(c) < 32 for c in options.get("identityfile", "")):
        return "its IdentityFile is not a path"
    return None


def import_ssh_config(ssh_config: Path, hives_conf: Path, default_hive_port: int) -> ImportReport:
    if not ssh_config.exists():
        raise HivesConfError(f"The OpenSSH config {ssh_config} does not exist.", code="SSH_CONFIG_MISSING",
                             status=404)
    existing = load_hives_conf(hives_conf)
    report = ImportReport()
    new: list[RemoteHost] = []
    for patterns, options, _ in parse_ssh_style(_read_text(ssh_config), str(ssh_config)):
        for pattern in patterns:
            if any(c in pattern for c in "*?!"):
                report.skipped.append((pattern, "wildcard"))
            elif not ALIAS.fullmatch(pattern) or pattern in (LOCAL_HIVE, ANY_HIVE):
                report.skipped.append((pattern, "not usable as a hive alias"))
            elif pattern in existing or any(h.alias == pattern for h in new):
                report.skipped.append((pattern, "already in hives.conf"))
            elif (why := _unusable(options)) is not None:
                report.skipped.append((pattern, why))
            else:
                new.append(RemoteHost(alias=pattern, hostname=options.get("hostname", pattern),
                                      port=int(options.get("port", "22")), user=options.get("user"),
                                      identity_file=options.get("identityfile"), hive_port=default_hive_port))
                report.added.append(pattern)
    if new:
        append_hosts(hives_conf, new)
    return report
