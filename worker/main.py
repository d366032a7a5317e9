"""Command line of llm-worker-rbee: validate, load the model in the engine thread, serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

from shared.builtin_model import gguf_problem
from shared.daemon import configure_logging, daemon_arg_parser, serve
from shared.errors import RbeeError
from shared.events import set_default_actor
from shared.ports import DEFAULT_QUEEN_URL
from shared.process import die_with_parent, keep_files_private
from shared.token import load_or_create_token
from worker.app import create_app
from worker.appkeys import ENGINE
from worker.config import WorkerConfig, all_cores
from worker.errors import WorkerStartError

PROG = "llm-worker-rbee"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = daemon_arg_parser(
        PROG, "Serve one GGUF model through llama.cpp with rbee's inference API (POST /v1/inference, then stream "
              "its tokens over SSE). Normally started by rbee-hive.",
        "llm-worker-rbee --worker-id w1 --model ./model.gguf --model-ref smollm2-135m --port 0", default_port=0)
    parser.add_argument("--worker-id", required=True, help="this worker's id, as the hive and queen know it")
    parser.add_argument("--model", required=True, type=Path, help="path to the GGUF file")
    parser.add_argument("--model-ref", help="the model's reference (e.g. smollm2-135m); defaults to the file name")
    parser.add_argument("--queen-url", help=f"send heartbeats to this URL: the queen (e.g. {DEFAULT_QUEEN_URL}), or the "
                                            "hive, which relays them")
    parser.add_argument("--hive-id", help="the hive this worker belongs to (sent with heartbeats)")
    parser.add_argument("--threads", type=int, default=0,
                        help=f"llama.cpp threads; default: all cores ({all_cores()} here)")
    parser.add_argument("--ctx-size", type=int, default=2048,
                        help="context of each slot in tokens, prompt and answer (default 2048, at most the "
                             "model's trained context)")
    parser.add_argument("--parallel", type=int, default=4,
                        help="slots: requests generated together in one batch (default 4)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    parser.add_argument("--max-queue", type=int, default=8,
                        help="requests that may wait for a free slot; more get 503 (default 8)")
    parser.add_argument("--abandon-after", type=float, default=5.0, metavar="SECONDS",
                        help="cancel a generation once nobody has read its stream for this long (default 5)")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between heartbeats to the queen (default 5)")
    parser.add_argument("--embedding", action="store_true",
                        help="serve embeddings (POST /v1/embeddings) instead of generating text")
    parser.add_argument("--no-exit-with-parent", action="store_true",
                        help="keep running when the parent process dies (by default the worker exits)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> WorkerConfig:
    if args.threads < 0:
        raise WorkerStartError(f"--threads must be positive, not {args.threads}")
    if args.ctx_size < 16:
        raise WorkerStartError(f"--ctx-size must be at least 16, not {args.ctx_size}")
    if not 1 <= args.parallel <= 64:
        raise WorkerStartError(f"--parallel must be between 1 and 64, not {args.parallel}")
    if args.max_queue < 0:
        raise WorkerStartError(f"--max-queue must not be negative, not {args.max_queue}")
    if args.abandon_after <= 0 or args.heartbeat_interval <= 0:
        raise WorkerStartError("--abandon-after and --heartbeat-interval must be positive")
    if args.queen_url and not args.hive_id:
        raise WorkerStartError("--queen-url needs --hive-id: heartbeats say which hive the worker belongs to")
    check_device(args.device)
    model: Path = args.model.expanduser()
    if (problem := gguf_problem(model)) is not None:
        raise WorkerStartError(f"model file {model} {problem}")
    return WorkerConfig(
        worker_id=args.worker_id,
        model_path=model.resolve(),
        model_ref=args.model_ref or model.name,
        host=args.host,
        port=args.port,
        queen_url=args.queen_url,
        hive_id=args.hive_id,
        threads=args.threads,
        ctx_size=args.ctx_size,
        parallel=args.parallel,
        device=args.device,
        max_queue=args.max_queue,
        abandon_after_s=args.abandon_after,
        heartbeat_interval_s=args.heartbeat_interval,
        exit_with_parent=not args.no_exit_with_parent,
        embedding=args.embedding,
    )


def check_device(device: str) -> None:
    if device == "cpu":
        return
    m = re.fullmatch(r"cuda:(\d+)", device)
    if not m:
        raise WorkerStartError(f"--device must be cpu or cuda:N, not {device!r}")
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        raise WorkerStartError(
            f"--device {device}: this llama-cpp-python build has no GPU support. Rebuild it with "
            "CMAKE_ARGS='-DGGML_CUDA=on' pip install --no-cache-dir --force-reinstall llama-cpp-python, "
            "or use --device cpu")
    gpus = count_nvidia_gpus()
    if gpus is not None and int(m.group(1)) >= gpus:
        raise WorkerStartError(f"--device {device}: this machine has {gpus} NVIDIA GPU(s) (cuda:0..cuda:{gpus - 1})")


def count_nvidia_gpus() -> int | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


async def run(config: WorkerConfig) -> int:
    app = create_app(config, load_or_create_token())

    async def load_failed() -> str:
        """Fatal: the model did not load, or the engine failed later (the hive then sees a crash)."""
        engine = app[ENGINE]
        assert engine.loaded is not None and engine.died is not None  # the app's start-up started it
        if await engine.loaded:
            return await engine.died
        return engine.load_error or "the model did not load"

    return await serve(app, prog=PROG, name=config.worker_id, host=config.host, port=config.port,
                       fatal=load_failed,
                       exit_with_parent=config.exit_with_parent)


def main(argv: list[str] | None = None) -> None:
    configure_logging(PROG)
    set_default_actor("worker")
    args = parse_args(argv)
    try:
        config = build_config(args)
    except RbeeError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        sys.exit(2)
    keep_files_private()
    if config.exit_with_parent:
        die_with_parent()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run(config)))


if __name__ == "__main__":
    main()
