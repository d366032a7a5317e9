"""Which llama.cpp build a machine gets (CPU or CUDA, for which GPU architectures, with which CUDA
compiler), decided the same way by ./bootstrap.sh here and by `rbee hive install` for a remote.

The facts come from PROBE_SCRIPT, a POSIX shell snippet run here (`sh -c`) or over SSH on a remote:
nvidia-smi's GPUs with their compute capabilities and the driver version, an nvcc (with cuBLAS beside
it) if one is installed, RBEE_LLAMA_BACKEND. `decide()` turns them into a Decision with no side effects,
so it is tested with written probe answers. A machine without nvidia-smi costs one `command -v`.

Where no nvcc is installed, CUDA's compiler, runtime and cuBLAS come from the package index's CUDA 13
wheels (the cu12 wheels ship no nvcc): they need a driver for CUDA 13 (580 or newer) and GPUs of compute
capability 7.5 or newer. TOOLKIT_WHEELS are installed into a directory of their own and made into the
layout cmake's FindCUDAToolkit expects (toolkit_setup_script).

    python -m shared.llama_build decide [--shell|--json]   (bootstrap.sh evals --shell)

Importable without llama_cpp or any dependency: bootstrap.sh runs it before anything is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.errors import RbeeError

BACKENDS = ("auto", "cpu", "cuda")
# CUDA 13.0 from the package index: the smallest set that is a working toolkit (nvcc with its front end
# and libdevice, the runtime and its headers, CCCL, cuBLAS). 13.0 is what a 580 driver runs.
TOOLKIT_CUDA = (13, 0)
TOOLKIT_WHEELS = (
    "nvidia-cuda-nvcc==13.0.88", "nvidia-cuda-crt==13.0.88", "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cccl==13.0.85", "nvidia-cublas==13.0.0.19",
)
MIN_DRIVER_FOR_WHEELS = 580  # CUDA 13.0's minimum driver
MIN_ARCH_FOR_WHEELS = 75  # CUDA 13 dropped Maxwell, Pascal and Volta
# Core-minutes a CUDA build of llama.cpp takes per GPU architecture (the ggml-cuda kernels, measured
# loosely: ~6 minutes on 16 cores for one architecture), plus the CPU part's.
CUDA_CORE_MINUTES_PER_ARCH = 80
CPU_CORE_MINUTES = 12

# What the probe prints, one fact a line; `sh -c` here, the login shell over SSH. RBEE_NVCC_SEARCH
# replaces the default place an nvcc is looked for besides PATH and CUDA_HOME (tests empty it).
PROBE_SCRIPT = r"""
echo "backend=${RBEE_LLAMA_BACKEND:-}"
echo "machine=$(uname -m)"
echo "cores=$(nproc 2>/dev/null || echo 2)"
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "nvidia-smi=yes"
  gpus=$(nvidia-smi --query-gpu=index,name,compute_cap,driver_version --format=csv,noheader 2>/dev/null)
  if [ -n "$gpus" ] && ! printf '%s' "$gpus" | grep -qi 'not a valid field'; then
    printf '%s\n' "$gpus" | sed 's/^/gpu: /'
  else
    nvidia-smi -L 2>/dev/null | sed 's/^/gpu-l: /'
    nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | sed 's/^/driver: /'
  fi
fi
if [ "${RBEE_LLAMA_BACKEND:-}" = cuda ] || command -v nvidia-smi >/dev/null 2>&1; then
  for n in "${CUDACXX:-}" "$(command -v nvcc 2>/dev/null)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" \
           ${RBEE_NVCC_SEARCH-/usr/local/cuda/bin/nvcc}; do
    [ -n "$n" ] && [ -x "$n" ] || continue
    echo "nvcc: $n"
    "$n" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\).*/nvcc-release: \1/p'
    real=$(readlink -f "$n" 2>/dev/null || echo "$n")
    if [ "$(head -c 2 "$real" 2>/dev/null)" = '#!' ]; then  # a wrapper script: exec /usr/local/cuda-X/bin/nvcc
      wrapped=$(sed -n 's/^exec \([^ ]*nvcc\)\( .*\)*$/\1/p' "$real" | head -n 1)
      real=${wrapped:-$real}
    fi
    root=$(dirname "$(dirname "$real")")
    ls "$root"/include/cublas_v2.h "$root"/targets/*/include/cublas_v2.h 2>/dev/null | head -n 1 | sed 's/^/cublas: /'
    break
  done
fi
"""


class LlamaBuildError(RbeeError):
    title = "Cannot build llama.cpp for this machine"
    code = "LLAMA_BUILD"
    status = 400


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_cap: str | None  # "8.9"; None when this nvidia-smi cannot tell (old driver)

    @property
    def arch(self) -> int | None:
        """8.9 -> 89, what CMAKE_CUDA_ARCHITECTURES and sm_NN say."""
        if self.compute_cap and re.fullmatch(r"\d+\.\d+", self.compute_cap):
            major, minor = self.compute_cap.split(".")
            return int(major) * 10 + int(minor)
        return None


@dataclass(frozen=True)
class Probe:
    """What PROBE_SCRIPT found on one machine."""

    requested: str = ""
    machine: str = "x86_64"
    cores: int = 2
    nvidia_smi: bool = False
    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None  # "550.54.15"
    nvcc: str | None = None
    nvcc_release: str | None = None  # "12.4"
    cublas: str | None = None  # the cublas_v2.h beside that nvcc, if any

    @classmethod
    def parse(cls, text: str) -> Probe:
        facts: dict = {"gpus": []}
        for raw in text.splitlines():
            line = raw.strip()
            key, sep, value = line.partition("=") if "=" in line.split(":")[0] else line.partition(": ")
            value = value.strip()
            if not sep:
                continue
            if key == "backend":
                facts["requested"] = value.lower()
            elif key == "machine":
                facts["machine"] = value
            elif key == "cores" and value.isdigit():
                facts["cores"] = max(1, int(value))
            elif key == "nvidia-smi":
                facts["nvidia_smi"] = True
            elif key == "gpu":  # 0, NVIDIA GeForce RTX 4090, 8.9, 550.54.15
                parts = [p.strip() for p in value.split(",")]
                if len(parts) >= 3 and parts[0].isdigit():
                    cap = parts[2] if re.fullmatch(r"\d+\.\d+", parts[2]) else None
                    facts["gpus"].append(Gpu(int(parts[0]), parts[1], cap))
                    if len(parts) >= 4 and re.match(r"\d+", parts[3]):
                        facts["driver"] = parts[3]
            elif key == "gpu-l":  # GPU 0: Tesla K80 (UUID: GPU-...)
                if m := re.match(r"GPU (\d+): (.+?)(?: \(UUID.*)?$", value):
                    facts["gpus"].append(Gpu(int(m[1]), m[2], None))
            elif key == "driver" and re.match(r"\d+", value):
                facts["driver"] = value
            elif key == "nvcc":
                facts["nvcc"] = value
            elif key == "nvcc-release":
                facts["nvcc_release"] = value
            elif key == "cublas":
                facts["cublas"] = value
        facts["gpus"] = tuple(facts["gpus"])
        return cls(**facts)

    @property
    def driver_major(self) -> int | None:
        return int(self.driver.split(".")[0]) if self.driver and self.driver.split(".")[0].isdigit() else None

    @property
    def driver_cuda_major(self) -> int | None:
        """The newest CUDA major version this driver runs (minor-version compatibility within it)."""
        major = self.driver_major
        if major is None:
            return None
        return 13 if major >= 580 else 12 if major >= 525 else 11 if major >= 450 else 10


@dataclass
class Decision:
    """What to build, and why, for people and for the build."""

    backend: str  # "cpu" | "cuda"
    why: str  # one sentence for people
    version: str
    cache_key: str  # names the wheel cache's directory: 0.3.36-cuda-sm89
    cmake_args: str = ""
    env: dict[str, str] = field(default_factory=dict)  # for the build (CMAKE_ARGS, CUDACXX, ...)
    architectures: list[str] = field(default_factory=list)  # ["86", "89"] or ["native"]
    toolkit: str | None = None  # "nvcc" | "wheels"
    toolkit_root: str | None = None  # where the wheels' toolkit is made (toolkit == "wheels")
    toolkit_wheels: list[str] = field(default_factory=list)
    estimate: str = ""  # how long the CUDA compile takes, for people
    warning: str | None = None  # a GPU that gets a CPU build: what to install to change that

    def to_dict(self) -> dict:
        return asdict(self)

    def shell(self) -> str:
        """Assignments for bootstrap.sh to eval (every value quoted)."""
        values = {"LLAMA_BACKEND": self.backend, "LLAMA_WHY": self.why, "LLAMA_VERSION": self.version,
                  "LLAMA_CACHE_KEY": self.cache_key, "LLAMA_CMAKE_ARGS": self.cmake_args,
                  "LLAMA_TOOLKIT": self.toolkit or "", "LLAMA_TOOLKIT_ROOT": self.toolkit_root or "",
                  "LLAMA_TOOLKIT_WHEELS": " ".join(self.toolkit_wheels), "LLAMA_ESTIMATE": self.estimate,
                  "LLAMA_WARNING": self.warning or ""}
        build_env = " ".join(shlex.quote(f"{k}={v}") for k, v in self.env.items())
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()) + f"LLAMA_BUILD_ENV=({build_env})\n"


def _gpu_words(gpus: tuple[Gpu, ...]) -> str:
    return ", ".join(f"{g.name} ({g.compute_cap})" if g.compute_cap else g.name for g in gpus)


def toolkit_dir(base: str, root_name: str = "cuda-toolkit") -> str:
    """Where the wheels' CUDA toolkit goes under `base` (rbee's cache here, the install dir on a remote)."""
    return f"{base.rstrip('/')}/{root_name}/{TOOLKIT_CUDA[0]}.{TOOLKIT_CUDA[1]}"


def toolkit_home(root: str) -> str:
    """The toolkit proper inside that directory: the CUDA 13 wheels all install into nvidia/cu13."""
    return f"{root}/nvidia/cu{TOOLKIT_CUDA[0]}"


def decide(probe: Probe, version: str, *, toolkit_base: str) -> Decision:
    """The build for a machine with what `probe` found. Raises LlamaBuildError where CUDA was asked for
    (RBEE_LLAMA_BACKEND=cuda) and cannot be had; with `auto`, a GPU without a usable toolkit gets the CPU
    build and a warning that says what to install."""
    requested = probe.requested or "auto"
    if requested not in BACKENDS:
        raise LlamaBuildError(f"RBEE_LLAMA_BACKEND is {requested!r}; use cpu, cuda or auto (the default).",
                              code="LLAMA_BACKEND_INVALID")
    cpu_key = f"{version}-cpu"
    if requested == "cpu":
        return Decision("cpu", "cpu: RBEE_LLAMA_BACKEND=cpu; building llama.cpp for the CPU", version, cpu_key)
    if not probe.gpus:
        seen = ("nvidia-smi lists no GPU" if probe.nvidia_smi else
                "no nvidia-smi on this machine (no NVIDIA driver)")
        if requested == "cuda":
            raise LlamaBuildError(
                f"RBEE_LLAMA_BACKEND=cuda, but {seen}. Install the NVIDIA driver so that `nvidia-smi -L` lists "
                "the GPU, or unset RBEE_LLAMA_BACKEND to build for the CPU.", code="LLAMA_CUDA_NO_GPU")
        return Decision("cpu", f"cpu: {seen}; building llama.cpp for the CPU", version, cpu_key)

    gpus = _gpu_words(probe.gpus)
    archs = sorted({g.arch for g in probe.gpus if g.arch is not None})
    unknown_arch = any(g.arch is None for g in probe.gpus)
    arch_list = ["native"] if unknown_arch else [str(a) for a in archs]
    sm = "native" if unknown_arch else ", ".join(f"sm_{a}" for a in archs)
    toolkit, reason = _toolkit(probe, archs, unknown_arch)
    if toolkit is None:
        if requested == "cuda":
            raise LlamaBuildError(f"RBEE_LLAMA_BACKEND=cuda and nvidia-smi lists {gpus}, but {reason}",
                                  code="LLAMA_CUDA_NO_TOOLKIT")
        decision = Decision("cpu", f"cpu: nvidia-smi lists {gpus}, but {reason}", version, cpu_key)
        decision.warning = f"The GPU stays unused: {reason}"
        return decision

    cmake_args = f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={';'.join(arch_list)}"
    env = {"CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(probe.cores)}
    root = None
    if toolkit == "nvcc":
        assert probe.nvcc
        env["CUDACXX"] = probe.nvcc
        using = f"using {probe.nvcc}" + (f" (CUDA {probe.nvcc_release})" if probe.nvcc_release else "")
    else:
        root = toolkit_dir(toolkit_base)
        home = toolkit_home(root)
        env.update(CUDACXX=f"{home}/bin/nvcc", CUDAToolkit_ROOT=home, CUDA_PATH=home)
        # llama-cpp-python gives its libraries an RPATH of $ORIGIN only, and these libcudart/libcublas are
        # in no system library path: the linker records where they are.
        cmake_args += " " + shlex.quote(f"-DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath,{home}/lib")
        env["CMAKE_ARGS"] = cmake_args
        using = (f"using CUDA {TOOLKIT_CUDA[0]}.{TOOLKIT_CUDA[1]}'s nvcc, runtime and cuBLAS from the package "
                 f"index's nvidia-* wheels ({reason}), kept in {root}")
    minutes = max(3, round((CUDA_CORE_MINUTES_PER_ARCH * max(1, len(archs)) + CPU_CORE_MINUTES) / probe.cores))
    key = f"{version}-cuda-" + ("native" if unknown_arch else "-".join(f"sm{a}" for a in archs))
    return Decision(
        "cuda", f"cuda: nvidia-smi lists {gpus}; building llama.cpp with CUDA for {sm} {using}", version, key,
        cmake_args=cmake_args, env=env, architectures=arch_list, toolkit=toolkit, toolkit_root=root,
        toolkit_wheels=list(TOOLKIT_WHEELS) if toolkit == "wheels" else [],
        estimate=f"about {minutes} minutes on {probe.cores} cores")


def _release_major(release: str | None) -> int | None:
    return int(release.split(".")[0]) if release and release.split(".")[0].isdigit() else None


def _toolkit(probe: Probe, archs: list[int], unknown_arch: bool) -> tuple[str | None, str]:
    """("nvcc" | "wheels" | None, why): an installed nvcc with cuBLAS whose CUDA the driver runs, else
    the package index's CUDA 13 wheels where driver and GPUs allow, else None and what to install."""
    driver_cuda = probe.driver_cuda_major
    nvcc_problem = None
    if probe.nvcc:
        nvcc_major = _release_major(probe.nvcc_release)
        if not probe.cublas:
            nvcc_problem = f"{probe.nvcc} has no cuBLAS beside it (cublas_v2.h)"
        elif nvcc_major and driver_cuda and nvcc_major > driver_cuda:
            nvcc_problem = (f"{probe.nvcc} is CUDA {probe.nvcc_release} and driver {probe.driver} runs CUDA "
                            f"{driver_cuda} at most")
        else:
            return "nvcc", ""
    wheels_problem = None
    if probe.machine not in ("x86_64", "aarch64"):
        wheels_problem = f"the nvidia-* wheels exist for x86_64 and aarch64, not {probe.machine}"
    elif probe.driver_major is None or probe.driver_major < MIN_DRIVER_FOR_WHEELS:
        wheels_problem = (f"the nvidia-* wheels' CUDA {TOOLKIT_CUDA[0]}.{TOOLKIT_CUDA[1]} needs NVIDIA driver "
                          f"{MIN_DRIVER_FOR_WHEELS} or newer, and this one is {probe.driver or 'unknown'}")
    elif unknown_arch or any(a < MIN_ARCH_FOR_WHEELS for a in archs):
        wheels_problem = (f"CUDA {TOOLKIT_CUDA[0]} (the nvidia-* wheels) supports compute capability 7.5 and "
                          "newer only")
    if wheels_problem is None:
        return "wheels", nvcc_problem or "no nvcc is installed"
    have = nvcc_problem or "no nvcc is installed (not on PATH, in CUDA_HOME or /usr/local/cuda/bin)"
    return None, (f"{have}, and {wheels_problem}. Install the CUDA toolkit with cuBLAS for your driver "
                  "(NVIDIA's CUDA installer or your distribution's cuda-toolkit package, so that `nvcc` is on PATH), "
                  "then run the install again; or set RBEE_LLAMA_BACKEND=cpu.")


def toolkit_setup_script(python: str, root: str, find_links: str | None = None) -> str:
    """Shell that installs the CUDA 13 wheels into `root` (with `python`'s pip) and gives them the layout
    FindCUDAToolkit and nvcc.profile expect: targets/<arch>-linux/{include,lib}, lib64, unversioned .so
    names, and lib/stubs/libcuda.so (the driver's). Idempotent; run here by bootstrap.sh, over SSH for a
    remote (with `find_links`: its uploaded wheelhouse, no index)."""
    home = toolkit_home(root)
    source = f"--no-index --find-links {shlex.quote(find_links)} " if find_links else ""
    return f"""set -e
if [ ! -x {shlex.quote(home)}/bin/nvcc ] || [ ! -f {shlex.quote(home)}/include/cublas_v2.h ]; then
  {shlex.quote(python)} -m pip --disable-pip-version-check install -q --upgrade --target {shlex.quote(root)} \
{source}{' '.join(TOOLKIT_WHEELS)}
fi
T={shlex.quote(home)}
case "$(uname -m)" in aarch64) target=sbsa-linux ;; *) target="$(uname -m)-linux" ;; esac
mkdir -p "$T/targets/$target" "$T/lib/stubs"
ln -sfn ../../include "$T/targets/$target/include"
ln -sfn ../../lib "$T/targets/$target/lib"
[ -e "$T/lib64" ] || ln -s lib "$T/lib64"
for so in "$T"/lib/lib*.so.*; do
  base="${{so%%.so.*}}.so"
  [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
done
libcuda=$( (/sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null) | awk '/libcuda\\.so\\.1 /{{print $NF; exit}}')
if [ -n "$libcuda" ]; then ln -sfn "$libcuda" "$T/lib/stubs/libcuda.so"; fi
"$T/bin/nvcc" --version >/dev/null
"""


def pinned_version(root: Path | None = None) -> str:
    """The llama-cpp-python version pyproject.toml pins (bootstrap.sh runs this before rbee is installed)."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        text = (root / "pyproject.toml").read_text()
    except OSError:
        text = ""
    if m := re.search(r'"llama-cpp-python==([^";\s]+)"', text):
        return m[1]
    from importlib import metadata  # an installed rbee without its source tree

    for requirement in metadata.requires("rbee") or []:
        if m := re.match(r"llama-cpp-python\s*==\s*([^;\s]+)", requirement):
            return m[1]
    raise LlamaBuildError("Cannot tell which llama-cpp-python version rbee pins (no pyproject.toml, no rbee "
                          "installed).")


def probe_here(env: dict[str, str] | None = None) -> Probe:
    """Run PROBE_SCRIPT on this machine (a few milliseconds where there is no nvidia-smi)."""
    try:
        done = subprocess.run(["sh", "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=60,
                              env=env if env is not None else os.environ.copy())
    except subprocess.TimeoutExpired:
        raise LlamaBuildError("nvidia-smi did not answer within 60 s; check the NVIDIA driver "
                              "(`nvidia-smi`), or set RBEE_LLAMA_BACKEND=cpu.", code="LLAMA_PROBE_TIMEOUT") from None
    return Probe.parse(done.stdout)


def wheel_cache() -> str:
    """rbee's own wheel cache (bootstrap.sh's RBEE_WHEEL_CACHE): pip's keys a wheel by its source only."""
    return os.environ.get("RBEE_WHEEL_CACHE") or str(Path.home() / ".cache" / "rbee" / "llama-wheels")


def main(argv: list[str]) -> int:
    args = argv[1:] or ["decide"]
    if args[0] != "decide" or any(a not in ("--shell", "--json") for a in args[1:]):
        print("usage: python -m shared.llama_build decide [--shell|--json]", file=sys.stderr)
        return 2
    try:
        base = str(Path(wheel_cache()).parent)
        decision = decide(probe_here(), pinned_version(), toolkit_base=base)
    except LlamaBuildError as error:
        print(error.message, file=sys.stderr)
        return 1
    if "--json" in args:
        print(json.dumps(decision.to_dict()))
    elif "--shell" in args:
        print(decision.shell(), end="")
    else:
        print(decision.why)
        if decision.backend == "cuda":
            print(f"CMAKE_ARGS={decision.cmake_args}\nwheel cache: {wheel_cache()}/{decision.cache_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
