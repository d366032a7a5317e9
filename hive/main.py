"""Command line of rbee-hive."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys

from hive.app import create_app
from hive.config import HiveConfig
from shared.daemon import configure_logging, daemon_arg_parser, serve
from shared.events import set_default_actor
from shared.hive_control import HiveLock, HiveLockBusy
from shared.kv_cache import FLASH_ATTN_DEFAULT, KV_CACHE_DEFAULT, MAX_SLOTS, START_SLOTS, kv_cache_problem
from shared.operations import FLASH_ATTN_MODES, KV_CACHE_TYPES, LOCAL_HIVE
from shared.ports import DEFAULT_HIVE_PORT, DEFAULT_QUEEN_URL
from shared.process import die_with_parent, keep_files_private
from shared.token import load_or_create_token

PROG = "rbee-hive"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = daemon_arg_parser(
        PROG, "Manage models and llm-worker-rbee processes on this machine, driven by the queen over rbee's job API. "
              "Normally started by queen-rbee (locally, or over SSH).",
        f"rbee-hive --hive-id {LOCAL_HIVE} --port {DEFAULT_HIVE_PORT} --queen-url {DEFAULT_QUEEN_URL}",
        default_port=DEFAULT_HIVE_PORT,
        host_help="address to bind (default 127.0.0.1: the queen reaches remote hives through SSH forwards, so "
                  "no hive port needs to be open to the network)")
    parser.add_argument("--hive-id", default=LOCAL_HIVE, help="this hive's name, as the queen knows it")
    parser.add_argument("--queen-url", help="the queen's URL: workers' heartbeats are relayed there (the queen "
                                            "re-tells it when it reconnects)")
    parser.add_argument("--relay-heartbeats", action="store_true",
                        help="workers send heartbeats to this hive, which passes them on to the queen (on a remote "
                             "machine, where the queen's address changes with each SSH connection)")
    parser.add_argument("--worker-stop-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="a worker that has not exited this long after SIGTERM is killed (default 10)")
    parser.add_argument("--worker-slots", type=int, metavar="N",
                        help="give each worker N fixed slots (requests generated together, as llama-server -np N); "
                             f"by default a worker starts with {START_SLOTS} and grows to as many as requests wait for, "
                             f"up to {MAX_SLOTS}, while memory allows")
    parser.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default=KV_CACHE_DEFAULT,
                        help="element type of each worker's KV cache unless a spawn names one: q8_0 takes about half "
                             f"of f16's memory, q4_0 about a quarter; quantized types need flash attention "
                             f"(default {KV_CACHE_DEFAULT})")
    parser.add_argument("--flash-attn", choices=FLASH_ATTN_MODES, default=FLASH_ATTN_DEFAULT,
                        help="llama.cpp's flash attention in each worker unless a spawn says: auto (where the device "
                             f"supports it), on, off (default {FLASH_ATTN_DEFAULT})")
    parser.add_argument("--prompt-cache-mb", type=int, default=1024, metavar="MB",
                        help="disk the workers' saved prompt caches may take, every model's together; a slot's KV "
                             "cache is saved before another conversation overwrites it and when its worker stops, "
                             "and read back by any worker of the model here (default 1024; 0 keeps none)")
    parser.add_argument("--vram-budget-mb", type=int, metavar="MIB",
                        help="plan at most this many MiB on each GPU (default: its free memory less a margin of "
                             "max(5 %%, 256 MiB)); a smaller budget makes large models offload only part of their layers")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit (stopping every worker) when the process that started the hive dies")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    configure_logging(PROG)
    set_default_actor("hive")
    args = parse_args(argv)
    if args.worker_slots is not None and not 1 <= args.worker_slots <= 64:
        print(f"{PROG}: --worker-slots must be between 1 and 64, not {args.worker_slots}", file=sys.stderr)
        sys.exit(2)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", args.hive_id):
        print(f"{PROG}: --hive-id may hold letters, digits, '.', '_' and '-', not {args.hive_id!r}", file=sys.stderr)
        sys.exit(2)
    if (problem := kv_cache_problem(args.kv_cache_type, args.flash_attn)) is not None:
        print(f"{PROG}: {problem}", file=sys.stderr)
        sys.exit(2)
    if args.prompt_cache_mb < 0:
        print(f"{PROG}: --prompt-cache-mb must be 0 (keep none) or more, not {args.prompt_cache_mb}", file=sys.stderr)
        sys.exit(2)
    if args.vram_budget_mb is not None and args.vram_budget_mb < 1:
        print(f"{PROG}: --vram-budget-mb must be 1 or more, not {args.vram_budget_mb}", file=sys.stderr)
        sys.exit(2)
    config = HiveConfig(hive_id=args.hive_id, host=args.host, port=args.port, queen_url=args.queen_url,
                        relay_heartbeats=args.relay_heartbeats, worker_stop_timeout_s=args.worker_stop_timeout,
                        worker_slots=args.worker_slots, worker_kv_cache_type=args.kv_cache_type,
                        worker_flash_attn=args.flash_attn,
                        vram_budget_bytes=None if args.vram_budget_mb is None else args.vram_budget_mb << 20,
                        prompt_cache_mb=args.prompt_cache_mb)
    if args.exit_with_parent:
        die_with_parent()
    keep_files_private()
    config.paths.make_private()
    # One hive per RBEE_HOME, found (and stopped) through this lock, never through a bare pid.
    lock = HiveLock(config.paths.state_dir)
    try:
        lock.acquire()
    except HiveLockBusy as exc:
        print(f"{PROG}: {exc} ({lock.path}); stop it first, or use another RBEE_HOME", file=sys.stderr)
        sys.exit(1)
    app = create_app(config, load_or_create_token(config.paths))
    with contextlib.suppress(KeyboardInterrupt):
        code = asyncio.run(serve(app, prog=PROG, name=config.hive_id, host=config.host, port=config.port,
                                 exit_with_parent=args.exit_with_parent,
                                 on_listening=lambda port: lock.publish(port=port, hive_id=config.hive_id)))
        sys.exit(code)


if __name__ == "__main__":
    main()
