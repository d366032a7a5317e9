"""How the keeper shows things: aligned tables, key/value blocks, job rows, and the two renderers (human:
the answer alone on stdout, the story on stderr; --json: one JSON object per line on stdout)."""

from __future__ import annotations

import io
import json
import time

import pytest

from keeper_tui.output import (
    HumanRenderer, JsonRenderer, job_rows, key_values, render_data, table,
)
from shared.events import Data, End, Error, Narration, Token


class Tty(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def rendered(action, payload):
    out = io.StringIO()
    render_data(action, payload, out)
    return out.getvalue()


# --- table / key_values --------------------------------------------------------------------------------

def test_table_aligns_columns_upper_cases_headings_and_shows_none_as_empty():
    out = io.StringIO()
    rows = [{"id": "a", "state": "ready", "pid": 7}, {"id": "longer-id", "state": None, "pid": 12345},
            {"id": "b"}]  # a missing key is empty too
    table(rows, [("id", "id"), ("state", "state"), ("pid", "process")], out)
    assert out.getvalue() == (
        "ID         STATE  PROCESS\n"
        "a          ready  7\n"
        "longer-id         12345\n"
        "b\n"  # no trailing blanks
    )


def test_table_keeps_the_case_of_values_and_aligns_on_the_widest_cell():
    out = io.StringIO()
    table([{"k": "Mixed Case"}, {"k": "x"}], [("k", "key")], out)
    assert out.getvalue().splitlines() == ["KEY", "Mixed Case", "x"]
    out = io.StringIO()
    table([{"a": "x", "b": "y"}], [("a", "a-very-long-heading"), ("b", "b")], out)
    assert out.getvalue().splitlines() == ["A-VERY-LONG-HEADING  B", "x                    y"]


def test_table_without_rows_says_none():
    out = io.StringIO()
    table([], [("id", "id")], out)
    assert out.getvalue() == "(none)\n"


def test_key_values_aligns_keys_and_nests_dicts_and_lists_of_dicts():
    out = io.StringIO()
    key_values({"alias": "gpu1", "cpu": {"cores": 4, "model": "Ryzen"},
                "gpus": [{"name": "A100", "vram_gb": 80}, {"name": "T4", "vram_gb": 16}],
                "devices": ["cpu", "cuda:0"], "empty": [], "note": None}, out)
    assert out.getvalue() == (
        "alias    gpu1\n"
        "cpu:\n"
        "  cores  4\n"
        "  model  Ryzen\n"
        "gpus:\n"
        "  - name=A100, vram_gb=80\n"
        "  - name=T4, vram_gb=16\n"
        "devices  ['cpu', 'cuda:0']\n"
        "empty    []\n"
        "note     None\n"
    )


def test_key_values_nests_deeper_with_more_indent():
    out = io.StringIO()
    key_values({"a": {"b": {"c": 1}}}, out)
    assert out.getvalue() == "a:\n  b:\n    c  1\n"


def test_key_values_of_nothing_writes_nothing():
    out = io.StringIO()
    key_values({}, out)
    assert out.getvalue() == ""


# --- render_data ---------------------------------------------------------------------------------------

def test_model_list_shows_sizes_readably_and_a_short_sha():
    models = [
        {"id": "smollm2-135m", "size": 98_400_000, "sha256": "0123456789abcdef" * 4, "downloaded": False,
         "path": "/m/smollm2.gguf", "estimate": {"total_mb": 374.4, "ctx_size": 2048, "slots": 4}},
        {"id": "file:/x.gguf", "size": 512, "sha256": None, "downloaded": True, "path": "/x.gguf"},
        {"id": "big", "size": 2_500_000_000, "sha256": "ff", "downloaded": True, "path": None},
        {"id": "huge", "size": 5_000_000_000_000, "downloaded": True},
        {"id": "small", "size": 1_500},
        {"id": "unknown-size"},
    ]
    lines = rendered("model_list", {"models": models}).splitlines()
    assert lines[0].split() == ["ID", "SIZE", "NEEDS", "SHA256", "DOWNLOADED", "PATH"]
    assert lines[1].split() == ["smollm2-135m", "98.4", "MB", "374", "MiB", "(2048×4)", "0123456789ab", "False",
                                "/m/smollm2.gguf"]
    assert lines[2].split() == ["file:/x.gguf", "512", "B", "?", "True", "/x.gguf"]
    assert lines[3].split() == ["big", "2.5", "GB", "?", "ff", "True"]
    assert lines[4].split() == ["huge", "5000.0", "GB", "?", "True"]  # GB is the largest unit
    assert lines[5].split() == ["small", "1.5", "KB", "?"]
    assert lines[6].split() == ["unknown-size", "?", "?"]
    assert lines[1].index("0123456789ab") == lines[0].index("SHA256")  # columns line up


def test_worker_and_hive_lists_are_tables():
    workers = [{"id": "worker-1", "model": "smollm2-135m", "state": "ready", "device": "cpu", "slots": 4,
                "threads": 2, "pid": 42, "url": "http://127.0.0.1:9001", "extra": "not shown"}]
    assert rendered("worker_list", {"workers": workers}) == (
        "ID        MODEL         STATE  DEVICE  SLOTS  THREADS  PID  URL\n"
        "worker-1  smollm2-135m  ready  cpu     4      2        42   http://127.0.0.1:9001\n")
    hives = [{"alias": "localhost", "state": "running", "url": "http://127.0.0.1:7835", "pid": 7},
             {"alias": "gpu1", "state": "stopped", "url": None, "pid": None}]
    assert rendered("hive_list", {"hives": hives}) == (
        "ALIAS      STATE    URL                    PID\n"
        "localhost  running  http://127.0.0.1:7835  7\n"
        "gpu1       stopped\n")
    assert rendered("worker_list", {"workers": []}) == "(none)\n"
    assert rendered("hive_list", {}) == "(none)\n"


def test_status_shows_hives_workers_and_job_counts():
    payload = {
        "hives": [{"alias": "localhost", "state": "running", "url": "http://h", "pid": 1}],
        "workers": [{"worker_id": "w1", "hive_id": "localhost", "model": "m", "state": "ready", "device": "cpu",
                     "slots": 4, "slots_busy": 1, "pid": 2, "url": "http://w"}],
        "jobs": {"running": 1, "recent": 3},
        "waiting_for_a_worker": {"m": 2},
    }
    assert rendered("status", payload) == (
        "hives\n"
        "ALIAS      STATE    URL       PID\n"
        "localhost  running  http://h  1\n"
        "\n"
        "workers\n"
        "ID  HIVE       MODEL  STATE  DEVICE  SLOTS BUSY  PID  URL\n"
        "w1  localhost  m      ready  cpu     1/4         2    http://w\n"
        "\n"
        "jobs: 1 running, 3 recent\n"
        "waiting for a worker of m: 2\n")


def test_an_empty_status_says_none_and_zero():
    assert rendered("status", {}) == "hives\n(none)\n\nworkers\n(none)\n\njobs: 0 running, 0 recent\n"


def test_other_data_is_key_values_or_json():
    assert rendered("hive_get", {"alias": "gpu1", "state": "running"}) == "alias  gpu1\nstate  running\n"
    assert rendered("something", [1, "two", None]) == '[1, "two", null]\n'
    assert rendered("count", 3) == "3\n"


# --- job_rows ------------------------------------------------------------------------------------------

def test_job_rows_summarise_the_request_in_at_most_40_characters():
    now = time.time()
    jobs = [
        {"job_id": "j1", "request": {"prompt": "x" * 40}, "created_at": now},
        {"job_id": "j2", "request": {"prompt": "y" * 41}, "created_at": now},
        {"job_id": "j3", "request": {"prompt": "line one\nline two\n" + "z" * 30}, "created_at": now},
        {"job_id": "j4", "request": {"model": "hf:org/repo:m.gguf"}, "created_at": now},
        {"job_id": "j5", "request": {"alias": "gpu1"}, "created_at": now},
        {"job_id": "j6", "request": {"id": "worker-9"}, "created_at": now},
        {"job_id": "j7", "request": None, "created_at": now},
        {"job_id": "j8", "created_at": now},
    ]
    summaries = [row["summary"] for row in job_rows(jobs)]
    assert summaries[0] == "x" * 40  # exactly 40: no ellipsis
    assert summaries[1] == "y" * 40 + "…"
    assert summaries[2] == ("line one line two " + "z" * 30)[:40] + "…"
    assert "\n" not in summaries[2]
    assert summaries[3:] == ["hf:org/repo:m.gguf", "gpu1", "worker-9", "", ""]


def test_job_rows_prefer_the_prompt_and_keep_every_field():
    job = {"job_id": "j1", "operation": "infer", "state": "running", "created_at": time.time(),
           "request": {"prompt": "hello", "model": "smollm2-135m"}}
    (row,) = job_rows([job])
    assert row["summary"] == "hello"
    assert {k: row[k] for k in job} == job
    assert job_rows([]) == []


@pytest.mark.parametrize("ago, age", [(5, "5s"), (59, "59s"), (120, "2m"), (3599, "60m"), (7200, "2.0h"),
                                      (5400, "1.5h")])
def test_job_rows_say_how_old_each_job_is(ago, age):
    (row,) = job_rows([{"job_id": "j", "created_at": time.time() - ago}])
    assert row["age"] == age


def test_a_job_without_a_creation_time_is_new():
    (row,) = job_rows([{"job_id": "j"}])
    assert row["age"] == "0s"


def test_job_rows_fit_the_job_table():
    out = io.StringIO()
    from keeper_tui.output import JOB_COLUMNS
    table(job_rows([{"job_id": "job-1", "operation": "infer", "state": "completed", "created_at": time.time(),
                     "request": {"prompt": "hi"}}]), JOB_COLUMNS, out)
    assert out.getvalue().splitlines()[0].split() == ["JOB", "OPERATION", "STATE", "AGE", "SUMMARY"]
    assert out.getvalue().splitlines()[1].split() == ["job-1", "infer", "completed", "0s", "hi"]


# --- HumanRenderer -------------------------------------------------------------------------------------

def human(*, tty=False, show_data=True):
    out, err = (Tty(), Tty()) if tty else (io.StringIO(), io.StringIO())
    return HumanRenderer(out, err, show_data=show_data), out, err


def test_human_stdout_holds_only_the_generated_text():
    r, out, err = human(show_data=False)
    r.event(Narration(actor="queen", action="infer_start", human="Generating"))
    r.event(Token(t="Paris", i=0))
    r.event(Narration(actor="hive", action="worker_ready", human="worker ready", level="warn"))
    r.event(Token(t=".", i=1))
    r.event(Data(action="worker_list", payload={"workers": []}))  # infer: no data on stdout
    r.event(Error(code="BOOM", message="it broke"))
    r.end(End(state="completed", stats={"tokens_out": 2, "tokens_per_s": 31.5, "ttft_ms": 123.4,
                                        "worker_id": "w1", "hive_id": "localhost"}), "job-1")
    assert out.getvalue() == "Paris."
    assert err.getvalue() == (
        "  queen │ Generating\n"
        "   hive │ worker ready\n"
        "   rbee │ error: it broke [BOOM]\n"
        "   rbee │ 2 tokens, 31.5 tokens/s, first token after 123 ms, on w1 (localhost)\n")


def test_human_data_goes_to_stdout_when_shown():
    r, out, err = human()
    r.event(Data(action="hive_list", payload={"hives": []}))
    r.event(Data(action="hive_get", payload={"alias": "gpu1"}))
    assert out.getvalue() == "(none)\nalias  gpu1\n" and err.getvalue() == ""


@pytest.mark.parametrize("end, said", [
    (End(state="completed", stats={"tokens_out": 5}), "   rbee │ 5 tokens\n"),
    (End(state="completed", stats={}), ""),
    (End(state="failed"), "   rbee │ job job-1 failed\n"),
    (End(state="cancelled"), "   rbee │ job job-1 cancelled\n"),
    (None, ""),
])
def test_human_end_says_how_the_job_ended(end, said):
    r, out, err = human()
    r.end(end, "job-1")
    assert err.getvalue() == said and out.getvalue() == ""


def test_human_say_goes_to_stderr():
    r, out, err = human()
    r.say("queen is asleep, waking queen")
    assert err.getvalue() == "   rbee │ queen is asleep, waking queen\n" and out.getvalue() == ""


def test_human_progress_is_silent_without_a_terminal():
    r, out, err = human()
    r.event(Data(action="download_progress", payload={"done": 50, "total": 100, "bytes_per_s": 10}))
    assert out.getvalue() == err.getvalue() == ""


def test_human_on_a_terminal_colours_stderr_draws_progress_and_ends_the_answer_line():
    r, out, err = human(tty=True)
    r.event(Data(action="download_progress", payload={"done": 49_200_000, "total": 98_400_000,
                                                      "bytes_per_s": 12_000_000}))
    assert err.getvalue() == ("\r   rbee │ [" + "#" * 15 + "." * 15 + "]  50.0% 49.2 MB/98.4 MB 12.0 MB/s ")
    r.event(Narration(actor="hive", action="model_download", human="downloaded", level="error"))
    after = err.getvalue().split("MB/s ", 1)[1]
    assert after.startswith("\n")  # the progress line is ended before anything else is said
    assert "\033[31mdownloaded\033[0m" in after and "\033[2m" in after
    r.event(Token(t="hi", i=0))
    r.end(None, "job-1")
    assert out.getvalue() == "hi"  # no colour, no newline in the answer itself
    assert err.getvalue().endswith("\n") and err.getvalue().count("\n") == 3


# --- JsonRenderer --------------------------------------------------------------------------------------

def test_json_stdout_is_one_object_per_line_and_diagnostics_go_to_stderr():
    out, err = io.StringIO(), io.StringIO()
    r = JsonRenderer(out, err)
    r.event(Narration(actor="queen", action="infer_start", human="Génération", job_id="job-1", ts=1))
    r.event(Token(t="Paris", i=0))
    r.event(Data(action="worker_list", payload={"workers": [{"id": "w1"}]}))
    r.event(Error(code="BOOM", message="it broke"))
    r.event(End(state="completed", stats={"tokens_out": 1}))
    r.say("waking the queen")
    r.line({"type": "result", "text": "Paris"})
    r.end(End(state="completed"), "job-1")  # adds nothing: the result line is the caller's
    lines = out.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"type": "narration", "actor": "queen", "action": "infer_start", "human": "Génération", "level": "info",
         "ts": 1, "job_id": "job-1"},
        {"type": "token", "t": "Paris", "i": 0},
        {"type": "data", "action": "worker_list", "payload": {"workers": [{"id": "w1"}]}},
        {"type": "error", "code": "BOOM", "message": "it broke"},
        {"type": "end", "state": "completed", "tokens_out": 1},
        {"type": "result", "text": "Paris"},
    ]
    assert "Génération" in lines[0]  # written as UTF-8 text, not \\u escapes
    assert out.getvalue().endswith("\n")
    assert err.getvalue() == "rbee: waking the queen\n"


def test_json_keeps_a_token_with_a_newline_on_one_line():
    out = io.StringIO()
    JsonRenderer(out, io.StringIO()).event(Token(t="a\nb", i=3))
    assert out.getvalue() == '{"type": "token", "t": "a\\nb", "i": 3}\n'
