"""rbee: the keeper's command line. Every operation of the queen, a headless --json mode, and a queen
that wakes up by itself when it is not running.

Imports stay light (no Textual) so commands start fast; the TUI is imported only when it opens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any, TextIO

from keeper_tui.chat import TerminalChat
from keeper_tui.errors import KeeperError
from keeper_tui.output import (
    CONVERSATION_COLUMNS,
    JOB_COLUMNS,
    KEY_COLUMNS,
    USAGE_COLUMNS,
    HumanRenderer,
    JsonRenderer,
    conversation_rows,
    job_rows,
    key_rows,
    key_values,
    settings_table,
    table,
    transcript,
)
from keeper_tui.queen_control import (
    default_queen_url,
    ensure_queen,
    queen_api,
    queen_health,
    start_queen,
    stop_queen,
    tls_files,
)
from shared.errors import InvalidRequest, RbeeError, ServerUnreachable, StreamTimeout
from shared.events import End, Error, JobState
from shared.inference import SAMPLING_DEFAULTS, SAMPLING_FIELDS, Generation
from shared.job_client import JobClient
from shared.models import BUILTIN_MODEL
from shared.operations import (
    ANY_HIVE,
    DEVICE_AUTO,
    DRAIN_DEADLINE_S,
    FLASH_ATTN_MODES,
    KV_CACHE_TYPES,
    LOCAL_HIVE,
    Embed,
    Operation,
    parse_operation,
)
from shared.paths import RbeePaths
from shared.ports import DEFAULT_QUEEN_PORT, DEFAULT_QUEEN_URL
from shared.settings import SettingsError, config_file, describe, read_file, resolve
from shared.tls import CERT_DAYS, fingerprint, is_ip, machine_names, make_self_signed, write_private
from shared.token import load_or_create_token
from shared.wire import field_types

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_QUEEN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXAMPLES = """examples:
  rbee infer "Why is the sky blue?"              answer a question (a chat message) on the built-in model
  rbee infer --raw "The capital of France is"    plain text completion, no chat template
  echo "Summarise this" | rbee infer             the prompt from stdin (or `rbee infer -`)
  rbee chat                                      an interactive conversation (/help inside)
  rbee conversations list                        stored conversations; `rbee chat --resume ID` goes on
  rbee keys create NAME --scope infer            an API key for a person or an app (shown once)
  rbee infer --max-tokens 64 --seed 1 "Hello"    sampling options
  rbee --json infer "Hello" | jq .               one JSON object per line, for scripts
  rbee model download hf:org/repo:file.gguf      fetch a model onto the local hive
  rbee model push my.gguf --hive gpu-box         send a model file from this machine to a hive over SSH
  rbee worker list                               workers on the local hive
  rbee status                                    hives, workers and jobs at a glance
  rbee config show                               every setting, and where it came from (rbee.toml, a flag, default)
  rbee queen stop                                stop the queen, its local hive and workers (remote hives keep running)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbee", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Run LLMs on the machines you own. rbee talks to the queen (queen-rbee), which starts hives "
                    "and workers as needed; the queen is started automatically when it is not running.")
    parser.add_argument("--queen-url", default=default_queen_url(),
                        help=f"the queen to talk to (default $RBEE_QUEEN_URL or {DEFAULT_QUEEN_URL})")
    parser.add_argument("--json", action="store_true",
                        help="headless mode: stdout carries only JSON, one object per line, then a result line")
    parser.add_argument("--no-autostart", action="store_true", help="fail instead of starting a queen")
    parser.add_argument("--queen-fingerprint", metavar="SHA256",
                        help="an https queen's certificate must have this SHA-256 fingerprint (default "
                             "$RBEE_QUEEN_FINGERPRINT; a queen on this machine: the certificate tls-init made here)")
    parser.add_argument("--queen-ca", metavar="FILE", help="or: check an https queen's certificate against this CA "
                                                            "file (default $RBEE_QUEEN_CA)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("infer", "Answer a prompt: the text goes to stdout, progress to stderr. The prompt is sent as a "
                         "chat message (the model's own chat template), unless --raw.",
                'rbee infer --model smollm2-135m --max-tokens 64 Why is the sky blue?')
    p.add_argument("prompt", nargs="*", metavar="PROMPT",
                   help="the prompt; several words are joined with spaces; `-`, or none with a pipe on stdin, "
                        "reads it from stdin")
    p.add_argument("--raw", action="store_true", help="send the prompt as plain text to complete, not as a chat")
    p.add_argument("--chat", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("-m", "--model", default=BUILTIN_MODEL, help=f"model reference or alias (default {BUILTIN_MODEL})")
    p.add_argument("--hive", dest="hive_id", help="run on this hive (default: any)")
    p.add_argument("--device", default=None,
                   help="where a worker started for this answer runs: auto (default: a GPU when the model fits "
                        "one, else the CPU), cpu, or cuda:N; a running worker on that kind of device is used first")
    add_sampling_options(p)

    p = command("embed", "Embedding vectors of texts: one JSON line per text on stdout, {\"index\", \"text\", "
                         "\"embedding\"}, computed by an embedding worker of the model (started when none runs).",
                'rbee embed "the first text" "the second" | jq -c .embedding[:4]')
    p.add_argument("texts", nargs="*", metavar="TEXT", help="the texts, one vector each; none with a pipe on stdin "
                                                             "(or `-`): one text per line of stdin")
    p.add_argument("-m", "--model", default=BUILTIN_MODEL, help=f"model reference or alias (default {BUILTIN_MODEL})")
    p.add_argument("--hive", dest="hive_id", help="run on this hive (default: any)")

    p = command("chat", "Talk with a model: each answer streams in, the conversation so far goes with every "
                        "question, and it is stored (resume it with --resume). Inside: /help.",
                "rbee chat --model smollm2-135m")
    p.add_argument("-m", "--model", help=f"model reference or alias (default {BUILTIN_MODEL}, or the resumed "
                                   "conversation's)")
    p.add_argument("--hive", dest="hive_id", help="run on this hive (default: any)")
    p.add_argument("--resume", metavar="ID", help="go on with a stored conversation (a unique prefix of its id)")
    p.add_argument("--verbose", action="store_true", help="show every step of each answer and its token stats")
    add_sampling_options(p)

    p = command("conversations", "List, show or delete stored conversations.", "rbee conversations show conv-1a2b")
    p.add_argument("action", choices=("list", "show", "delete"))
    p.add_argument("id", nargs="?", help="show/delete: the conversation id (a unique prefix is enough)")

    command("status", "Show hives, workers and jobs at a glance.", "rbee status")

    p = command("config", "Show every setting of the queen and the local hive: its value and where it came from "
                          "(a flag, an environment variable, rbee.toml in the config directory, or the default).",
                "rbee config show")
    p.add_argument("action", choices=("show",))

    p = command("queen", "Start, stop or check the queen; tls-init makes a certificate for serving HTTPS beyond "
                         "this machine.", "rbee queen status")
    p.add_argument("action", choices=("start", "stop", "restart", "status", "tls-init"))
    p.add_argument("--name", dest="names", action="append", default=[], metavar="NAME",
                   help="tls-init: another DNS name or IP address the certificate is for (repeatable; this "
                        "machine's names and addresses are always in it)")
    p.add_argument("--force", action="store_true", help="tls-init: replace an existing certificate")

    p = command("hive", "Manage hives: install, start, stop; drain stops one without dropping an answer; upgrade "
                        "installs this rbee on a remote hive and restarts it on it, drained.", "rbee hive upgrade --all")
    p.add_argument("action", choices=("install", "uninstall", "start", "stop", "drain", "upgrade", "list", "get",
                                      "status", "refresh", "import-ssh", "ssh-test"))
    p.add_argument("alias", nargs="?", default=LOCAL_HIVE, help=f"the hive (default {LOCAL_HIVE})")
    p.add_argument("--ssh-config", help="import-ssh: the OpenSSH config file (default ~/.ssh/config)")
    p.add_argument("--hive-port", type=int, help="import-ssh: hive port for imported hosts")
    p.add_argument("--deadline", type=float, metavar="SECONDS", help="drain, upgrade: how long running answers may "
                   f"take to finish there before they continue on another worker (default {DRAIN_DEADLINE_S:g})")
    p.add_argument("--all", action="store_true", help="upgrade: every remote hive, one at a time")

    p = command("worker", "Spawn, list, inspect or stop workers; drain stops one without dropping an answer.",
                "rbee worker spawn --model smollm2-135m")
    p.add_argument("action", choices=("spawn", "list", "get", "delete", "drain"))
    p.add_argument("id", nargs="?", help="get/delete/drain: the worker id")
    p.add_argument("--deadline", type=float, metavar="SECONDS", help="drain: how long its running answers may take "
                   f"to finish before they continue on another worker (default {DRAIN_DEADLINE_S:g})")
    p.add_argument("--hive", dest="hive_id", default=None,
                   help=f"the hive (spawn: default {ANY_HIVE}, wherever there is room; otherwise {LOCAL_HIVE})")
    p.add_argument("--model", default=BUILTIN_MODEL, help=f"spawn: model reference (default {BUILTIN_MODEL})")
    p.add_argument("--device", default=DEVICE_AUTO,
                   help="spawn: auto (default: a GPU when the model fits one, else the CPU), cpu, or cuda:N")
    p.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES,
                   help="spawn: the KV cache's element type (default: the hive's, f16); q8_0 halves its memory")
    p.add_argument("--flash-attn", choices=FLASH_ATTN_MODES,
                   help="spawn: llama.cpp's flash attention (default: the hive's, auto)")
    p.add_argument("--embedding", action="store_true",
                   help="spawn: an embedding worker (serves /v1/embeddings; never generates)")

    p = command("model", "Download, push, copy, list, inspect, verify or delete models on a hive.",
                "rbee model download hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2-135m-instruct-q8_0.gguf\n"
                "  rbee model push ~/models/mistral-7b.Q4_K_M.gguf --hive gpu-box   (resumes if cut; sha256-checked)\n"
                "  rbee model copy mistral-7b.q4_k_m --from gpu-box --to laptop\n"
                "  rbee model verify --hive gpu-box")
    p.add_argument("action", choices=("download", "push", "copy", "list", "get", "verify", "delete"))
    p.add_argument("model", nargs="?", help="download: a reference; push: a .gguf file on this machine; "
                                            "copy/get/delete: a model id or alias; verify: one model (default all)")
    p.add_argument("--hive", dest="hive_id", default=LOCAL_HIVE, help=f"the hive (default {LOCAL_HIVE})")
    p.add_argument("--token-file", metavar="FILE",
                   help="download: a file holding a hub token for a gated or private model (it goes to the hive "
                        "with the job, never into a command line, a log or the job history)")
    p.add_argument("--all", action="store_true", help="push: to every hive, one after the other")
    p.add_argument("--alias", help="download/push: the short name to list the model under (default: the file's name)")
    p.add_argument("--copy", action="store_true",
                   help="push to the local hive: copy the file into its model directory (default: use it in place)")
    p.add_argument("--from", dest="from_hive", metavar="HIVE", help="copy: the hive that has the model")
    p.add_argument("--to", dest="to_hive", metavar="HIVE", help="copy: the hive to copy it to")
    p.add_argument("--bwlimit", type=float, metavar="MB/S", help="push/copy: send at most this many MB per second")

    p = command("jobs", "List, show or cancel the queen's jobs.", "rbee jobs show 1a2b3c4d")
    p.add_argument("action", choices=("list", "show", "cancel"))
    p.add_argument("job_id", nargs="?", help="show/cancel: the job id (a unique prefix is enough)")
    p.add_argument("--all", action="store_true", help="list: read-only jobs too (lists, gets, status)")

    p = command("keys", "Give people and apps their own API key, with a scope and limits, instead of the queen's "
                        "token: create, list, revoke, rotate.",
                "rbee keys create open-webui --scope infer --models smollm2-135m --requests-per-minute 60")
    p.add_argument("action", choices=("create", "list", "revoke", "rotate", "usage"))
    p.add_argument("name", nargs="?", help="the key's name (letters, digits, '.', '_', '-'); usage: only this key's")
    p.add_argument("--since", metavar="YYYY-MM-DD", help="usage: from this day on (default: all kept)")
    p.add_argument("--scope", choices=("infer", "read", "admin"), default="infer",
                   help="create: infer (default: the inference APIs and its own jobs), read (adds status, lists and "
                        "/metrics) or admin (everything)")
    p.add_argument("--models", help="create: the only models it may use, comma-separated (default: all)")
    p.add_argument("--tokens-per-day", type=int, metavar="N", help="create: prompt and answer tokens a day")
    p.add_argument("--requests-per-minute", type=int, metavar="N", help="create: requests a minute")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="create: requests running at once")
    p.add_argument("--expires", metavar="DURATION", help="create: it stops working after this long (90m, 12h, 30d, 2w)")

    command("tui", "Open the terminal UI.", "rbee tui")
    return parser


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """--max-tokens, --temperature, …: one option per sampling field of shared/inference.py."""
    types = field_types(Generation)
    for f in SAMPLING_FIELDS:
        flag = "--" + f.name.replace("_", "-")
        default = "" if f.default is None else f" (default {f.default})"
        if types[f.name] == tuple[str, ...]:
            parser.add_argument(flag, dest=f.name, action="append", help=f"{f.metadata['help']} (repeatable)")
        else:
            parser.add_argument(flag, dest=f.name, type=types[f.name], help=f.metadata["help"] + default)


# How the CLI spells a field of an operation, where that is not --field-name.
OPTION_NAMES = {"hive_id": "--hive", "prompt": "PROMPT", "id": "ID", "alias": "ALIAS", "deadline_s": "--deadline",
                "ssh_config_path": "--ssh-config", "default_hive_port": "--hive-port"}


def option_name(field: str) -> str:
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def operation_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Operation | None:
    """The job operation a command stands for (None: the command is not a job)."""
    c = args.command
    if c == "infer":
        prompt = prompt_from(args.prompt, parser)
        text = {"prompt": prompt} if args.raw else {"messages": [{"role": "user", "content": prompt}]}
        return _parse({"operation": "infer", **text, **infer_fields(args)}, parser)
    if c == "embed":
        body = {"operation": "embed", "input": texts_from(args.texts, parser), "model": args.model}
        if args.hive_id:
            body["hive_id"] = args.hive_id
        return _parse(body, parser)
    if c == "status":
        return _parse({"operation": "status"}, parser)
    if c == "hive":
        name = {"refresh": "hive_refresh_capabilities", "import-ssh": "hive_import_ssh", "ssh-test": "ssh_test"}.get(
            args.action, f"hive_{args.action}")
        if name == "hive_list":
            return _parse({"operation": name}, parser)
        if name == "hive_upgrade":
            target = {"all": True} if args.all else {"alias": args.alias}
            return _parse({"operation": name, **target, **deadline(args)}, parser)
        if name == "hive_drain":
            return _parse({"operation": name, "alias": args.alias, **deadline(args)}, parser)
        if name == "hive_import_ssh":
            body = {"operation": name}
            if args.ssh_config:
                body["ssh_config_path"] = args.ssh_config
            if args.hive_port is not None:
                body["default_hive_port"] = args.hive_port
            return _parse(body, parser)
        return _parse({"operation": name, "alias": args.alias}, parser)
    if c == "worker" and args.action == "drain":
        if not args.id:
            parser.error("worker drain needs a worker id (see `rbee status`)")
        return _parse({"operation": "worker_drain", "id": args.id, **deadline(args)}, parser)
    if c == "worker":
        hive = args.hive_id or (ANY_HIVE if args.action == "spawn" else LOCAL_HIVE)
        body: dict[str, Any] = {"operation": f"worker_{args.action}", "hive_id": hive}
        if args.action == "spawn":
            body.update(model=args.model, device=args.device, embedding=args.embedding)
            body.update({k: v for k, v in (("kv_cache_type", args.kv_cache_type), ("flash_attn", args.flash_attn))
                         if v is not None})
        elif args.action in ("get", "delete"):
            if not args.id:
                parser.error(f"worker {args.action} needs a worker id (see `rbee worker list`)")
            body["id"] = args.id
        return _parse(body, parser)
    if c == "model":
        return model_operation(args, parser)
    return None


MODEL_OPTION_NAMES = {"alias": "--alias", "bwlimit_mb_s": "--bwlimit", "from_hive": "--from", "to_hive": "--to",
                      "path": "PATH", "model": "MODEL"}


def model_operation(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Operation:
    """`rbee model ...`: each action takes only the options that mean something to it."""
    used = {"--all": args.all, "--alias": args.alias, "--copy": args.copy, "--from": args.from_hive,
            "--to": args.to_hive, "--bwlimit": args.bwlimit, "--token-file": args.token_file}
    takes = {"push": {"--all", "--alias", "--copy", "--bwlimit"}, "copy": {"--from", "--to", "--bwlimit"},
             "download": {"--alias", "--token-file"}}.get(args.action, set())
    for option, value in used.items():
        if value not in (None, False) and option not in takes:
            parser.error(f"{option} does not go with `model {args.action}`")
    if args.action == "push":
        if not args.model:
            parser.error("model push needs the path of a .gguf file on this machine")
        body: dict[str, Any] = {"operation": "model_push", "path": os.path.abspath(os.path.expanduser(args.model)),
                                "hive_id": args.hive_id, "all": args.all, "copy": args.copy}
        if args.all and args.hive_id != LOCAL_HIVE:
            parser.error("--all and --hive exclude each other")
        body.update({k: v for k, v in (("alias", args.alias), ("bwlimit_mb_s", args.bwlimit)) if v is not None})
        return _parse(body, parser, MODEL_OPTION_NAMES)
    if args.action == "copy":
        if not args.model or not args.from_hive or not args.to_hive:
            parser.error("model copy needs a model, --from HIVE and --to HIVE")
        body = {"operation": "model_copy", "model": args.model, "from_hive": args.from_hive, "to_hive": args.to_hive}
        if args.bwlimit is not None:
            body["bwlimit_mb_s"] = args.bwlimit
        return _parse(body, parser, MODEL_OPTION_NAMES)
    if args.action == "verify":
        body = {"operation": "model_verify", "hive_id": args.hive_id}
        if args.model:
            body["id"] = args.model
        return _parse(body, parser, MODEL_OPTION_NAMES)
    body = {"operation": f"model_{args.action}", "hive_id": args.hive_id}
    if args.alias:
        body["alias"] = args.alias
    if args.action != "list":
        if not args.model:
            parser.error(f"model {args.action} needs a model "
                         f"{'reference' if args.action == 'download' else 'id'} (see `rbee model list`)")
        body["model" if args.action == "download" else "id"] = args.model
        if args.token_file:
            body["token"] = token_from(args.token_file, parser)
    return _parse(body, parser, MODEL_OPTION_NAMES)


def texts_from(words: list[str], parser: argparse.ArgumentParser, stdin: TextIO | None = None) -> list[str]:
    """`rbee embed`'s texts: the arguments, or a line each from stdin for `-` or none with a pipe."""
    stdin = sys.stdin if stdin is None else stdin
    if words == ["-"] or (not words and stdin is not None and not stdin.isatty()):
        words = [line for line in (stdin.read() if stdin is not None else "").splitlines() if line.strip()]
    if not words:
        parser.error('embed needs texts: as arguments (rbee embed "one text" "another"), or a line each on stdin')
    return words


def token_from(path: str, parser: argparse.ArgumentParser) -> str:
    try:
        token = open(os.path.expanduser(path), encoding="utf-8").read().strip()  # noqa: SIM115
    except OSError as exc:
        parser.error(f"--token-file {path}: {exc.strerror or exc}")
    if not token or len(token.split()) != 1:
        parser.error(f"--token-file {path}: the file must hold one token (as the hub shows it: hf_…), not "
                     f"{'nothing' if not token else 'several words'}")
    return token


def deadline(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.deadline is None else {"deadline_s": args.deadline}


def infer_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The model, hive and sampling options the user gave (the rest keep the operation's defaults)."""
    return {k: getattr(args, k) for k in ("model", "hive_id", "device", *SAMPLING_DEFAULTS)
            if getattr(args, k, None) is not None}


def prompt_from(words: list[str], parser: argparse.ArgumentParser, stdin: TextIO | None = None) -> str:
    """The prompt: the words joined, or stdin for `-` or for no words with a pipe (not a terminal) on stdin."""
    stdin = sys.stdin if stdin is None else stdin
    if words == ["-"] or (not words and stdin is not None and not stdin.isatty()):
        # Ctrl+C while reading stops rbee at once (asyncio.run would only cancel a task that is not waiting);
        # set before saying so, or a quick Ctrl+C would go to asyncio's handler and be lost.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            if stdin is not None and stdin.isatty():
                print("rbee: reading the prompt; end it with Ctrl+D on a line of its own", file=sys.stderr)
            prompt = stdin.read() if stdin is not None else ""
        finally:
            signal.signal(signal.SIGINT, previous)
    else:
        prompt = " ".join(words)
    if not prompt.strip():
        parser.error('the prompt is empty: give it as words (rbee infer "Why is the sky blue?"), '
                     "or pipe it in (echo hi | rbee infer)")
    return prompt.strip("\n")


def _parse(body: dict[str, Any], parser: argparse.ArgumentParser, names: dict[str, str] | None = None) -> Operation:
    model = body.get("model")
    if isinstance(model, str) and model.startswith("file:"):
        # relative to where the user is, not to where the queen and hive happen to run
        body["model"] = "file:" + os.path.abspath(os.path.expanduser(model[len("file:"):] or "."))
    try:
        return parse_operation(body)
    except InvalidRequest as exc:
        name = (names or {}).get(exc.field or "") or option_name(exc.field or "")
        parser.error(f"{name} {exc.problem}" if exc.field and exc.problem else exc.message)
    raise RuntimeError("unreachable: parser.error exits")


class Keeper:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paths = RbeePaths.from_env()
        self.render = JsonRenderer() if args.json else HumanRenderer(show_data=args.command not in ("infer", "embed"))
        self.url = args.queen_url.rstrip("/")
        self._last_error: dict[str, str] | None = None  # of the job run_job follows: its failure result says it

    async def queen_client(self) -> JobClient:
        await ensure_queen(self.url, self.paths, autostart=not self.args.no_autostart, say=self.render.say)
        return queen_api(self.url, load_or_create_token(self.paths))

    async def run_job(self, operation: Operation) -> int:
        client = await self.queen_client()
        async with client:
            job = await client.submit(operation)
            stream = asyncio.ensure_future(self._follow(client, job.job_id))
            loop = asyncio.get_running_loop()
            interrupted = asyncio.Event()

            def on_sigint() -> None:
                interrupted.set()
                stream.cancel()

            loop.add_signal_handler(signal.SIGINT, on_sigint)
            try:
                end = await stream
            except asyncio.CancelledError:
                if not interrupted.is_set():
                    raise
                end = None
            except BrokenPipeError:  # `rbee infer … | head -c 50`: the reader has what it wanted
                with contextlib.suppress(RbeeError):  # it may have ended already
                    await client.cancel(job.job_id)
                raise
            except (ServerUnreachable, StreamTimeout) as exc:  # the queen was there a moment ago
                raise KeeperError(f"The queen at {self.url} went away while job {job.job_id} ran ({exc.message}). "
                                  f"Its log is {self.paths.log_dir / 'queen.log'}.") from exc
            finally:
                loop.remove_signal_handler(signal.SIGINT)
            if interrupted.is_set():
                summary = await client.cancel(job.job_id)
                self.render.end(None, job.job_id)
                self.render.say(f"interrupted: cancelled job {job.job_id} on the queen "
                                f"(now {summary.get('state')})", "warn")
                self._result(job.job_id, "cancelled", {})
                return EXIT_INTERRUPTED
            state = end.state if end else JobState.FAILED
            self.render.end(end, job.job_id)
            result = dict(end.stats) if end else {}
            if isinstance(operation, Embed) and state is JobState.COMPLETED and not self.args.json:
                self.render.vectors(operation.input, result.get("embeddings") or [])
            if state is JobState.FAILED:
                result["error"] = self._last_error or (await client.get(job.job_id)).get("error")
            self._result(job.job_id, state, result)
            return EXIT_OK if state == JobState.COMPLETED else EXIT_FAILED

    async def _follow(self, client: JobClient, job_id: str) -> End | None:
        end = None
        async for event in client.stream(job_id):
            self.render.event(event)
            if isinstance(event, Error):
                self._last_error = {"code": event.code, "message": event.message}
            elif isinstance(event, End):
                end = event
        return end

    def _result(self, job_id: str, state: str, stats: dict[str, Any]) -> None:
        if isinstance(self.render, JsonRenderer):
            self.render.line({"type": "result", "job_id": job_id, "state": str(state), **stats})

    def tls_init(self) -> int:
        cert_path, key_path = tls_files(self.paths)
        if cert_path.exists() and not self.args.force:
            raise KeeperError(f"{cert_path} exists (fingerprint {fingerprint(cert_path.read_bytes())}); "
                              "--force makes a new one, and every client pinned to the old one must be told.")
        names, addresses = machine_names()
        for extra in self.args.names:
            (addresses if is_ip(extra) else names).append(extra)
        cert, key = make_self_signed(names, addresses)
        write_private(key_path, key)
        write_private(cert_path, cert)
        sha = fingerprint(cert)
        self.render.say(f"made a certificate for {', '.join(names + addresses)} (valid {CERT_DAYS} days)")
        if not isinstance(self.render, JsonRenderer):
            print(f"""certificate  {cert_path}
key          {key_path} (0600)
SHA-256      {sha}

Serve HTTPS on every interface:
  queen-rbee --host 0.0.0.0 --tls-cert {cert_path} --tls-key {key_path}
A teammate's rbee (with a key from `rbee keys create`):
  RBEE_QUEEN_URL=https://{names[1] if len(names) > 1 else 'HOST'}:{DEFAULT_QUEEN_PORT} RBEE_QUEEN_FINGERPRINT={sha}
Other clients (curl --cacert, OpenAI/Anthropic clients via SSL_CERT_FILE) can trust {cert_path} as a CA.""")
            return EXIT_OK
        return self._emit({"certificate": str(cert_path), "key": str(key_path), "fingerprint": sha,
                           "names": names, "addresses": addresses})

    async def queen_command(self, action: str) -> int:
        if action == "tls-init":
            return self.tls_init()
        if action == "start":
            health = await queen_health(self.url)
            if health is None:
                await start_queen(self.url, self.paths, self.render.say)
            else:
                self.render.say(f"queen is already running at {self.url}")
            return self._emit({"queen_url": self.url, "state": "running"})
        if action == "stop":
            stopped = await stop_queen(self.url, load_or_create_token(self.paths), self.render.say)
            self.render.say("queen stopped" if stopped else f"no queen was running at {self.url}")
            return self._emit({"queen_url": self.url, "state": "stopped"})
        if action == "restart":  # onto the code installed now; remote hives keep running and are adopted again
            if await stop_queen(self.url, load_or_create_token(self.paths), self.render.say):
                self.render.say("queen stopped")
            await start_queen(self.url, self.paths, self.render.say)
            return self._emit({"queen_url": self.url, "state": "running"})
        health = await queen_health(self.url)
        if health is None:
            self.render.say(f"no queen is running at {self.url}", "warn")
            self._emit({"queen_url": self.url, "state": "stopped"}, human=False)
            return EXIT_NO_QUEEN
        async with queen_api(self.url, load_or_create_token(self.paths)) as client:
            info = await client.request("GET", "/v1/info")
        return self._emit({"queen_url": self.url, "state": "running", **info})

    async def jobs_command(self, action: str, job_id: str | None) -> int:
        client = await self.queen_client()
        async with client:
            if action == "list":
                jobs = await client.list(all=self.args.all)
                if isinstance(self.render, JsonRenderer):
                    return self._emit({"jobs": jobs})
                table(job_rows(jobs), JOB_COLUMNS, sys.stdout)
                return EXIT_OK
            assert job_id
            record = await client.get(job_id) if action == "show" else await client.cancel(job_id)
            if action == "cancel":
                self.render.say(f"job {record.get('job_id', job_id)} is {record.get('state')}")
            return self._emit(record)

    async def conversations_command(self, action: str, conv_id: str | None) -> int:
        client = await self.queen_client()
        async with client:
            if action == "list":
                conversations = await client.conversations()
                if isinstance(self.render, JsonRenderer):
                    return self._emit({"conversations": conversations})
                table(conversation_rows(conversations), CONVERSATION_COLUMNS, sys.stdout)
                return EXIT_OK
            assert conv_id
            if action == "delete":
                deleted = await client.delete_conversation(conv_id)
                self.render.say(f"deleted conversation {deleted.get('deleted', conv_id)}")
                return self._emit(deleted, human=False)
            conversation = await client.conversation(conv_id)
            if isinstance(self.render, JsonRenderer):
                return self._emit(conversation)
            transcript(conversation, sys.stdout)
            return EXIT_OK

    async def keys_command(self, action: str, name: str | None) -> int:
        client = await self.queen_client()
        async with client:
            if action == "list":
                keys = await client.keys()
                if isinstance(self.render, JsonRenderer):
                    return self._emit({"keys": keys})
                table(key_rows(keys), KEY_COLUMNS, sys.stdout)
                return EXIT_OK
            if action == "usage":
                rows = await client.key_usage(name, self.args.since)
                if isinstance(self.render, JsonRenderer):
                    return self._emit({"usage": rows})
                table(rows, USAGE_COLUMNS, sys.stdout)
                return EXIT_OK
            assert name
            if action == "revoke":
                revoked = await client.revoke_key(name)
                ended = revoked.get("jobs_ended") or 0
                self.render.say(f"revoked key {name}" + (f"; ended its {ended} running job(s)" if ended else ""))
                return self._emit(revoked, human=False)
            if action == "create":
                settings = {"name": name, "scope": self.args.scope, "models": self.args.models,
                            "expires": self.args.expires, "tokens_per_day": self.args.tokens_per_day,
                            "requests_per_minute": self.args.requests_per_minute,
                            "max_concurrent": self.args.max_concurrent}
                made = await client.create_key({k: v for k, v in settings.items() if v is not None})
            else:
                made = await client.rotate_key(name)
            if isinstance(self.render, JsonRenderer):
                return self._emit(made)
            key = made["key"]
            self.render.say(f"{'created' if action == 'create' else 'rotated'} key {key['name']} (scope {key['scope']}); "
                            "it is shown this once: the queen keeps only its hash")
            print(made["secret"])  # stdout: `KEY=$(rbee keys create app)` takes it
            return EXIT_OK

    async def config_command(self) -> int:
        """The running queen's settings (and its local hive's), or, with no queen, what one would start with."""
        path = config_file(self.paths.config_dir)
        try:
            file = read_file(path)
            from_file = {"queen": describe(resolve("queen", file, environ=dict(os.environ))),
                         "hive": describe(resolve("hive", file))}
        except SettingsError as exc:
            raise KeeperError(exc.message) from None
        shown: dict[str, Any] = {"file": str(path), "exists": path.exists()}
        if await queen_health(self.url) is not None:
            async with queen_api(self.url, load_or_create_token(self.paths)) as client:
                running = await client.request("GET", "/v1/config")
            shown["queen"] = running.get("queen") or from_file["queen"]
            shown["queen_from"] = f"the queen running at {self.url}" if running.get("queen") else \
                f"the queen at {self.url} does not tell its settings (an older rbee): rbee.toml and the defaults"
            shown["hive"] = running.get("hive") or from_file["hive"]
            shown["hive_from"] = "its local hive" if running.get("hive") else \
                "no local hive runs: what one would start with (rbee.toml and the defaults)"
        else:
            shown.update(queen=from_file["queen"], hive=from_file["hive"],
                         queen_from=f"no queen runs at {self.url}: what one would start with (its flags come first)",
                         hive_from="what the local hive would start with")
        if isinstance(self.render, JsonRenderer):
            return self._emit(shown)
        there = "" if shown["exists"] else " (not there: every setting below is a default, a flag or the environment)"
        print(f"rbee.toml  {path}{there}")
        for section in ("queen", "hive"):
            print(f"\n[{section}]  {shown[f'{section}_from']}")
            settings_table(shown[section], sys.stdout)
        return EXIT_OK

    def _emit(self, payload: dict[str, Any], human: bool = True) -> int:
        if isinstance(self.render, JsonRenderer):
            self.render.line({"type": "result", **payload})
        elif human:
            key_values(payload, sys.stdout)
        return EXIT_OK


async def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    keeper = Keeper(args)
    if args.command == "queen":
        return await keeper.queen_command(args.action)
    if args.command == "config":
        return await keeper.config_command()
    if args.command == "jobs":
        if args.action != "list" and not args.job_id:
            parser.error(f"jobs {args.action} needs a job id (see `rbee jobs list`)")
        return await keeper.jobs_command(args.action, args.job_id)
    if args.command == "conversations":
        if args.action != "list" and not args.id:
            parser.error(f"conversations {args.action} needs a conversation id (see `rbee conversations list`)")
        return await keeper.conversations_command(args.action, args.id)
    if args.command == "keys":
        if args.action not in ("list", "usage") and not args.name:
            parser.error(f"keys {args.action} needs the key's name (see `rbee keys list`)")
        return await keeper.keys_command(args.action, args.name)
    if args.command == "chat":
        if args.json:
            parser.error("rbee chat has no --json mode; scripts can use `rbee --json infer`")
        # A bad option is a usage error before anything starts; a file: model is made absolute.
        checked = _parse({"operation": "infer", "prompt": "-", **infer_fields(args)}, parser)
        sampling = {k: getattr(args, k) for k in SAMPLING_DEFAULTS if getattr(args, k) is not None}
        client = await keeper.queen_client()
        async with client:
            chat = TerminalChat(client, model=checked.model if args.model else None, hive_id=args.hive_id,
                        sampling=sampling, verbose=args.verbose, history_file=keeper.paths.state_dir / "chat_history")
            return await chat.run(resume=args.resume)
    operation = operation_for(args, parser)
    assert operation is not None
    return await keeper.run_job(operation)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the TLS check of an https queen: every client the keeper makes reads these (queen_control.queen_ssl)
    if args.queen_fingerprint:
        os.environ["RBEE_QUEEN_FINGERPRINT"] = args.queen_fingerprint
    if args.queen_ca:
        os.environ["RBEE_QUEEN_CA"] = args.queen_ca
    if args.command is None or args.command == "tui":
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            if args.command is None:
                parser.print_help()
            else:
                print("rbee: the terminal UI needs a terminal; use the subcommands (rbee --help).", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        from keeper_tui.tui.app import run_tui  # Textual is imported only here

        run_tui(args.queen_url, autostart=not args.no_autostart)
        sys.exit(EXIT_OK)
    try:
        code = asyncio.run(dispatch(args, parser))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    except BrokenPipeError:  # `rbee jobs list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail too
        code = EXIT_OK
    except KeeperError as exc:
        print(f"rbee: {exc.message}", file=sys.stderr)
        code = exc.exit_code
    except RbeeError as exc:  # the queen answered an error, or is unreachable
        print(f"rbee: {exc.message}", file=sys.stderr)
        code = EXIT_NO_QUEEN if exc.code == "SERVER_UNREACHABLE" else EXIT_FAILED
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
