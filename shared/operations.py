"""Every operation of the job API as a typed, validated value.

An operation travels as a JSON object tagged by `"operation"`. `parse_operation` turns untrusted JSON into
one of the dataclasses below or raises `InvalidRequest` naming the field that is wrong and what is valid;
`Operation.to_dict` serialises it back so that `parse_operation(op.to_dict()) == op`.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from shared.errors import InvalidRequest, UnknownOperation
from shared.inference import Generation
from shared.models import BUILTIN_MODEL
from shared.wire import WireMessage, bounds, field_error, json_type, parse_message

LOCAL_HIVE = "localhost"
ANY_HIVE = "any"  # worker_spawn: the queen places the worker (never a hive's alias)

DEVICE_AUTO = "auto"
_DEVICE = re.compile(r"auto|cpu|cuda:\d{1,2}")
# llama.cpp's KV cache element types a worker may be started with, and its flash-attention switch.
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
FLASH_ATTN_MODES = ("auto", "on", "off")


def check_device(message: type, device: str) -> None:
    """auto, cpu or cuda:N: anything else is refused naming the field."""
    if not _DEVICE.fullmatch(device):
        raise field_error(message, "device", f"must be auto, cpu or cuda:N (a GPU's index), not '{device}'")

OPERATIONS: dict[str, type["Operation"]] = {}


@dataclass(frozen=True, kw_only=True)
class Operation(WireMessage):
    """Base of every operation; `name` is the wire tag. A `read_only` one only looks: its job is answered
like any other, but kept out of the history and out of job listings (unless asked for)."""

    read_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            OPERATIONS[cls.name] = cls

    @classmethod
    def describe(cls) -> str:
        return f"operation '{cls.name}'"

    def to_dict(self) -> dict[str, Any]:
        return {"operation": self.name, **super().to_dict()}


# --- queen: status and hives -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Status(Operation):
    name: ClassVar[str] = "status"
    read_only: ClassVar[bool] = True


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
    read_only: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class HiveGet(_AliasOperation):
    name: ClassVar[str] = "hive_get"
    read_only: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class HiveStatus(_AliasOperation):
    name: ClassVar[str] = "hive_status"
    read_only: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class HiveRefreshCapabilities(_AliasOperation):
    name: ClassVar[str] = "hive_refresh_capabilities"


DRAIN_DEADLINE_S = 60.0  # how long running answers may take to finish on a draining worker or hive


@dataclass(frozen=True, kw_only=True)
class HiveDrain(_AliasOperation):
    """No new requests for the hive; its running answers finish (past `deadline_s` they continue on another
    worker), then it stops. The queen's own (not forwarded)."""

    name: ClassVar[str] = "hive_drain"
    deadline_s: float = field(default=DRAIN_DEADLINE_S, metadata=bounds(0, 24 * 3600))


@dataclass(frozen=True, kw_only=True)
class HiveUpgrade(Operation):
    """Install this rbee on a remote hive beside the running one, drain it, restart it on the new one, then
    remove the old; `all`: every remote hive this queen installed, one at a time."""

    name: ClassVar[str] = "hive_upgrade"
    alias: str | None = field(default=None, metadata={"nonempty": True})
    all: bool = False
    deadline_s: float = field(default=DRAIN_DEADLINE_S, metadata=bounds(0, 24 * 3600))

    def validate(self) -> None:
        if (self.alias is None) == (not self.all):
            raise field_error(type(self), "alias", "must name one hive, or be left out with all: true (every remote "
                                                   "hive)")


@dataclass(frozen=True, kw_only=True)
class WorkerDrain(Operation):
    """As hive_drain, for one worker: it stops once its answers are done or moved."""

    name: ClassVar[str] = "worker_drain"
    id: str = field(metadata={"nonempty": True})
    deadline_s: float = field(default=DRAIN_DEADLINE_S, metadata=bounds(0, 24 * 3600))


@dataclass(frozen=True, kw_only=True)
class HiveImportSsh(Operation):
    name: ClassVar[str] = "hive_import_ssh"
    ssh_config_path: str | None = None  # None: ~/.ssh/config
    default_hive_port: int | None = field(default=None, metadata=bounds(1, 65535))


# --- forwarded to a hive: workers and models -------------------------------------------------------


_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.part")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ALIAS = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_alias(message: type, alias: str | None) -> None:
    if alias is not None and not _ALIAS.fullmatch(alias):
        raise field_error(message, "alias", "must be 1-64 lowercase letters, digits, '.', '_' or '-', "
                                            f"starting with a letter or digit, not '{alias}'")


@dataclass(frozen=True, kw_only=True)
class HiveOperation(Operation):
    """Forwarded by the queen to the hive `hive_id`, which checks it is that hive."""

    hive_id: str = field(default=LOCAL_HIVE, metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class WorkerSpawn(HiveOperation):
    name: ClassVar[str] = "worker_spawn"
    model: str = field(default=BUILTIN_MODEL, metadata={"nonempty": True})
    device: str = DEVICE_AUTO  # auto (a GPU when the hive's plan fits one, else the CPU) | cpu | cuda:N
    embedding: bool = False  # a worker that computes embeddings (Embed) and never generates
    kv_cache_type: str | None = field(default=None, metadata={"choices": KV_CACHE_TYPES})  # None: the hive's
    flash_attn: str | None = field(default=None, metadata={"choices": FLASH_ATTN_MODES})  # None: the hive's

    def validate(self) -> None:
        check_device(type(self), self.device)


@dataclass(frozen=True, kw_only=True)
class WorkerList(HiveOperation):
    name: ClassVar[str] = "worker_list"
    read_only: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class WorkerGet(HiveOperation):
    name: ClassVar[str] = "worker_get"
    read_only: ClassVar[bool] = True
    id: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class WorkerDelete(HiveOperation):
    name: ClassVar[str] = "worker_delete"
    id: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class ModelDownload(HiveOperation):
    name: ClassVar[str] = "model_download"
    model: str = field(metadata={"nonempty": True})
    # A hub token for a gated or private model (`rbee model download --token-file`): it travels to the hive
    # in the job's body and into the downloader's environment, never into argv, a log, a listing or history.
    token: str | None = field(default=None, repr=False, metadata={"nonempty": True, "secret": True})
    alias: str | None = None  # the short name to list it under (default: the file's name)

    def validate(self) -> None:
        check_alias(type(self), self.alias)


@dataclass(frozen=True, kw_only=True)
class ModelList(HiveOperation):
    name: ClassVar[str] = "model_list"
    read_only: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class ModelGet(HiveOperation):
    name: ClassVar[str] = "model_get"
    read_only: ClassVar[bool] = True
    id: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class ModelDelete(HiveOperation):
    name: ClassVar[str] = "model_delete"
    id: str = field(metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class ModelVerify(HiveOperation):
    """Hash the hive's models again and compare them with the catalog (all of them, or `id`)."""

    name: ClassVar[str] = "model_verify"
    id: str | None = field(default=None, metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class ModelDigest(HiveOperation):
    """The sha256 of what arrived in the hive's incoming directory, said as data. The queen asks for it while
    it hashes its own copy (both at once, after the transfer rather than during it); the hive keeps it, so
    the ModelAdopt that follows does not read the file a second time."""

    name: ClassVar[str] = "model_digest"
    file: str  # the file's name inside the hive's incoming directory

    def validate(self) -> None:
        if not _PART_NAME.fullmatch(self.file):
            raise field_error(type(self), "file", f"must be a NAME.part inside the incoming directory, not '{self.file}'")


@dataclass(frozen=True, kw_only=True)
class ModelAdopt(HiveOperation):
    """The queen put a model's bytes in the hive's incoming directory (queen/model_transfer.py): the hive
    checks size, GGUF header and sha256, moves the file into place and adds it to its catalog as `model`."""

    name: ClassVar[str] = "model_adopt"
    file: str  # the file's name inside the hive's incoming directory
    model: str = field(metadata={"nonempty": True})  # the catalog id it takes (the same on every hive)
    size: int = field(metadata=bounds(1))
    sha256: str  # what the sender read: the file is refused (and removed) unless it hashes the same
    alias: str | None = None
    origin: str = ""  # where it came from, for the catalog ("pushed from ...", "copied from hive ...")

    def validate(self) -> None:
        if not _PART_NAME.fullmatch(self.file):
            raise field_error(type(self), "file", f"must be a NAME.part inside the incoming directory, not '{self.file}'")
        if not _SHA256.fullmatch(self.sha256):
            raise field_error(type(self), "sha256", "must be 64 lowercase hex digits")
        check_alias(type(self), self.alias)


# --- queen: models travelling between machines (queen/model_transfer.py) ---------------------------


@dataclass(frozen=True, kw_only=True)
class ModelPush(Operation):
    """A GGUF file on the queen's machine into a hive's catalog: registered where it lies on the local hive
    (copied with `copy`), sent over the SSH link to a remote one, resumable, checked with sha256."""

    name: ClassVar[str] = "model_push"
    path: str = field(metadata={"nonempty": True})  # absolute, on the queen's machine
    hive_id: str = field(default=LOCAL_HIVE, metadata={"nonempty": True})
    all: bool = False  # every hive the queen knows, one after the other
    alias: str | None = None  # the short name to list it under (default: the file's name)
    copy: bool = False  # the local hive: copy into its model directory instead of using the file in place
    bwlimit_mb_s: float | None = field(default=None, metadata=bounds(0.1, 100_000))  # MB/s, like rsync's

    def validate(self) -> None:
        check_alias(type(self), self.alias)


@dataclass(frozen=True, kw_only=True)
class ModelCopy(Operation):
    """A model from one hive's catalog into another's, through the queen (over both SSH links)."""

    name: ClassVar[str] = "model_copy"
    model: str = field(metadata={"nonempty": True})
    from_hive: str = field(metadata={"nonempty": True})
    to_hive: str = field(metadata={"nonempty": True})
    bwlimit_mb_s: float | None = field(default=None, metadata=bounds(0.1, 100_000))

    def validate(self) -> None:
        if self.from_hive == self.to_hive:
            raise field_error(type(self), "to_hive", f"must differ from from_hive ('{self.from_hive}')")


# --- inference -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Infer(Operation, Generation):
    """A generation on any worker with the model (or one on `hive_id`): the text and sampling come from
    `Generation`, shared with the worker's request."""

    name: ClassVar[str] = "infer"
    model: str = field(default=BUILTIN_MODEL, metadata={"nonempty": True})
    hive_id: str | None = None  # None: any hive
    conversation_id: str | None = None  # the queen adds this exchange to that stored conversation
    device: str = DEVICE_AUTO  # for a worker started for this answer: auto | cpu | cuda:N

    def validate(self) -> None:
        super().validate()
        check_device(type(self), self.device)


MAX_EMBED_INPUTS = 2048  # per request, as OpenAI's own limit


@dataclass(frozen=True, kw_only=True)
class Embed(Operation):
    """Embedding vectors of `input`, computed by a worker of the model started in embedding mode (one is
    spawned when none runs); the result is {"embeddings", "model", "prompt_tokens", "dimensions"}."""

    name: ClassVar[str] = "embed"
    model: str = field(default=BUILTIN_MODEL, metadata={"nonempty": True})
    input: tuple[str, ...]
    hive_id: str | None = None  # None: any hive

    def validate(self) -> None:
        if not self.input:
            raise field_error(type(self), "input", "must hold at least one string")
        if len(self.input) > MAX_EMBED_INPUTS:
            raise field_error(type(self), "input", f"must hold at most {MAX_EMBED_INPUTS} strings, not {len(self.input)}")


HIVE_OPERATIONS = frozenset(
    name for name, cls in OPERATIONS.items() if issubclass(cls, HiveOperation)
)


# --- parsing ---------------------------------------------------------------------------------------


def parse_operation(data: Any, *, allowed: typing.Collection[str] | None = None) -> Operation:
    """Validate untrusted JSON into an Operation; `allowed` limits which operations this server takes."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"The body must be a JSON object with an 'operation' field, not {json_type(data)}.")
    valid = sorted(allowed if allowed is not None else OPERATIONS)
    if "operation" not in data:
        raise InvalidRequest(f"Missing field 'operation'. Valid operations: {', '.join(valid)}.", field="operation",
                             problem="is required")
    name = data["operation"]
    if not isinstance(name, str):
        raise InvalidRequest(f"Field 'operation' must be a string, not {json_type(name)}.", field="operation",
                             problem=f"must be a string, not {json_type(name)}")
    cls = OPERATIONS.get(name)
    if cls is None or name not in valid:
        where = "" if cls is None else " here"
        raise UnknownOperation(f"Unknown operation '{name}'{where}. Valid operations: {', '.join(valid)}.")
    return parse_message(cls, data, tag="operation")
