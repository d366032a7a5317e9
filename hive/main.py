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
from shared.operations import LOCAL_HIVE
from shared.paths import RbeePaths
from shared.ports import DEFAULT_HIVE_PORT, DEFAULT_QUEEN_URL
from shared.process import die_with_parent, keep_files_private
from shared.settings import SettingsError, add_flags, config_file, describe, given_flags, read_file, resolve, values
from shared.token import load_or_create_token

PROG = "rbee-hive"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = daemon_arg_parser(
        PROG, "Manage models and llm-worker-rbee processes on this machine, driven by the queen over rbee's job API. "
              "Normally started by queen-rbee (locally, or over SSH). The worker settings below can also live in "
              "rbee.toml in the config directory, under [hive].",
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
    add_flags(parser, "hive")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit (stopping every worker) when the process that started the hive dies")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    configure_logging(PROG)
    set_default_actor("hive")
    args = parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", args.hive_id):
        print(f"{PROG}: --hive-id may hold letters, digits, '.', '_' and '-', not {args.hive_id!r}", file=sys.stderr)
        sys.exit(2)
    paths = RbeePaths.from_env()
    try:
        effective = resolve("hive", read_file(config_file(paths.config_dir)), given_flags(args, "hive"))
    except SettingsError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        sys.exit(2)
    v = values(effective)
    config = HiveConfig(hive_id=args.hive_id, host=args.host, port=args.port, queen_url=args.queen_url, paths=paths,
                        relay_heartbeats=args.relay_heartbeats, worker_stop_timeout_s=v["worker_stop_timeout"],
                        worker_slots=v["worker_slots"], worker_ctx_size=v["worker_ctx_size"],
                        worker_kv_cache_type=v["kv_cache_type"], worker_flash_attn=v["flash_attn"],
                        vram_budget_bytes=None if v["vram_budget_mb"] is None else v["vram_budget_mb"] << 20,
                        prompt_cache_mb=v["prompt_cache_mb"], settings=describe(effective))
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
