"""How the keeper shows a job: human mode (text on stdout, story on stderr) or --json (JSON lines only)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from shared.events import Data, End, Error, Event, JobState, Narration, Token, event_to_dict

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


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], out: TextIO) -> None:
    """A plain aligned table; `columns` are (key, heading)."""
    if not rows:
        out.write("(none)\n")
        return
    cells = [[heading for _, heading in columns]] + [
        ["" if row.get(key) is None else str(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for k, r in enumerate(cells):
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        out.write((line if k else line.upper()) + "\n")


def key_values(payload: dict[str, Any], out: TextIO, indent: str = "") -> None:
    width = max((len(k) for k in payload), default=0)
    for key, value in payload.items():
        if isinstance(value, dict):
            out.write(f"{indent}{key}:\n")
            key_values(value, out, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out.write(f"{indent}{key}:\n")
            for item in value:
                out.write(f"{indent}  - " + ", ".join(f"{k}={v}" for k, v in item.items()) + "\n")
        else:
            out.write(f"{indent}{key.ljust(width)}  {value}\n")


MODEL_COLUMNS = [("id", "id"), ("size_h", "size"), ("needs_h", "needs"), ("sha256_h", "sha256"),
                 ("downloaded", "downloaded"), ("path", "path")]
WORKER_COLUMNS = [("id", "id"), ("model", "model"), ("state", "state"), ("device", "device"), ("slots", "slots"),
                  ("threads", "threads"), ("pid", "pid"), ("url", "url")]
QUEEN_WORKER_COLUMNS = [("worker_id", "id"), ("hive_id", "hive"), ("model", "model"), ("state", "state"),
                        ("device", "device"), ("slots_h", "slots busy"), ("pid", "pid"), ("url", "url")]
HIVE_COLUMNS = [("alias", "alias"), ("state", "state"), ("url", "url"), ("pid", "pid")]
JOB_COLUMNS = [("job_id", "job"), ("operation", "operation"), ("state", "state"), ("age", "age"),
               ("summary", "summary")]


def render_data(action: str, payload: Any, out: TextIO) -> None:
    if action == "model_list":
        rows = [{**m, "size_h": _fmt_bytes(m.get("size")), "sha256_h": (m.get("sha256") or "")[:12],
                 "needs_h": needs(m)} for m in payload.get("models", [])]
        table(rows, MODEL_COLUMNS, out)
    elif action == "worker_list":
        table(payload.get("workers", []), WORKER_COLUMNS, out)
    elif action == "hive_list":
        table(payload.get("hives", []), HIVE_COLUMNS, out)
    elif action == "status":
        out.write("hives\n")
        table(payload.get("hives", []), HIVE_COLUMNS, out)
        out.write("\nworkers\n")
        workers = [{**w, "slots_h": f"{w.get('slots_busy', 0)}/{w.get('slots', 1)}"} for w in payload.get("workers", [])]
        table(workers, QUEEN_WORKER_COLUMNS, out)
        jobs = payload.get("jobs", {})
        out.write(f"\njobs: {jobs.get('running', 0)} running, {jobs.get('recent', 0)} recent\n")
        for model, count in sorted((payload.get("waiting_for_a_worker") or {}).items()):
            out.write(f"waiting for a worker of {model}: {count}\n")
    elif isinstance(payload, dict):
        key_values(payload, out)
    else:
        out.write(json.dumps(payload) + "\n")


def needs(model: dict[str, Any]) -> str:
    """What a worker of the model needs on its hive (weights, KV cache for its context × slots, compute)."""
    estimate = model.get("estimate") or {}
    if "total_mb" not in estimate:
        return "?"
    return f"{estimate['total_mb']:.0f} MiB ({estimate.get('ctx_size')}×{estimate.get('slots')})"


def job_rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = time.time()
    rows = []
    for job in jobs:
        request = job.get("request") or {}
        summary = job.get("about") or request.get("prompt") or request.get("model") or request.get("alias") \
            or request.get("id") or ""
        summary = summary.replace("\n", " ")
        rows.append({**job, "age": _age(now - (job.get("created_at") or now)),
                     "summary": summary[:40] + ("…" if len(summary) > 40 else "")})
    return rows


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class HumanRenderer:
    """Generated text to stdout and nothing else; narration, progress and stats to stderr."""

    def __init__(self, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr, *, show_data: bool = True) -> None:
        self.out, self.err = stdout, stderr
        self.show_data = show_data  # False for infer: stdout holds the answer and nothing else
        self.color = stderr.isatty()
        self._progress_shown = False
        self._wrote_text = False

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
            self._wrote_text = True
        elif isinstance(event, Narration):
            self._end_progress()
            if self.color:
                self.err.write(f"{_DIM}{event.actor:>7} │{_RESET} {_COLORS[event.level]}{event.human}{_RESET}\n")
            else:
                self.err.write(f"{event.actor:>7} │ {event.human}\n")
            self.err.flush()
        elif isinstance(event, Data):
            if event.action == "download_progress":
                self._progress(event.payload)
            elif self.show_data:
                self._end_progress()
                render_data(event.action, event.payload, self.out)
        elif isinstance(event, Error):
            self._end_progress()
            self.say(f"error: {event.message} [{event.code}]", "error")

    def end(self, end: End | None, job_id: str) -> None:
        self._end_progress()
        if self._wrote_text and self.out.isatty():
            self.err.write("\n")  # end the answer's line on screen without adding to the answer itself
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

    def _progress(self, p: dict[str, Any]) -> None:
        total, done = p.get("total") or 0, p.get("done") or 0
        if not self.err.isatty():
            return  # narration already reports progress in lines
        width = 30
        filled = int(width * done / total) if total else 0
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        self.err.write(f"\r   rbee │ [{'#' * filled}{'.' * (width - filled)}] {pct} "
                       f"{_fmt_bytes(done)}/{_fmt_bytes(total)} {_fmt_bytes(p.get('bytes_per_s'))}/s ")
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
