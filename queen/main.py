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
from shared.daemon import configure_logging, daemon_arg_parser, port_number, serve
from shared.events import set_default_actor
from shared.ports import DEFAULT_HIVE_PORT, DEFAULT_QUEEN_PORT
from shared.process import keep_files_private
from shared.tls import TlsError, is_loopback, server_context
from shared.token import load_or_create_token

PROG = "queen-rbee"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = daemon_arg_parser(
        PROG, "The rbee orchestrator: runs jobs (POST /v1/jobs), starts hives, schedules inference onto workers. "
              "Normally started by `rbee` when it finds no queen.",
        f"queen-rbee --port {DEFAULT_QUEEN_PORT}", default_port=DEFAULT_QUEEN_PORT)
    parser.add_argument("--local-hive-port", type=port_number,
                        default=int(os.environ.get("RBEE_LOCAL_HIVE_PORT", "0")),
                        help="port for the local hive it starts (default: a free one, or $RBEE_LOCAL_HIVE_PORT; "
                             f"e.g. {DEFAULT_HIVE_PORT} to adopt a hive a previous queen left running there)")
    parser.add_argument("--max-workers-per-hive", type=int, default=1,
                        help="workers per model on one hive (default 1: its slots serve concurrent requests; "
                             "more wait for a free slot)")
    parser.add_argument("--worker-idle-timeout", type=float, default=900.0, metavar="SECONDS",
                        help="stop workers idle this long (default 900)")
    parser.add_argument("--worker-slots", type=int, metavar="N",
                        help="give each worker of the local hive N fixed slots (requests generated together, as "
                             "llama-server -np N); by default a worker's slots grow with demand (rbee-hive --help)")
    parser.add_argument("--worker-progress-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="a generating worker that sends nothing this long is hung: its request fails and its "
                             "hive stops it (default 20)")
    parser.add_argument("--no-cache-routing", dest="cache_routing", action="store_false",
                        help="route generations by load alone, not to the worker that holds the prompt's KV cache")
    parser.add_argument("--route-guard-slots", type=int, default=RouteGuard.abs_slots, metavar="N",
                        help="cache-aware routing gives way to load when the worker with the cache has more than N "
                             f"busy slots more than the least loaded (default {RouteGuard.abs_slots}) ...")
    parser.add_argument("--route-guard-ratio", type=float, default=RouteGuard.rel, metavar="R",
                        help=f"... and more than R times as many (default {RouteGuard.rel})")
    parser.add_argument("--heartbeat-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="a worker silent this long is lost and never scheduled (default 15)")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM; `rbee queen "
                                                           "tls-init` makes one for this machine) ...")
    parser.add_argument("--tls-key", metavar="FILE", help="... and its private key (PEM)")
    parser.add_argument("--insecure-http", action="store_true",
                        help="listen beyond loopback without TLS: API keys and prompts cross the network in clear "
                             "text (only on a network you trust)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    configure_logging(PROG)
    set_default_actor("queen")
    args = parse_args(argv)
    if args.worker_slots is not None and not 1 <= args.worker_slots <= 64:
        print(f"{PROG}: --worker-slots must be between 1 and 64", file=sys.stderr)
        sys.exit(2)
    if args.worker_progress_timeout < 12:  # more than twice the streams' 5 s keep-alive
        print(f"{PROG}: --worker-progress-timeout must be at least 12 seconds", file=sys.stderr)
        sys.exit(2)
    if args.max_workers_per_hive < 1 or args.worker_idle_timeout <= 0 or args.heartbeat_timeout <= 0:
        print(f"{PROG}: --max-workers-per-hive, --worker-idle-timeout and --heartbeat-timeout must be positive",
              file=sys.stderr)
        sys.exit(2)
    if args.route_guard_slots < 0 or args.route_guard_ratio < 1:
        print(f"{PROG}: --route-guard-slots must be 0 or more and --route-guard-ratio at least 1", file=sys.stderr)
        sys.exit(2)
    config = QueenConfig(host=args.host, port=args.port, local_hive_port=args.local_hive_port,
                         max_workers_per_hive=args.max_workers_per_hive, worker_slots=args.worker_slots,
                         worker_progress_timeout_s=args.worker_progress_timeout,
                         worker_idle_timeout_s=args.worker_idle_timeout, heartbeat_timeout_s=args.heartbeat_timeout,
                         cache_routing=args.cache_routing,
                         route_guard=RouteGuard(args.route_guard_slots, args.route_guard_ratio))
    if bool(args.tls_cert) != bool(args.tls_key):
        print(f"{PROG}: --tls-cert and --tls-key go together (`rbee queen tls-init` makes both)", file=sys.stderr)
        sys.exit(2)
    if not args.tls_cert and not args.insecure_http and not is_loopback(args.host):
        print(f"{PROG}: refusing to listen on {args.host} without TLS: API keys, prompts and answers would cross "
              "the network in clear text. Make a certificate with `rbee queen tls-init` and start with --tls-cert "
              "and --tls-key (it prints the command), or add --insecure-http on a network you trust.", file=sys.stderr)
        sys.exit(2)
    try:
        context = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
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
