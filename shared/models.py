"""Model references, as every program spells them: the built-in model, `hf:org/repo:file.gguf`, `file:/path`.

A reference's canonical form is also the id a hive's catalog and a worker's heartbeat use, so the queen
can match a request to a warm worker without asking the hive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidRequest

BUILTIN_MODEL = "smollm2-135m"

_HF = re.compile(r"hf:(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[\w.-]+(?:/[\w.-]+)*\.gguf)")


class ModelReferenceError(InvalidRequest):
    title = "Bad model reference"
    code = "BAD_MODEL_REFERENCE"


@dataclass(frozen=True)
class ModelRef:
    scheme: str  # builtin | hf | file
    id: str  # canonical reference, also the catalog id
    repo: str | None = None
    file: str | None = None
    path: Path | None = None


def alias_of(model_id: str) -> str:
    """A model's short name, for people: the built-in's own name, else its file's name without `.gguf`,
    lowercased ("file:/m/SmolLM2-135M-Instruct.Q4_1.gguf" -> "smollm2-135m-instruct.q4_1")."""
    if model_id == BUILTIN_MODEL:
        return model_id
    name = model_id.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return (name[:-len(".gguf")] if name.lower().endswith(".gguf") else name).lower()


def is_reference(name: str) -> bool:
    """Whether `name` is a reference (the built-in, hf: or file:) rather than perhaps an alias."""
    return name.strip() == BUILTIN_MODEL or name.strip().startswith(("hf:", "file:"))


def parse_reference(reference: str) -> ModelRef:
    """Pure parsing (a file: path is made absolute, nothing is read)."""
    ref = reference.strip()
    if ref == BUILTIN_MODEL:
        return ModelRef("builtin", BUILTIN_MODEL)
    if ref.startswith("hf:"):
        m = _HF.fullmatch(ref)
        if not m or ".." in m.group("file").split("/"):
            raise ModelReferenceError(
                f"Malformed hf: reference '{ref}'. Expected hf:<org>/<repo>:<file>.gguf, "
                "for example hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2-135m-instruct-q8_0.gguf.")
        return ModelRef("hf", ref, repo=m.group("repo"), file=m.group("file"))
    if ref.startswith("file:"):
        raw = ref[len("file:"):]
        if not raw:
            raise ModelReferenceError("A file: reference needs a path, e.g. file:/models/my-model.gguf.")
        path = Path(raw).expanduser().resolve()
        return ModelRef("file", f"file:{path}", path=path)
    scheme = ref.split(":", 1)[0] + ":" if ":" in ref else None
    what = f"Unknown model reference scheme '{scheme}'" if scheme else f"Unknown model '{ref}'"
    raise ModelReferenceError(
        f"{what}. Use {BUILTIN_MODEL} (built in), hf:<org>/<repo>:<file>.gguf or file:<path to a .gguf>.")
