"""shared/ is imported by every program, the CLI included: it must not drag in the heavy libraries."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

HEAVY = ("textual", "llama_cpp", "asyncssh")


def test_shared_stays_light():
    code = (
        "import json, pkgutil, importlib, sys, shared\n"
        "for m in pkgutil.iter_modules(shared.__path__):\n"
        "    importlib.import_module('shared.' + m.name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
