"""Every operation of the job API as a typed, validated value.

An operation travels as a JSON object tagged by `"operation"`. `parse_operation` turns untrusted JSON into
one of the dataclasses below or raises `InvalidRequest` naming the field that is wrong and what is valid;
`Operation.to_dict` serialises it back so that `parse_operation(op.to_dict()) == op`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Union

from shared.errors import InvalidRequest, UnknownOperation

BUILTIN_MODEL = "smollm2-135m"
LOCAL_HIVE = "localhost"

OPERATIONS: dict[str, type["Operation"]] = {}


Message = tuple[str, str]  # (role, content)
Messages = tuple[Message, ...]
ROLES = ("system", "user", "assistant")


def check_prompt_or_messages(op: "Operation") -> None:
    prompt, messages = getattr(op, "prompt"), getattr(op, "messages")
    if (prompt is None) == (messages is None):
        raise InvalidRequest(f"Operation '{op.name}' needs exactly one of 'prompt' (plain text) and 'messages' "
                             "(a chat: a list of {role, content}).")


def _bounds(lo: float | None = None, hi: float | None = None) -> dict[str, float | None]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True, kw_only=True)
class Operation:
    """Base of every operation; `name` is the wire tag."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name and register:
            OPERATIONS[cls.name] = cls

    def validate(self) -> None:
        """Checks that span several fields; single fields are checked while parsing."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"operation": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue  # unset optional fields are left out, as a client would send them
            if f.name == "messages":
                value = [{"role": role, "content": content} for role, content in value]
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# --- queen: status and hives -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Status(Operation):
    name: ClassVar[str] = "status"


@dataclass(frozen=True, kw_only=True)
class _AliasOperation(Operation):
    alias: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class SshTest(_AliasOperation):
    name: ClassVar[str] = "ssh_test"


@dataclass(frozen=True, kw_only=True)
class HiveInstall(_AliasOperation):
    name: ClassVar[str] = "hive_install"


@dataclass(frozen=True, kw_only=True)
class HiveUninstall(_AliasOperation):
    name: ClassVar[str] = "hive_uninstall"


@dataclass(frozen=True, kw_only=True)
class HiveStart(_AliasOperation):
    name: ClassVar[str] = "hive_start"


@dataclass(frozen=True, kw_only=True)
class HiveStop(_AliasOperation):
    name: ClassVar[str] = "hive_stop"


@dataclass(frozen=True, kw_only=True)
class HiveList(Operation):
    name: ClassVar[str] = "hive_list"


@dataclass(frozen=True, kw_only=True)
class HiveGet(_AliasOperation):
    name: ClassVar[str] = "hive_get"


@dataclass(frozen=True, kw_only=True)
class HiveStatus(_AliasOperation):
    name: ClassVar[str] = "hive_status"


@dataclass(frozen=True, kw_only=True)
class HiveRefreshCapabilities(_AliasOperation):
    name: ClassVar[str] = "hive_refresh_capabilities"


@dataclass(frozen=True, kw_only=True)
class HiveImportSsh(Operation):
    name: ClassVar[str] = "hive_import_ssh"
    ssh_config_path: str | None = None  # None: ~/.ssh/config
    default_hive_port: int | None = field(default=None, metadata=_bounds(1, 65535))


# --- forwarded to a hive: workers and models -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _HiveOperation(Operation):
    hive_id: str = field(default=LOCAL_HIVE, metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class WorkerSpawn(_HiveOperation):
    name: ClassVar[str] = "worker_spawn"
    model: str = field(default=BUILTIN_MODEL, metadata={"nonempty": True})
    worker: str = field(default="cpu", metadata={"choices": ("cpu", "cuda", "metal")})
    device: int = field(default=0, metadata=_bounds(0))


@dataclass(frozen=True, kw_only=True)
class WorkerList(_HiveOperation):
    name: ClassVar[str] = "worker_list"


@dataclass(frozen=True, kw_only=True)
class WorkerGet(_HiveOperation):
    name: ClassVar[str] = "worker_get"
    id: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class WorkerDelete(_HiveOperation):
    name: ClassVar[str] = "worker_delete"
    id: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class ModelDownload(_HiveOperation):
    name: ClassVar[str] = "model_download"
    model: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class ModelList(_HiveOperation):
    name: ClassVar[str] = "model_list"


@dataclass(frozen=True, kw_only=True)
class ModelGet(_HiveOperation):
    name: ClassVar[str] = "model_get"
    id: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class ModelDelete(_HiveOperation):
    name: ClassVar[str] = "model_delete"
    id: str = field(metadata={"nonempty": True})


# --- inference -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Infer(Operation):
    """A generation: from a plain `prompt`, or from chat `messages` in the model's own chat template."""

    name: ClassVar[str] = "infer"
    prompt: str | None = field(default=None, metadata={"nonempty": True})
    messages: Messages | None = None
    model: str = field(default=BUILTIN_MODEL, metadata={"nonempty": True})
    hive_id: str | None = None  # None: any hive
    max_tokens: int | None = field(default=None, metadata=_bounds(1))
    temperature: float | None = field(default=None, metadata=_bounds(0))
    top_p: float | None = field(default=None, metadata=_bounds(0, 1))
    top_k: int | None = field(default=None, metadata=_bounds(0))
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    def validate(self) -> None:
        check_prompt_or_messages(self)


HIVE_OPERATIONS = frozenset(
    name for name, cls in OPERATIONS.items() if issubclass(cls, _HiveOperation)
)


# --- parsing ---------------------------------------------------------------------------------------


def parse_operation(data: Any, *, allowed: typing.Collection[str] | None = None) -> Operation:
    """Validate untrusted JSON into an Operation; `allowed` limits which operations this server takes."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"The body must be a JSON object with an 'operation' field, not {_json_type(data)}.")
    valid = sorted(allowed if allowed is not None else OPERATIONS)
    if "operation" not in data:
        raise InvalidRequest(f"Missing field 'operation'. Valid operations: {', '.join(valid)}.")
    name = data["operation"]
    if not isinstance(name, str):
        raise InvalidRequest(f"Field 'operation' must be a string, not {_json_type(name)}.")
    cls = OPERATIONS.get(name)
    if cls is None or name not in valid:
        where = "" if cls is None else " here"
        raise UnknownOperation(f"Unknown operation '{name}'{where}. Valid operations: {', '.join(valid)}.")
    return _build(cls, data)


@functools.cache
def _schema(cls: type[Operation]) -> dict[str, tuple[Any, bool, Mapping[str, Any]]]:
    """name -> (type hint, required, metadata); resolving hints is slow, so once per class."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: (hints[f.name],
                 f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                 f.metadata)
        for f in dataclasses.fields(cls)
    }


def parse_fields(cls: type[Operation], data: Any) -> Operation:
    """Validate a JSON object into `cls` (a request type that is not a job-API operation)."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"The body must be a JSON object, not {_json_type(data)}.")
    return _build(cls, data)


def _build(cls: type[Operation], data: Mapping[str, Any]) -> Operation:
    schema = _schema(cls)
    tagged = OPERATIONS.get(cls.name) is cls
    for key in data:
        if key not in schema and not (tagged and key == "operation"):
            valid = ", ".join(schema) or "none"
            raise InvalidRequest(f"Unknown field '{key}' for operation '{cls.name}'. Valid fields: {valid}.")
    kwargs: dict[str, Any] = {}
    for fname, (hint, required, meta) in schema.items():
        if fname in data:
            kwargs[fname] = _check(cls.name, fname, hint, data[fname], meta)
        elif required:
            raise InvalidRequest(f"Missing field '{fname}' for operation '{cls.name}'.")
    op = cls(**kwargs)
    op.validate()
    return op


def _check(op: str, name: str, hint: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    optional, base = _unwrap_optional(hint)
    where = f"Field '{name}' of operation '{op}'"
    if value is None:
        if optional:
            return None
        raise InvalidRequest(f"{where} must not be null.")
    if base is str:
        if not isinstance(value, str):
            raise InvalidRequest(f"{where} must be a string, not {_json_type(value)}.")
        if meta.get("nonempty") and not value.strip():
            raise InvalidRequest(f"{where} must not be empty.")
        if "choices" in meta and value not in meta["choices"]:
            raise InvalidRequest(f"{where} must be one of {', '.join(meta['choices'])}, not '{value}'.")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{where} must be an integer, not {_json_type(value)}.")
        return _in_bounds(where, value, meta)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"{where} must be a number, not {_json_type(value)}.")
        return _in_bounds(where, float(value), meta)
    if base == Messages:
        if not isinstance(value, list) or not value:
            raise InvalidRequest(f"{where} must be a non-empty list of {{role, content}} objects.")
        out = []
        for k, m in enumerate(value):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise InvalidRequest(f"{where}: item {k} must be an object with 'role' ({', '.join(ROLES)}) and "
                                     "'content' (a string).")
            out.append((m["role"], m["content"]))
        return tuple(out)
    if base == tuple[str, ...]:
        if isinstance(value, str):
            value = [value]  # a single stop string is what most people mean
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"{where} must be a list of strings.")
        if any(not v for v in value):
            raise InvalidRequest(f"{where} must not contain empty strings.")
        return tuple(value)
    raise TypeError(f"unsupported field type {hint!r}")  # a programming error, caught by tests


def _in_bounds(where: str, value: float, meta: Mapping[str, Any]) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise InvalidRequest(f"{where} must be at least {lo:g}, not {value:g}.")
    if hi is not None and value > hi:
        raise InvalidRequest(f"{where} must be at most {hi:g}, not {value:g}.")
    return value


def _unwrap_optional(hint: Any) -> tuple[bool, Any]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return True, args[0]
    return False, hint


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
