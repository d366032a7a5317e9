"""The settings of the queen and the hives, and `rbee.toml`, where a user makes them stick.

Each setting is declared once here: its section, type, default, bounds and flag. A daemon's command line is
built from the declarations, and each value comes from the first of: a flag given, the daemon's
environment variable (where it has one), `rbee.toml` in the config directory, the default. Bad values name
what was wrong and where (the flag, or the key and its line in the file), from one validator for both.
The file is TOML (read with the standard library's tomllib):

    [queen]
    worker_idle_timeout = 600
    [hive]
    worker_slots = 8
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 takes the same parser from PyPI
    import tomli as tomllib

from shared.errors import RbeeError
from shared.kv_cache import FLASH_ATTN_DEFAULT, KV_CACHE_DEFAULT, MAX_SLOTS, START_SLOTS, kv_cache_problem
from shared.operations import FLASH_ATTN_MODES, KV_CACHE_TYPES
from shared.ports import DEFAULT_QUEEN_PORT

FILE_NAME = "rbee.toml"
SECTIONS = ("queen", "hive")


class SettingsError(RbeeError):
    code = "BAD_SETTING"
    status = 400


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    kind: type  # int, float, bool or str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None is a value (unset: "decide by yourself")
    env: str | None = None  # an environment variable that sets it too
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value, validated (an int for a float is fine); raises ValueError saying what is wrong."""
        if value is None and self.optional:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, not {value!r}")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind is int and
                                                                                 not isinstance(value, int)):
                raise ValueError(f"must be {'a whole number' if self.kind is int else 'a number'}, not {value!r}")
            value = self.kind(value)
            if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
                raise ValueError(f"must be {self._bounds()}, not {value if self.kind is int else f'{value:g}'}")
            return value
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a non-empty string, not {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, not {value!r}")
        return value

    def _bounds(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum:g} and {self.maximum:g}"
        return f"at least {self.minimum:g}" if self.minimum is not None else f"at most {self.maximum:g}"

    def parse_text(self, text: str) -> Any:
        """A flag's or an environment variable's text, as the setting's type."""
        if self.kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"must be true or false, not {text!r}")
            return lowered in ("1", "true", "yes")
        if self.kind in (int, float):
            try:
                return self.kind(text)
            except ValueError:
                raise ValueError(f"must be {'a whole number' if self.kind is int else 'a number'}, "
                                 f"not {text!r}") from None
        return text


def _s(section: str, key: str, kind: type, default: Any, help: str, **more: Any) -> Setting:
    return Setting(section, key, kind, default, help, **more)


SETTINGS: tuple[Setting, ...] = (
    _s("queen", "host", str, "127.0.0.1", "address to listen on (beyond loopback it needs TLS: tls_cert, tls_key)"),
    _s("queen", "port", int, DEFAULT_QUEEN_PORT, "port for rbee and the APIs (0: one the OS picks)",
       minimum=0, maximum=65535),
    _s("queen", "local_hive_port", int, 0, "port for the local hive it starts (0: a free one)", minimum=0,
       maximum=65535, env="RBEE_LOCAL_HIVE_PORT"),
    _s("queen", "max_workers_per_hive", int, 1, "workers per model on one hive (their slots serve concurrent "
       "requests; more wait for a free slot)", minimum=1, maximum=64),
    _s("queen", "worker_idle_timeout", float, 900.0, "stop workers idle this many seconds", minimum=1,
       metavar="SECONDS"),
    _s("queen", "worker_slots", int, None, "fixed slots for each worker of the hives it starts (as llama-server "
       "-np N); unset: slots grow with demand", minimum=1, maximum=64, optional=True, metavar="N"),
    _s("queen", "worker_progress_timeout", float, 20.0, "a generating worker that sends nothing this many seconds "
       "is hung: its request fails and its hive stops it", minimum=12, metavar="SECONDS"),
    _s("queen", "heartbeat_timeout", float, 15.0, "a worker silent this many seconds is lost and never scheduled",
       minimum=1, metavar="SECONDS"),
    _s("queen", "cache_routing", bool, True, "route a generation to the worker that holds its prompt's KV cache"),
    _s("queen", "models_from_hives", bool, True, "a hive that needs a model another hive has gets a copy from there "
       "over the SSH links instead of downloading it from the hub"),
    _s("queen", "route_guard_slots", int, 2, "cache-aware routing gives way to load when the worker with the "
       "cache has more than N busy slots more than the least loaded ...", minimum=0, metavar="N"),
    _s("queen", "route_guard_ratio", float, 1.5, "... and more than R times as many", minimum=1, metavar="R"),
    _s("queen", "tls_cert", str, None, "serve HTTPS with this certificate (PEM; `rbee queen tls-init` makes one)",
       optional=True, metavar="FILE"),
    _s("queen", "tls_key", str, None, "the certificate's private key (PEM)", optional=True, metavar="FILE"),
    _s("hive", "worker_slots", int, None, f"fixed slots for each worker (as llama-server -np N); unset: a worker "
       f"starts with {START_SLOTS} and grows with demand up to {MAX_SLOTS} while memory allows", minimum=1,
       maximum=64, optional=True, metavar="N"),
    _s("hive", "worker_ctx_size", int, 2048, "context of one request at most, in tokens (each worker's "
       "--ctx-size; memory plans use it)", minimum=128, maximum=1 << 20, metavar="TOKENS"),
    _s("hive", "worker_stop_timeout", float, 10.0, "a worker not gone this many seconds after SIGTERM is killed",
       minimum=0.1, metavar="SECONDS"),
    _s("hive", "kv_cache_type", str, KV_CACHE_DEFAULT, "element type of each worker's KV cache unless a spawn names "
       "one: q8_0 takes about half of f16's memory, q4_0 a quarter; quantized types need flash attention",
       choices=KV_CACHE_TYPES),
    _s("hive", "flash_attn", str, FLASH_ATTN_DEFAULT, "llama.cpp's flash attention in each worker unless a spawn "
       "says: auto (where the device supports it), on, off", choices=FLASH_ATTN_MODES),
    _s("hive", "prompt_cache_mb", int, 1024, "disk the workers' saved prompt caches may take, every model's "
       "together (0 keeps none)", minimum=0, metavar="MB"),
    _s("hive", "vram_budget_mb", int, None, "plan at most this many MiB on each GPU (unset: its free memory less "
       "a margin)", minimum=1, optional=True, metavar="MIB"),
)


def settings_of(section: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.section == section)


def setting(section: str, key: str) -> Setting:
    return next(s for s in SETTINGS if s.section == section and s.key == key)


# -- the file ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileValues:
    """What rbee.toml sets: (section, key) -> (value, line)."""

    path: Path
    values: dict[tuple[str, str], tuple[Any, int]]

    def get(self, section: str, key: str) -> tuple[Any, int] | None:
        return self.values.get((section, key))


def config_file(config_dir: Path) -> Path:
    return config_dir / FILE_NAME


def _line_of(text: str, section: str | None, key: str) -> int:
    """The line (from 1) where `key` is set in `[section]` (0: not found, e.g. an inline table)."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if m := re.fullmatch(r"\[\s*([^\]]+?)\s*\]\s*(#.*)?", stripped):
            current = m.group(1).strip().strip('"')
        elif current == section and re.match(rf'"?{re.escape(key)}"?\s*=', stripped):
            return number
        elif section is None and current is None and re.match(rf'"?{re.escape(key)}"?\s*=', stripped):
            return number
    return 0


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}" if line else str(path)


def read_file(path: Path) -> FileValues:
    """rbee.toml, checked whole (an absent file sets nothing); SettingsError names the key and its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return FileValues(path, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"Cannot read {path}: {exc}.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}.") from None
    values: dict[tuple[str, str], tuple[Any, int]] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise SettingsError(f"{_where(path, _line_of(text, None, section))}: '{section}' is outside a section; "
                                f"settings go under {' or '.join(f'[{s}]' for s in SECTIONS)}.")
        if section not in SECTIONS:
            line = next((n for n, text_line in enumerate(text.splitlines(), 1)
                         if re.fullmatch(rf"\[\s*{re.escape(section)}\s*\].*", text_line.strip())), 0)
            raise SettingsError(f"{_where(path, line)}: unknown section [{section}]; rbee.toml has "
                                f"{' and '.join(f'[{s}]' for s in SECTIONS)}.")
        known = {s.key: s for s in settings_of(section)}
        for key, value in table.items():
            line = _line_of(text, section, key)
            if key not in known:
                raise SettingsError(f"{_where(path, line)}: [{section}] has no setting '{key}'; it has: "
                                    f"{', '.join(known)}.")
            try:
                values[(section, key)] = (known[key].check(value), line)
            except ValueError as exc:
                raise SettingsError(f"{_where(path, line)}: [{section}] {key} {exc}.") from None
    return FileValues(path, values)


# -- a daemon's command line -----------------------------------------------------------------------------

def add_flags(parser: argparse.ArgumentParser, section: str, *, skip: tuple[str, ...] = ()) -> None:
    """One flag per setting of the section, defaulting to 'not given' so the file and the default apply."""
    for s in settings_of(section):
        if s.key in skip:
            continue
        shown = "unset" if s.default is None else str(s.default).lower() if s.kind is bool else f"{s.default:g}" \
            if isinstance(s.default, float) else str(s.default)
        help_text = f"{s.help} (default {shown}; rbee.toml [{section}] {s.key}" + (f", ${s.env}" if s.env else "") + ")"
        if s.kind is bool:
            parser.add_argument(s.flag, dest=s.key, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(s.flag, dest=s.key, default=argparse.SUPPRESS, metavar=s.metavar,
                                type=_flag_type(s), help=help_text.replace("%", "%%"))


def _flag_type(s: Setting):
    def convert(text: str) -> Any:
        try:
            return s.check(s.parse_text(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = s.kind.__name__  # what argparse names in "invalid ... value"
    return convert


@dataclass(frozen=True)
class Effective:
    """A setting's value and where it came from: "flag", "env", "file" (with its line) or "default"."""

    value: Any
    source: str
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, **({"line": self.line} if self.line else {})}


def resolve(section: str, file: FileValues, given: dict[str, Any] | None = None,
            environ: dict[str, str] | None = None) -> dict[str, Effective]:
    """Every setting of the section: a flag given, else its environment variable, else the file, else the
    default. SettingsError for a bad environment value; flags and the file were checked as they were read."""
    given = given or {}
    environ = environ or {}
    out: dict[str, Effective] = {}
    for s in settings_of(section):
        if s.key in given:
            out[s.key] = Effective(given[s.key], "flag")
        elif s.env and environ.get(s.env, "") != "":
            try:
                out[s.key] = Effective(s.check(s.parse_text(environ[s.env])), "env")
            except ValueError as exc:
                raise SettingsError(f"${s.env} {exc}.") from None
        elif (found := file.get(section, s.key)) is not None:
            out[s.key] = Effective(found[0], "file", found[1])
        else:
            out[s.key] = Effective(s.default, "default")
    if section == "hive":
        kv, fa = out["kv_cache_type"], out["flash_attn"]
        if (problem := kv_cache_problem(kv.value, fa.value)) is not None:
            said = [f"{k} from {e.source}" + (f" (line {e.line})" if e.line else "")
                    for k, e in (("kv_cache_type", kv), ("flash_attn", fa))]
            raise SettingsError(f"{problem} ({', '.join(said)}).")
    if section == "queen" and (out["tls_cert"].value is None) != (out["tls_key"].value is None):
        raise SettingsError("--tls-cert and --tls-key go together (tls_cert and tls_key in rbee.toml; `rbee queen "
                            "tls-init` makes both).")
    return out


def given_flags(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The settings' flags a command line gave (the rest were left out by argparse.SUPPRESS)."""
    return {s.key: getattr(args, s.key) for s in settings_of(section) if hasattr(args, s.key)}


def values(effective: dict[str, Effective]) -> dict[str, Any]:
    return {key: e.value for key, e in effective.items()}


def describe(effective: dict[str, Effective]) -> dict[str, dict[str, Any]]:
    """For /v1/config and `rbee config show`."""
    return {key: e.to_dict() for key, e in effective.items()}
