"""How the keeper shows a job: human mode (text on stdout, story on stderr) or --json (JSON lines only)."""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime
from typing import Any, Sequence, TextIO

from shared.events import Data, End, Error, Event, JobState, Narration, Token, event_to_dict
from shared.models import alias_of

_COLORS = {"info": "\033[36m", "warn": "\033[33m", "error": "\033[31m"}
_DIM, _RESET = "\033[2m", "\033[0m"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def ago(then: float, now: float | None = None) -> str:
    """"3 min ago" / "in 2 s": how far a time is from now, as a person says it."""
    delta = (time.time() if now is None else now) - then
    size = abs(delta)
    if size < 1:
        return "just now"
    if size < 60:
        span = f"{size:.0f} s"
    elif size < 3600:
        span = f"{size // 60:.0f} min"
    elif size < 86400:
        span = f"{size / 3600:.0f} h" if size >= 36000 else f"{size / 3600:.1f} h"
    else:
        span = f"{size // 86400:.0f} days" if size >= 2 * 86400 else "1 day"
    return f"{span} ago" if delta > 0 else f"in {span}"


def when(epoch: float, now: float | None = None) -> str:
    """An epoch time as a local date and how long ago it was: "2026-11-23 17:40:01 (3 min ago)"."""
    return f"{datetime.fromtimestamp(epoch):%Y-%m-%d %H:%M:%S} ({ago(epoch, now)})"


def is_time_field(key: str) -> bool:
    return key.endswith(("_at", "_since"))


def human_value(key: str, value: Any, *, empty: str = "-") -> str:
    """A value as a person reads it: no epoch floats, no Python spellings (None, True, ['cpu'])."""
    if value is None or value == [] or value == {}:
        return empty
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and is_time_field(key):
        return when(value)
    if isinstance(value, int) and (key == "size" or key.endswith("_bytes")):
        return _fmt_bytes(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(human_value(key, v, empty=empty) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={human_value(k, v, empty=empty)}" for k, v in value.items())
    return str(value)


def short_id(full_id: str) -> str:
    """"job-1a2b3c4d" for "job-1a2b3c4d-…": enough to name it (the queen takes unique prefixes)."""
    kind, sep, rest = full_id.partition("-")
    return f"{kind}-{rest[:8]}" if sep and len(rest) > 8 else full_id


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], out: TextIO) -> None:
    """A plain aligned table; `columns` are (key, heading); a missing value is an empty cell."""
    if not rows:
        out.write("(none)\n")
        return
    cells = [[heading for _, heading in columns]] + [
        [human_value(key, row.get(key), empty="") for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for k, r in enumerate(cells):
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        out.write((line if k else line.upper()) + "\n")


def key_values(payload: dict[str, Any], out: TextIO, indent: str = "") -> None:
    width = max((len(k) for k in payload), default=0)
    for key, value in payload.items():
        if isinstance(value, dict) and value:
            out.write(f"{indent}{key}:\n")
            key_values(value, out, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out.write(f"{indent}{key}:\n")
            for item in value:
                out.write(f"{indent}  - " + ", ".join(f"{k}={human_value(k, v)}" for k, v in item.items()) + "\n")
        else:
            out.write(f"{indent}{key.ljust(width)}  {human_value(key, value)}\n")


MODEL_COLUMNS = [("alias", "alias"), ("id", "id"), ("size_h", "size"), ("needs_h", "needs"), ("sha256_h", "sha256"),
                 ("state", "state"), ("downloaded", "downloaded"), ("path", "path")]
VERIFY_COLUMNS = [("id", "id"), ("state", "state"), ("size_h", "size"), ("problem", "problem"), ("path", "path")]
WORKER_COLUMNS = [("id", "id"), ("model", "model"), ("state", "state"), ("kind", "kind"), ("device", "device"), ("slots", "slots"),
                  ("threads", "threads"), ("pid", "pid"), ("url", "url")]
QUEEN_WORKER_COLUMNS = [("worker_id", "id"), ("hive_id", "hive"), ("model", "model"), ("state", "state"), ("kind", "kind"),
                        ("device", "device"), ("slots_h", "slots busy"), ("version_h", "version"), ("pid", "pid"),
                        ("url", "url")]
HIVE_COLUMNS = [("alias", "alias"), ("state", "state"), ("version_h", "version"), ("url", "url"), ("pid", "pid")]
JOB_COLUMNS = [("id_h", "job"), ("operation", "operation"), ("state", "state"), ("created_h", "created"),
               ("key", "key"), ("summary", "summary")]  # key: the API key that made it; empty: the queen's token


def version_cell(row: dict[str, Any]) -> str:
    """The rbee a hive or worker runs, marked when it is not the queen's: "0.1.0 (skew)", "0.3.0 INCOMPATIBLE"
    ("?": from before versions were told; empty: not heard from yet)."""
    if row.get("protocol") is None:
        return ""
    version = row.get("version") or "?"
    if row.get("compatible") is False:
        return f"{version} INCOMPATIBLE"
    return f"{version} (skew)" if row.get("skew") else version


def with_version(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "version_h": version_cell(row)}


def settings_table(settings: dict[str, dict[str, Any]], out: TextIO) -> None:
    """`rbee config show`: a setting a line, its value and where it came from ("file, line 3")."""
    rows = []
    for key, said in settings.items():
        value = said.get("value")
        shown = "unset" if value is None else str(value).lower() if isinstance(value, bool) else \
            f"{value:g}" if isinstance(value, float) else str(value)
        source = said.get("source", "?") + (f", line {said['line']}" if said.get("line") else "")
        rows.append((key, shown, source))
    widths = [max(len(r[i]) for r in rows) for i in range(2)] if rows else [0, 0]
    for key, shown, source in rows:
        out.write(f"  {key.ljust(widths[0])}  {shown.ljust(widths[1])}  {source}\n")


def render_data(action: str, payload: Any, out: TextIO) -> None:
    if action == "model_list":
        rows = [{**m, "size_h": _fmt_bytes(m.get("size")), "sha256_h": (m.get("sha256") or "")[:12],
                 "needs_h": needs(m)} for m in payload.get("models", [])]
        table(rows, MODEL_COLUMNS, out)
    elif action == "model_verify":
        rows = [{**m, "size_h": _fmt_bytes(m.get("size"))} for m in payload.get("models", [])]
        table(rows, VERIFY_COLUMNS, out)
    elif action == "model_push":
        for hive in payload.get("hives", []):
            how = ("in place (nothing copied)" if hive.get("in_place") else "already there" if hive.get("already_there")
                   else f"sent {_fmt_bytes(hive.get('sent_bytes'))} at {_fmt_bytes(hive.get('bytes_per_s'))}/s")
            out.write(f"{payload.get('model')} on {hive.get('hive')}: {how}\n")
    elif action == "worker_list":
        table([with_kind(w) for w in payload.get("workers", [])], WORKER_COLUMNS, out)
    elif action == "hive_list":
        table([with_version(h) for h in payload.get("hives", [])], HIVE_COLUMNS, out)
    elif action == "status":
        if queen := payload.get("queen"):
            out.write(f"queen: rbee {queen.get('version')} (protocol {queen.get('protocol')})\n\n")
        out.write("hives\n")
        hives = [with_version(h) for h in payload.get("hives", [])]
        table(hives, HIVE_COLUMNS, out)
        out.write("\nworkers\n")
        workers = [{**with_kind(with_version(w)), "slots_h": f"{w.get('slots_busy', 0)}/{w.get('slots', 1)}"}
                   for w in payload.get("workers", [])]
        table(workers, QUEEN_WORKER_COLUMNS, out)
        jobs = payload.get("jobs", {})
        out.write(f"\njobs: {jobs.get('running', 0)} running, {jobs.get('recent', 0)} recent\n")
        for model, count in sorted((payload.get("waiting_for_a_worker") or {}).items()):
            out.write(f"waiting for a worker of {model}: {count}\n")
        for row in hives + workers:
            if row.get("problem") and row.get("compatible") is False:
                out.write(f"warning: {row['problem']}\n")
    elif action in ("hive_status", "hive_get") and isinstance(payload, dict):
        hive_status(payload, out)
    elif action == "hive_refresh_capabilities" and isinstance(payload, dict):
        capabilities_report(payload, out)
    elif isinstance(payload, dict):
        key_values(payload, out)
    else:
        out.write(json.dumps(payload) + "\n")


def hive_status(payload: dict[str, Any], out: TextIO) -> None:
    """A hive's status as key/values, its GPUs a line each at the end (and what keeps them unused): as
    its capabilities say them, else as its last heartbeat (/health, each second) did."""
    reported = payload.get("gpus_reported")
    payload = {k: v for k, v in payload.items() if k not in ("gpus_reported", "gpus_reported_at")}
    caps = payload.get("capabilities")
    if not isinstance(caps, dict):
        key_values(payload, out)
        if reported:
            gpu_report({"gpus": reported, "gpu_note": "from its heartbeat"}, out,
                       stale=payload.get("state") != "running")
        return
    key_values({**payload, "capabilities": without_gpus(caps)}, out)
    gpu_report(caps, out, stale=payload.get("state") != "running")


def capabilities_report(caps: dict[str, Any], out: TextIO) -> None:
    key_values(without_gpus(caps), out)
    gpu_report(caps, out)


def without_gpus(caps: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in caps.items() if k not in ("gpus", "gpu_note", "gpu_problem")}


def gpu_report(caps: dict[str, Any], out: TextIO, *, stale: bool = False) -> None:
    gpus = caps.get("gpus") or []
    if gpus:
        out.write(f"gpus ({caps.get('gpu_note') or len(gpus)}{', as last reported' if stale else ''}):\n")
        for line in gpu_lines(gpus):
            out.write(f"  {line}\n")
    else:
        out.write(f"gpus  none ({caps.get('gpu_note') or 'not reported'})\n")
    if caps.get("gpu_problem"):
        out.write(f"warning: {caps['gpu_problem']}\n")


def _gib(mb: Any) -> str:
    return f"{mb / 1024:.1f}" if isinstance(mb, (int, float)) else "?"


def gpu_lines(gpus: list[dict[str, Any]]) -> list[str]:
    """A line per GPU, columns aligned: "cuda:0  NVIDIA RTX 4090 (8.9)  free 20.1 of 24.0 GiB  util 35 %"
    ("?" where nvidia-smi could not tell)."""
    rows = []
    for g in gpus:
        cap = g.get("compute_capability")
        util = g.get("utilization_pct")
        rows.append((str(g.get("device", "?")), f"{g.get('name') or 'GPU'}{f' ({cap})' if cap else ''}",
                     f"free {_gib(g.get('memory_free_mb'))} of {_gib(g.get('memory_total_mb'))} GiB",
                     f"util {util if util is not None else '?'} %"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)] + [0]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def gpus_brief(caps: dict[str, Any] | None) -> str:
    """A hive's GPUs in a table cell: "cuda:0 20.1/24.0 GiB 35 %, cuda:1 …" (free of total, utilisation)."""
    gpus = (caps or {}).get("gpus") or []
    if not gpus:
        return "none" if caps else ""
    cells = []
    for g in gpus:
        util = g.get("utilization_pct")
        cells.append(f"{g.get('device')} {_gib(g.get('memory_free_mb'))}/{_gib(g.get('memory_total_mb'))} GiB"
                     + (f" {util} %" if util is not None else ""))
    return ", ".join(cells) + (" (CPU-only llama.cpp)" if caps and caps.get("gpu_problem") else "")


def with_kind(worker: dict[str, Any]) -> dict[str, Any]:
    """What a worker does: embedding workers (--embedding) never generate, generating ones never embed."""
    return {**worker, "kind": "embedding" if worker.get("embedding") else "generate"}


def needs(model: dict[str, Any]) -> str:
    """What a worker of the model needs on its hive (weights, KV cache for its context × slots, compute):
    on each device of the hive's plan when it uses a GPU ("cuda:0 832 MiB + cpu 371 MiB"), else in RAM."""
    estimate = model.get("estimate") or {}
    if "total_mb" not in estimate:
        return "?"
    shape = f"({estimate.get('ctx_size')}×{estimate.get('slots')})"
    plan = model.get("plan") or {}
    if plan.get("code") == "NO_FIT":
        return f"{estimate['total_mb']:.0f} MiB {shape}, no room now"
    per_device = plan.get("needs_mb") or {}
    if plan.get("kind") in (None, "cpu") or not per_device:
        return f"{estimate['total_mb']:.0f} MiB {shape}"
    gpus = [f"{device} {mb:.0f} MiB" for device, mb in per_device.items() if device != "cpu"]
    return " + ".join(gpus + [f"cpu {per_device.get('cpu', 0):.0f} MiB"]) + f" {shape}"


def job_rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        request = job.get("request") or {}
        summary = job.get("about") or request.get("prompt") or request.get("model") or request.get("alias") \
            or request.get("id") or ""
        rows.append({**job, "id_h": short_id(str(job.get("job_id", ""))),
                     "created_h": ago(job.get("created_at") or time.time()), "summary": _cut(summary)})
    return rows


def _cut(text: str, width: int = 40) -> str:
    text = text.replace("\n", " ")
    return text[:width] + ("…" if len(text) > width else "")


def conversation_rows(conversations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**c, "title_h": _cut(c.get("title") or ""), "model_h": alias_of(c["model"]) if c.get("model") else "",
             "updated_h": ago(c["updated_at"]) if c.get("updated_at") else ""} for c in conversations]


def key_rows(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in keys:
        limits = [f"{key[k]:,} {label}" for k, label in (("tokens_per_day", "tokens/day"),
                  ("requests_per_minute", "req/min"), ("max_concurrent", "at once")) if key.get(k)]
        rows.append({**key, "models_h": ",".join(key["models"]) if key.get("models") else "all",
                     "limits_h": ", ".join(limits) or "none", "created_h": ago(key["created_at"]),
                     "used_h": ago(key["last_used_at"]) if key.get("last_used_at") else "never",
                     "expires_h": ago(key["expires_at"]) if key.get("expires_at") else "never"})
    return rows


KEY_COLUMNS = [("name", "name"), ("scope", "scope"), ("models_h", "models"), ("limits_h", "limits"),
               ("tokens_today", "tokens today"), ("created_h", "created"), ("used_h", "last used"),
               ("expires_h", "expires")]
USAGE_COLUMNS = [("day", "day"), ("key", "key"), ("model", "model"), ("requests", "requests"),
                 ("prompt_tokens", "prompt"), ("completion_tokens", "completion"), ("total_tokens", "total")]
CONVERSATION_COLUMNS = [("id", "id"), ("title_h", "title"), ("model_h", "model"), ("message_count", "messages"),
                        ("updated_h", "updated")]
PLAIN_PROGRESS_STEP = 25  # without a terminal, one line per quarter of a download
PROGRESS_ACTIONS = ("download_progress", "transfer_progress")  # drawn as a bar, not printed


def _duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))  # "1 s left" until it is done
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_text(p: dict[str, Any]) -> str:
    """"49.2 MB/98.4 MB 12.0 MB/s, 4 s left": what a download has done and how long it still needs."""
    total, done, rate = p.get("total") or 0, p.get("done") or 0, p.get("bytes_per_s") or 0
    text = f"{_fmt_bytes(done)}/{_fmt_bytes(total) if total else '?'} {_fmt_bytes(rate)}/s"
    if total and rate and done < total:
        text += f", {_duration((total - done) / rate)} left"
    return text


class HumanRenderer:
    """Generated text to stdout and nothing else; narration, progress and stats to stderr."""

    def __init__(self, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr, *, show_data: bool = True) -> None:
        self.out, self.err = stdout, stderr
        self.show_data = show_data  # False for infer: stdout holds the answer and nothing else
        self.color = stderr.isatty()
        self._progress_shown = False
        self._text_ends_line = True  # whether the answer so far ends with a newline (or is empty)
        self._downloading: str | None = None  # the model whose progress this renderer draws itself
        self._plain_step = 0

    def say(self, message: str, level: str = "info") -> None:
        self._end_progress()
        if self.color:
            self.err.write(f"{_DIM}   rbee │{_RESET} {_COLORS.get(level, '')}{message}{_RESET}\n")
        else:
            self.err.write(f"   rbee │ {message}\n")
        self.err.flush()

    def event(self, event: Event) -> None:
        if isinstance(event, Token):
            self.out.write(event.t)
            self.out.flush()
            if event.t:
                self._text_ends_line = event.t.endswith("\n")
        elif isinstance(event, Narration):
            if self._is_drawn_progress(event):
                return  # the bar (or the plain progress lines) already says it
            self._end_progress()
            if self.color:
                self.err.write(f"{_DIM}{event.actor:>7} │{_RESET} {_COLORS[event.level]}{event.human}{_RESET}\n")
            else:
                self.err.write(f"{event.actor:>7} │ {event.human}\n")
            self.err.flush()
        elif isinstance(event, Data):
            if event.action in PROGRESS_ACTIONS:
                self._progress(event.payload)
            elif self.show_data:
                self._end_progress()
                render_data(event.action, event.payload, self.out)
        elif isinstance(event, Error):
            self._end_progress()
            self.say(f"error: {event.message} [{event.code}]", "error")

    def vectors(self, texts: Sequence[str], vectors: Sequence[Any]) -> None:
        """`rbee embed`'s answer: a JSON line per text, for jq and scripts."""
        for index, (text, vector) in enumerate(zip(texts, vectors)):
            self.out.write(json.dumps({"index": index, "text": text, "embedding": vector}) + "\n")
        self.out.flush()

    def end_answer(self) -> None:
        """End the answer with a newline, on screen and in a pipe, unless it ends with one."""
        if not self._text_ends_line:
            self.out.write("\n")
            self.out.flush()
            self._text_ends_line = True

    def end(self, end: End | None, job_id: str) -> None:
        self._end_progress()
        self.end_answer()
        if end is None:
            return
        stats = end.stats
        if "tokens_out" in stats and end.state is JobState.COMPLETED:
            ttft = stats.get("ttft_ms")
            self.say(f"{stats.get('tokens_out')} tokens, {stats.get('tokens_per_s')} tokens/s, first token after "
                     f"{ttft:.0f} ms, on {stats.get('worker_id')} ({stats.get('hive_id')})" if ttft is not None
                     else f"{stats.get('tokens_out')} tokens")
        elif end.state is not JobState.COMPLETED:
            self.say(f"job {job_id} {end.state}", "error" if end.state is JobState.FAILED else "warn")

    def _is_drawn_progress(self, event: Narration) -> bool:
        return (event.action in ("model_download", "model_transfer") and event.level == "info"
                and self._downloading is not None and event.target == self._downloading)

    def _progress(self, p: dict[str, Any]) -> None:
        """On a terminal one bar redrawn in place; otherwise a plain line per quarter, never repeated."""
        if p.get("model") != self._downloading:
            self._downloading, self._plain_step = p.get("model"), 0
        total, done = p.get("total") or 0, p.get("done") or 0
        if not self.err.isatty():
            step = int(100 * done / total) // PLAIN_PROGRESS_STEP * PLAIN_PROGRESS_STEP if total else 0
            if step > self._plain_step:
                self._plain_step = step
                self.err.write(f"   rbee │ {self._downloading or 'download'}: {step}% ({progress_text(p)})\n")
                self.err.flush()
            return
        width = 30
        filled = min(width, int(width * done / total)) if total else 0
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        self.err.write(f"\r   rbee │ [{'#' * filled}{'.' * (width - filled)}] {pct} {progress_text(p)}\033[K")
        self.err.flush()
        self._progress_shown = True

    def _end_progress(self) -> None:
        if self._progress_shown:
            self.err.write("\n")
            self._progress_shown = False


class JsonRenderer:
    """stdout carries JSON only, one object per line; diagnostics go to stderr."""

    def __init__(self, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> None:
        self.out, self.err = stdout, stderr

    def say(self, message: str, level: str = "info") -> None:
        self.err.write(f"rbee: {message}\n")
        self.err.flush()

    def event(self, event: Event) -> None:
        self.line(event_to_dict(event))

    def line(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()

    def end(self, end: End | None, job_id: str) -> None:
        pass


def transcript(conversation: dict[str, Any], out: TextIO) -> None:
    """A stored conversation as a person reads it: what it is, then each message under who said it."""
    model = alias_of(conversation.get("model") or "model")
    messages = conversation.get("messages") or []
    updated = conversation.get("updated_at")
    out.write(" · ".join([str(conversation.get("id")), conversation.get("title") or "(untitled)", model,
                          f"{len(messages)} messages"] + ([f"updated {ago(updated)}"] if updated else [])) + "\n")
    for message in messages:
        who = {"user": "you", "assistant": message.get("model") or model}.get(message["role"], message["role"])
        out.write(f"\n{who}: {message['content']}\n")
