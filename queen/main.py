"""Command line of queen-rbee."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from queen.app import create_app
from queen.config import QueenConfig
from queen.prefix_index import RouteGuard
from shared.daemon import configure_logging, serve
from shared.events import set_default_actor
from shared.paths import RbeePaths
from shared.ports import DEFAULT_QUEEN_PORT
from shared.process import keep_files_private
from shared.settings import (
    Effective,
    SettingsError,
    add_flags,
    config_file,
    describe,
    given_flags,
    read_file,
    resolve,
    values,
)
from shared.tls import TlsError, is_loopback, server_context
from shared.token import load_or_create_token

PROG = "queen-rbee"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The rbee orchestrator: runs jobs (POST /v1/jobs), starts hives, schedules inference "
                               "onto workers. Normally started by `rbee` when it finds no queen. Every setting below "
                               "can also live in rbee.toml in the config directory (`rbee config show`).",
        epilog=f"example: queen-rbee --port {DEFAULT_QUEEN_PORT}")
    add_flags(parser, "queen")
    parser.add_argument("--insecure-http", action="store_true",
                        help="listen beyond loopback without TLS: API keys and prompts cross the network in clear "
                             "text (only on a network you trust)")
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace, paths: RbeePaths) -> dict[str, Effective]:
    """The queen's settings: its flags, then $RBEE_LOCAL_HIVE_PORT, then rbee.toml, then the defaults."""
    try:
        file = read_file(config_file(paths.config_dir))
        return resolve("queen", file, given_flags(args, "queen"), dict(os.environ))
    except SettingsError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    configure_logging(PROG)
    set_default_actor("queen")
    args = parse_args(argv)
    paths = RbeePaths.from_env()
    effective = load_settings(args, paths)
    v = values(effective)
    config = QueenConfig(host=v["host"], port=v["port"], paths=paths, local_hive_port=v["local_hive_port"],
                         max_workers_per_hive=v["max_workers_per_hive"], worker_slots=v["worker_slots"],
                         worker_progress_timeout_s=v["worker_progress_timeout"],
                         worker_idle_timeout_s=v["worker_idle_timeout"], heartbeat_timeout_s=v["heartbeat_timeout"],
                         cache_routing=v["cache_routing"], models_from_hives=v["models_from_hives"],
                         route_guard=RouteGuard(v["route_guard_slots"], v["route_guard_ratio"]),
                         settings=describe(effective))
    if not v["tls_cert"] and not args.insecure_http and not is_loopback(config.host):
        print(f"{PROG}: refusing to listen on {config.host} without TLS: API keys, prompts and answers would cross "
              "the network in clear text. Make a certificate with `rbee queen tls-init` and start with --tls-cert "
              "and --tls-key (it prints the command), or add --insecure-http on a network you trust.", file=sys.stderr)
        sys.exit(2)
    try:
        context = server_context(v["tls_cert"], v["tls_key"]) if v["tls_cert"] else None
    except TlsError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        sys.exit(2)
    keep_files_private()
    config.paths.make_private()
    app = create_app(config, load_or_create_token(config.paths))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(serve(app, prog=PROG, name="queen", host=config.host, port=config.port,
                                   ssl_context=context)))


if __name__ == "__main__":
    main()
