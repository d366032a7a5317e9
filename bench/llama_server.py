"""The peer for speed: `llama-server` built from the llama.cpp that llama-cpp-python's sdist vendors
(the same kernels rbee's workers run), built once with every core into a cache outside the repo.

    .venv/bin/python bench/llama_server.py        # builds if needed, prints the binary's path
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("RBEE_BENCH_CACHE", Path.home() / ".cache" / "rbee-bench"))


def llama_cpp_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def workers_use_amx() -> bool:
    """Whether the llama.cpp rbee's workers load was built with AMX (bootstrap.sh builds it without where
    AMX faults): llama-server is built the same way, so both run the same kernels."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def llama_server_binary() -> Path:
    """The path of a built llama-server, building it the first time (about 10 minutes on 2 cores)."""
    version = llama_cpp_version()
    amx = workers_use_amx()
    root = CACHE / f"llama-cpp-python-{version}{'' if amx else '-noamx'}"
    binary = root / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    sdist = CACHE / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"[bench] downloading the llama-cpp-python {version} sdist", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(CACHE)], check=True)
    source = root / "src"
    if not (source / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        source.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                member.name = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.name:
                    tar.extract(member, source, filter="data")
    cores = str(os.cpu_count() or 2)
    print(f"[bench] building llama-server with {cores} cores into {root / 'build'} (once)", file=sys.stderr)
    flags = [] if amx else [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    subprocess.run(["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(root / "build"),
                    "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_OPENSSL=OFF", *flags],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", cores],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


if __name__ == "__main__":
    print(llama_server_binary())
