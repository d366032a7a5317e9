"""Command line of llm-worker-rbee: validate, load the model in the engine thread, serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from shared.builtin_model import gguf_problem
from shared.daemon import configure_logging, daemon_arg_parser, serve
from shared.errors import RbeeError
from shared.events import set_default_actor
from shared.kv_cache import FLASH_ATTN_DEFAULT, KV_CACHE_DEFAULT, MAX_SLOTS, SLOTS_LIMIT, START_SLOTS, kv_cache_problem
from shared.operations import FLASH_ATTN_MODES, KV_CACHE_TYPES
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
    parser.add_argument("--parallel", type=int, default=0, metavar="N",
                        help="N fixed slots: requests generated together in one batch, each with --ctx-size tokens of "
                             f"KV cache (as llama-server -np N). By default the worker starts with {START_SLOTS} and "
                             "grows to as many as requests wait for, up to --max-parallel, while memory allows")
    parser.add_argument("--draft-max", type=int, default=8, metavar="N",
                        help="speculative decoding: guess up to N tokens ahead by finding the last few tokens earlier in "
                             "the prompt or answer, and keep those the model agrees with (the text is the same; "
                             "answers that repeat their prompt come faster). Only while at most 2 requests generate. "
                             "0 turns it off (default 8)")
    parser.add_argument("--max-parallel", type=int, default=MAX_SLOTS, metavar="N",
                        help=f"the slots a worker without --parallel may grow to (default {MAX_SLOTS})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    parser.add_argument("--gpu-layers", type=int, metavar="N",
                        help="layers to offload to the GPU, the rest stay in RAM (default: every layer with "
                             "--device cuda:N; only with cuda)")
    parser.add_argument("--tensor-split", metavar="A,B,...",
                        help="share of the model on each visible GPU, e.g. 3,1 (split by layer over several "
                             "GPUs; only with cuda)")
    parser.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default=KV_CACHE_DEFAULT,
                        help=f"element type of the KV cache: q8_0 takes about half of f16's memory, q4_0 about a "
                             f"quarter; quantized types need flash attention (default {KV_CACHE_DEFAULT})")
    parser.add_argument("--flash-attn", choices=FLASH_ATTN_MODES, default=FLASH_ATTN_DEFAULT,
                        help=f"llama.cpp's flash attention: auto (where the device supports it), on, off "
                             f"(default {FLASH_ATTN_DEFAULT})")
    parser.add_argument("--prompt-cache-dir", type=Path, metavar="DIR",
                        help="save slots' KV caches here before they are overwritten and when the worker stops, "
                             "and read them back for prompts that start with them (the hive gives each model a "
                             "directory under its own; default: none)")
    parser.add_argument("--prompt-cache-mb", type=int, default=1024, metavar="MB",
                        help="most MiB the prompt caches of every model beside --prompt-cache-dir take together; "
                             "the least recently used go first (default 1024)")
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
    if not 0 <= args.parallel <= SLOTS_LIMIT:
        raise WorkerStartError(f"--parallel must be between 1 and {SLOTS_LIMIT}, not {args.parallel}")
    if not 1 <= args.max_parallel <= SLOTS_LIMIT:
        raise WorkerStartError(f"--max-parallel must be between 1 and {SLOTS_LIMIT}, not {args.max_parallel}")
    if not 0 <= args.draft_max <= 64:
        raise WorkerStartError(f"--draft-max must be between 0 and 64, not {args.draft_max}")
    if args.max_queue < 0:
        raise WorkerStartError(f"--max-queue must not be negative, not {args.max_queue}")
    if args.abandon_after <= 0 or args.heartbeat_interval <= 0:
        raise WorkerStartError("--abandon-after and --heartbeat-interval must be positive")
    if args.queen_url and not args.hive_id:
        raise WorkerStartError("--queen-url needs --hive-id: heartbeats say which hive the worker belongs to")
    if (problem := kv_cache_problem(args.kv_cache_type, args.flash_attn)) is not None:
        raise WorkerStartError(problem[0].upper() + problem[1:])
    if args.prompt_cache_mb < 1:
        raise WorkerStartError(f"--prompt-cache-mb must be 1 or more, not {args.prompt_cache_mb} (leave out "
                               "--prompt-cache-dir to keep no caches)")
    gpu_layers, tensor_split = check_offload(args.device, args.gpu_layers, args.tensor_split)
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
        max_parallel=args.max_parallel,
        draft_max=args.draft_max,
        device=args.device,
        device_name=machine_device(args.device),
        max_queue=args.max_queue,
        abandon_after_s=args.abandon_after,
        heartbeat_interval_s=args.heartbeat_interval,
        exit_with_parent=not args.no_exit_with_parent,
        embedding=args.embedding,
        kv_cache_type=args.kv_cache_type,
        flash_attn=args.flash_attn,
        gpu_layers=gpu_layers,
        tensor_split=tensor_split,
        prompt_cache_dir=args.prompt_cache_dir.expanduser().resolve() if args.prompt_cache_dir else None,
        prompt_cache_bytes=args.prompt_cache_mb << 20,
    )


def check_offload(device: str, gpu_layers: int | None, tensor_split: str | None) -> tuple[int | None, tuple[float, ...]]:
    """--device, --gpu-layers and --tensor-split, checked together: what the GPU build and GPUs allow."""
    if gpu_layers is not None and gpu_layers < 0:
        raise WorkerStartError(f"--gpu-layers must be 0 or more, not {gpu_layers} (leave it out to offload "
                               "every layer)")
    shares = parse_tensor_split(tensor_split) if tensor_split is not None else ()
    if device == "cpu" and (gpu_layers or shares):
        flag = "--gpu-layers" if gpu_layers else "--tensor-split"
        raise WorkerStartError(f"{flag} needs --device cuda:N: on the CPU every layer stays in RAM")
    check_device(device)
    if len(shares) > 1:
        import llama_cpp

        most = min(llama_cpp.llama_max_devices(), visible_gpus() or llama_cpp.llama_max_devices())
        if len(shares) > most:
            raise WorkerStartError(f"--tensor-split names {len(shares)} GPUs; this worker sees {most} "
                                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(all)')})")
    return gpu_layers, shares


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """'3,1' -> (3.0, 1.0): one non-negative share per visible GPU, at least one of them above zero."""
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise WorkerStartError(f"--tensor-split takes numbers separated by commas (e.g. 3,1), not {text!r}") from None
    if any(not math.isfinite(share) or share < 0 for share in shares) or not sum(shares) > 0:
        raise WorkerStartError(f"--tensor-split needs shares of 0 or more, at least one above 0, not {text!r}")
    return shares


def machine_device(device: str) -> str:
    """cuda:N as nvidia-smi numbers the machine's GPUs: a hive pins a worker to its GPUs with
    CUDA_VISIBLE_DEVICES (and CUDA_DEVICE_ORDER=PCI_BUS_ID, nvidia-smi's order), inside which they count
    from cuda:0 again. Reported in /health and heartbeats, so people see the GPU they know."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not device.startswith("cuda:") or not pinned:
        return device
    visible = [part.strip() for part in pinned.split(",")]
    index = int(device.split(":", 1)[1])
    return f"cuda:{visible[index]}" if index < len(visible) and visible[index].isdigit() else device


def visible_gpus() -> int | None:
    """GPUs this process may use: those CUDA_VISIBLE_DEVICES names (a hive pins its workers so), else
    every one nvidia-smi lists (None: unknown)."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return len([part for part in pinned.split(",") if part.strip()])
    return count_nvidia_gpus()


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
    gpus = visible_gpus()
    if gpus is not None and int(m.group(1)) >= gpus:
        raise WorkerStartError(f"--device {device}: this worker sees {gpus} NVIDIA GPU(s) (cuda:0..cuda:{gpus - 1})")


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
