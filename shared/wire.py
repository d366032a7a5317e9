"""Typed messages two rbee programs exchange as JSON, validated on the way in.

A message is a frozen dataclass. `parse_message(cls, data)` turns untrusted JSON into one or raises
`InvalidRequest` naming the field (`.field`) and what is wrong with it (`.problem`), so every caller can
say it in its own words: the CLI as an option, the OpenAI layer as `param`. Field checks come from the
type hints plus a little metadata (`nonempty`, `choices`, `min`, `max`); `validate()` checks what spans
several fields. `to_dict()` is the wire form, and `parse_message(cls, m.to_dict()) == m`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar, Union

from shared.errors import InvalidRequest

Message = tuple[str, str]  # (role, content)
Messages = tuple[Message, ...]
ROLES = ("system", "user", "assistant")

M = TypeVar("M", bound="WireMessage")


def bounds(lo: float | None = None, hi: float | None = None, **more: Any) -> dict[str, Any]:
    """Field metadata for a number that must lie within [lo, hi]."""
    return {"min": lo, "max": hi, **more}


class WireEnum(str, enum.Enum):
    """A state or kind that travels as its plain string value (and prints as it, too)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


HIDDEN = "(given, not shown)"  # a secret field's value in records and listings


@dataclass(frozen=True, kw_only=True)
class WireMessage:
    """Base of every typed message; `name` says what it is in error messages."""

    name: ClassVar[str] = ""

    @classmethod
    def describe(cls) -> str:
        return f"the {cls.name}"

    def validate(self) -> None:
        """Checks that span several fields; single fields are checked while parsing."""

    def redacted(self) -> dict[str, Any]:
        """to_dict() for records and listings: secret fields (metadata {"secret": True}, such as a hub token
        on its way to a hive) say only that they were given."""
        out = self.to_dict()
        for f in dataclasses.fields(self):
            if f.metadata.get("secret") and f.name in out:
                out[f.name] = HIDDEN
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue  # unset optional fields are left out, as a client would send them
            if f.name == "messages":
                value = [{"role": role, "content": content} for role, content in value]
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def field_error(cls: type[WireMessage], name: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"Field '{name}' of {cls.describe()} {problem}.", field=name, problem=problem)


def parse_message(cls: type[M], data: Any, *, tag: str | None = None) -> M:
    """Validate a JSON object into `cls`; `tag` is a key that may be present and is not a field."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"The body must be a JSON object, not {json_type(data)}.")
    schema = _schema(cls)
    for key in data:
        if key not in schema and key != tag:
            valid = ", ".join(schema) or "none"
            raise InvalidRequest(f"Unknown field '{key}' for {cls.describe()}. Valid fields: {valid}.", field=key,
                                 problem=f"is not a field (valid: {valid})")
    kwargs: dict[str, Any] = {}
    for fname, (hint, required, meta) in schema.items():
        if fname in data:
            kwargs[fname] = _check(cls, fname, hint, data[fname], meta)
        elif required:
            raise InvalidRequest(f"Missing field '{fname}' for {cls.describe()}.", field=fname,
                                 problem="is required")
    message = cls(**kwargs)
    message.validate()
    return message


_SCHEMAS: dict[type, dict[str, tuple[Any, bool, Mapping[str, Any]]]] = {}


def _schema(cls: type[WireMessage]) -> dict[str, tuple[Any, bool, Mapping[str, Any]]]:
    """name -> (type hint, required, metadata); resolving hints is slow, so once per class."""
    if (schema := _SCHEMAS.get(cls)) is None:
        hints = typing.get_type_hints(cls)
        schema = _SCHEMAS[cls] = {
            f.name: (hints[f.name],
                     f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                     f.metadata)
            for f in dataclasses.fields(cls)
        }
    return schema


def field_types(cls: type[WireMessage]) -> dict[str, Any]:
    """name -> the field's base type (Optional unwrapped), for building command-line options."""
    return {name: unwrap_optional(hint)[1] for name, (hint, _, _) in _schema(cls).items()}


def _check(cls: type[WireMessage], name: str, hint: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    optional, base = unwrap_optional(hint)

    def bad(problem: str) -> InvalidRequest:
        return field_error(cls, name, problem)

    if value is None:
        if optional:
            return None
        raise bad("must not be null")
    if isinstance(base, type) and issubclass(base, enum.Enum):
        allowed = [m.value for m in base]
        if value not in allowed:
            raise bad(f"must be one of {', '.join(map(str, allowed))}, not {value!r}")
        return base(value)
    if base is str:
        if not isinstance(value, str):
            raise bad(f"must be a string, not {json_type(value)}")
        if not _valid_unicode(value):
            raise bad("must be valid Unicode text (it holds a lone surrogate such as \\ud800)")
        if meta.get("nonempty") and not value.strip():
            raise bad("must not be empty")
        if "choices" in meta and value not in meta["choices"]:
            raise bad(f"must be one of {', '.join(meta['choices'])}, not '{value}'")
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise bad(f"must be true or false, not {json_type(value)}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, not {json_type(value)}")
        return _in_bounds(bad, value, meta)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"must be a number, not {json_type(value)}")
        if not math.isfinite(value):
            raise bad("must be a finite number")
        return _in_bounds(bad, float(value), meta)
    if base == Messages:
        if not isinstance(value, list) or not value:
            raise bad("must be a non-empty list of {role, content} objects")
        out = []
        for k, m in enumerate(value):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise InvalidRequest(f"Field '{name}' of {cls.describe()}: item {k} must be an object with 'role' "
                                     f"({', '.join(ROLES)}) and 'content' (a string).", field=name,
                                     problem=f"item {k} must be an object with 'role' and 'content'")
            if not _valid_unicode(m["content"]):
                raise bad(f"item {k} must be valid Unicode text (it holds a lone surrogate such as \\ud800)")
            out.append((m["role"], m["content"]))
        return tuple(out)
    if base is dict:
        if not isinstance(value, Mapping):
            raise bad(f"must be a JSON object, not {json_type(value)}")
        return dict(value)
    if base == tuple[int, ...]:
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise bad("must be a list of integers")
        if any(v < 0 for v in value):
            raise bad("must not contain negative numbers")
        return tuple(value)
    if base == tuple[str, ...]:
        if isinstance(value, str):
            value = [value]  # a single stop string is what most people mean
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("must be a list of strings")
        if any(not v for v in value):
            raise bad("must not contain empty strings")
        if not all(_valid_unicode(v) for v in value):
            raise bad("must be valid Unicode text (it holds a lone surrogate such as \\ud800)")
        return tuple(value)
    raise TypeError(f"unsupported field type {hint!r}")  # a programming error, caught by tests


def _valid_unicode(text: str) -> bool:
    """JSON lets `\\ud800` through; no UTF-8 file, terminal or socket can hold it afterwards."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _in_bounds(bad, value: float, meta: Mapping[str, Any]) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise bad(f"must be at least {lo:g}, not {value:g}")
    if hi is not None and value > hi:
        raise bad(f"must be at most {hi:g}, not {value:g}")
    return value


def unwrap_optional(hint: Any) -> tuple[bool, Any]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return True, args[0]
    return False, hint


def json_type(value: Any) -> str:
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
