"""How the keeper shows things: aligned tables, key/value blocks, job rows, and the two renderers (human:
the answer alone on stdout, the story on stderr; --json: one JSON object per line on stdout)."""

from __future__ import annotations

import io
import json
import time

import pytest

from keeper_tui.output import (
    CONVERSATION_COLUMNS,
    HumanRenderer,
    JsonRenderer,
    ago,
    conversation_rows,
    human_value,
    job_rows,
    key_values,
    progress_text,
    render_data,
    short_id,
    table,
    transcript,
    when,
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


def test_key_values_aligns_keys_nests_dicts_and_lists_of_dicts_and_reads_as_text():
    out = io.StringIO()
    key_values({"alias": "gpu1", "cpu": {"cores": 4, "model": "Ryzen"},
                "gpus": [{"name": "A100", "vram_gb": 80}, {"name": "T4", "vram_gb": 16}],
                "devices": ["cpu", "cuda:0"], "empty": [], "note": None, "local": True, "remote": False,
                "none": {}}, out)
    assert out.getvalue() == (
        "alias    gpu1\n"
        "cpu:\n"
        "  cores  4\n"
        "  model  Ryzen\n"
        "gpus:\n"
        "  - name=A100, vram_gb=80\n"
        "  - name=T4, vram_gb=16\n"
        "devices  cpu, cuda:0\n"
        "empty    -\n"
        "note     -\n"
        "local    yes\n"
        "remote   no\n"
        "none     -\n"
    )


def test_key_values_show_times_as_a_date_and_how_long_ago():
    out = io.StringIO()
    then = time.time() - 180
    key_values({"started_at": then, "unreachable_since": None, "items": [{"seen_at": then, "ok": True}]}, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"started_at         {when(then)}" and lines[0].endswith("(3 min ago)")
    assert lines[1] == "unreachable_since  -"
    assert lines[3] == f"  - seen_at={when(then)}, ok=yes"


@pytest.mark.parametrize("delta, said", [
    (0.4, "just now"), (5, "5 s ago"), (59.4, "59 s ago"), (180, "3 min ago"), (3599, "59 min ago"),
    (5400, "1.5 h ago"), (40000, "11 h ago"), (86400, "1 day ago"), (3 * 86400, "3 days ago"), (-2, "in 2 s"),
    (-600, "in 10 min"),
])
def test_ago_says_how_far_a_time_is_as_a_person_would(delta, said):
    now = 1_800_000_000.0
    assert ago(now - delta, now) == said


def test_human_values_never_show_python_spellings():
    assert [human_value("k", v) for v in (None, True, False, [], {}, ["cpu"], ("a", 1), 0.25, 3, "x")] == [
        "-", "yes", "no", "-", "-", "cpu", "a, 1", "0.25", "3", "x"]
    assert human_value("k", {"a": None, "b": [1, 2]}) == "a=-, b=1, 2"
    assert human_value("created_at", 1_800_000_000.0).startswith(when(1_800_000_000.0)[:19])
    assert human_value("count_at", "not a time") == "not a time"
    assert human_value("size", 98_362_432) == "98.4 MB" and human_value("free_bytes", 512) == "512 B"


def test_short_ids_keep_the_kind_and_eight_characters():
    assert short_id("job-4378a329-b4ee-4289-ac15-709ba770949c") == "job-4378a329"
    assert short_id("job-1") == "job-1" and short_id("plain") == "plain"


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
        {"alias": "smollm2-135m", "id": "smollm2-135m", "size": 98_400_000, "sha256": "0123456789abcdef" * 4, "downloaded": False,
         "path": "/m/smollm2.gguf", "estimate": {"total_mb": 374.4, "ctx_size": 2048, "slots": 4}},
        {"alias": "x", "id": "file:/x.gguf", "size": 512, "sha256": None, "downloaded": True, "path": "/x.gguf"},
        {"alias": "big", "id": "big", "size": 2_500_000_000, "sha256": "ff", "downloaded": True, "path": None},
        {"alias": "huge", "id": "huge", "size": 5_000_000_000_000, "downloaded": True},
        {"alias": "small", "id": "small", "size": 1_500},
        {"alias": "unknown-size", "id": "unknown-size"},
    ]
    lines = rendered("model_list", {"models": models}).splitlines()
    assert lines[0].split() == ["ALIAS", "ID", "SIZE", "NEEDS", "SHA256", "STATE", "DOWNLOADED", "PATH"]
    assert lines[1].split() == ["smollm2-135m", "smollm2-135m", "98.4", "MB", "374", "MiB", "(2048×4)",
                                "0123456789ab", "no", "/m/smollm2.gguf"]
    assert lines[2].split() == ["x", "file:/x.gguf", "512", "B", "?", "yes", "/x.gguf"]
    assert lines[3].split() == ["big", "big", "2.5", "GB", "?", "ff", "yes"]
    assert lines[4].split() == ["huge", "huge", "5000.0", "GB", "?", "yes"]  # GB is the largest unit
    assert lines[5].split() == ["small", "small", "1.5", "KB", "?"]
    assert lines[6].split() == ["unknown-size", "unknown-size", "?", "?"]
    assert lines[1].index("0123456789ab") == lines[0].index("SHA256")  # columns line up


def test_worker_and_hive_lists_are_tables():
    workers = [{"id": "worker-1", "model": "smollm2-135m", "state": "ready", "device": "cpu", "slots": 4,
                "threads": 2, "pid": 42, "url": "http://127.0.0.1:9001", "extra": "not shown"}]
    assert rendered("worker_list", {"workers": workers}) == (
        "ID        MODEL         STATE  KIND      DEVICE  SLOTS  THREADS  PID  URL\n"
        "worker-1  smollm2-135m  ready  generate  cpu     4      2        42   http://127.0.0.1:9001\n")
    hives = [{"alias": "localhost", "state": "running", "url": "http://127.0.0.1:7835", "pid": 7, "version": "0.2.0",
              "protocol": 1, "skew": False, "compatible": True},
             {"alias": "gpu1", "state": "stopped", "url": None, "pid": None, "version": None, "protocol": None}]
    assert rendered("hive_list", {"hives": hives}) == (
        "ALIAS      STATE    VERSION  URL                    PID\n"
        "localhost  running  0.2.0    http://127.0.0.1:7835  7\n"
        "gpu1       stopped\n")
    assert rendered("worker_list", {"workers": []}) == "(none)\n"
    assert rendered("hive_list", {}) == "(none)\n"


def test_status_shows_hives_workers_and_job_counts():
    same = {"version": "0.2.0", "protocol": 1, "skew": False, "compatible": True}
    payload = {
        "queen": {"version": "0.2.0", "protocol": 1},
        "hives": [{"alias": "localhost", "state": "running", "url": "http://h", "pid": 1, **same},
                  {"alias": "gpu1", "state": "crashed", "url": None, "pid": None, "version": "0.3.0", "protocol": 2,
                   "skew": True, "compatible": False, "problem": "Hive gpu1 runs rbee 0.3.0 (protocol 2) and ..."}],
        "workers": [{"worker_id": "w1", "hive_id": "localhost", "model": "m", "state": "ready", "device": "cpu",
                     "slots": 4, "slots_busy": 1, "pid": 2, "url": "http://w", **same},
                    {"worker_id": "w2", "hive_id": "old", "model": "m", "state": "ready", "device": "cpu",
                     "slots": 4, "slots_busy": 0, "pid": 3, "url": "http://v", "version": None, "protocol": 0,
                     "skew": True, "compatible": True}],
        "jobs": {"running": 1, "recent": 3},
        "waiting_for_a_worker": {"m": 2},
    }
    assert rendered("status", payload) == (
        "queen: rbee 0.2.0 (protocol 1)\n"
        "\n"
        "hives\n"
        "ALIAS      STATE    VERSION             URL       PID\n"
        "localhost  running  0.2.0               http://h  1\n"
        "gpu1       crashed  0.3.0 INCOMPATIBLE\n"
        "\n"
        "workers\n"
        "ID  HIVE       MODEL  STATE  KIND      DEVICE  SLOTS BUSY  VERSION   PID  URL\n"
        "w1  localhost  m      ready  generate  cpu     1/4         0.2.0     2    http://w\n"
        "w2  old        m      ready  generate  cpu     0/4         ? (skew)  3    http://v\n"
        "\n"
        "jobs: 1 running, 3 recent\n"
        "waiting for a worker of m: 2\n"
        "warning: Hive gpu1 runs rbee 0.3.0 (protocol 2) and ...\n")


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


@pytest.mark.parametrize("seconds, said", [(5, "5 s ago"), (120, "2 min ago"), (7200, "2.0 h ago")])
def test_job_rows_say_how_old_each_job_is_and_its_short_id(seconds, said):
    (row,) = job_rows([{"job_id": "job-4378a329-b4ee-4289", "created_at": time.time() - seconds}])
    assert row["created_h"] == said and row["id_h"] == "job-4378a329"


def test_a_job_without_a_creation_time_is_new():
    (row,) = job_rows([{"job_id": "j"}])
    assert row["created_h"] == "just now"


def test_job_rows_fit_the_job_table():
    out = io.StringIO()
    from keeper_tui.output import JOB_COLUMNS
    table(job_rows([{"job_id": "job-1", "operation": "infer", "state": "completed", "created_at": time.time(),
                     "request": {"prompt": "hi"}, "key": "webui"},
                    {"job_id": "job-2", "operation": "status", "state": "completed", "created_at": time.time(),
                     "key": None}]), JOB_COLUMNS, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["JOB", "OPERATION", "STATE", "CREATED", "KEY", "SUMMARY"]
    assert lines[1].split() == ["job-1", "infer", "completed", "just", "now", "webui", "hi"]
    assert lines[2].split() == ["job-2", "status", "completed", "just", "now"]  # the queen's own token: no key


# --- conversations -------------------------------------------------------------------------------------

def test_conversations_list_as_a_table_with_how_long_ago_each_was_used():
    out = io.StringIO()
    conversations = [{"id": "conv-afbc15014b3e", "title": "My name is Ada.", "model": "smollm2-135m",
                      "message_count": 4, "updated_at": time.time() - 180, "created_at": 1.0},
                     {"id": "conv-000000000000", "title": "", "model": None, "message_count": 0},
                     {"id": "conv-111111111111", "title": "A long question\nover two lines, " + "x" * 40,
                      "model": "file:/m/Tiny.Q4.gguf", "message_count": 2}]
    table(conversation_rows(conversations), CONVERSATION_COLUMNS, out)
    assert out.getvalue().splitlines() == [
        "ID                 TITLE                                      MODEL         MESSAGES  UPDATED",
        "conv-afbc15014b3e  My name is Ada.                            smollm2-135m  4         3 min ago",
        "conv-000000000000                                                           0",
        "conv-111111111111  A long question over two lines, xxxxxxxx…  tiny.q4       2",  # 40 characters and …
    ]


def test_a_transcript_names_who_said_what():
    out = io.StringIO()
    transcript({"id": "conv-1", "title": "Hi", "model": "file:/m/SmolLM2-135M-Instruct.Q4_1.gguf",
                "messages": [{"role": "user", "content": "Hello", "at": 1.0},
                             {"role": "assistant", "content": "Hi there!\nHow can I help?", "at": 2.0}]}, out)
    assert out.getvalue() == ("conv-1 · Hi · smollm2-135m-instruct.q4_1 · 2 messages\n"
                              "\nyou: Hello\n"
                              "\nsmollm2-135m-instruct.q4_1: Hi there!\nHow can I help?\n")


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
    assert out.getvalue() == "Paris.\n"  # a final newline, in a pipe too
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


def test_an_answer_ending_in_a_newline_gets_no_second_one():
    r, out, err = human(show_data=False)
    r.event(Token(t="line\n", i=0))
    r.event(Token(t="", i=1))
    r.end(End(state="completed"), "job-1")
    assert out.getvalue() == "line\n"
    r, out, err = human(show_data=False)
    r.end(End(state="failed"), "job-1")
    assert out.getvalue() == ""  # no answer, no newline


def progress(done, total=100_000_000, rate=10_000_000, model="hf:o/r:m.gguf"):
    return Data(action="download_progress", payload={"model": model, "done": done, "total": total,
                                                     "bytes_per_s": rate})


def test_without_a_terminal_progress_is_a_plain_line_per_quarter_and_the_hives_lines_are_not_repeated():
    r, out, err = human()
    r.event(Narration(actor="hive", action="model_download", human="Downloading m.gguf from o/r",
                      target="hf:o/r:m.gguf"))
    for done in range(0, 100_000_001, 5_000_000):
        r.event(progress(done))
        r.event(Narration(actor="hive", action="model_download", human=f"m.gguf: {done // 1_000_000}%",
                          target="hf:o/r:m.gguf"))
    r.event(Narration(actor="hive", action="model_ready", human="Model is in the catalog", target="hf:o/r:m.gguf"))
    assert err.getvalue().splitlines() == [
        "   hive │ Downloading m.gguf from o/r",
        "   rbee │ hf:o/r:m.gguf: 25% (25.0 MB/100.0 MB 10.0 MB/s, 8 s left)",
        "   rbee │ hf:o/r:m.gguf: 50% (50.0 MB/100.0 MB 10.0 MB/s, 5 s left)",
        "   rbee │ hf:o/r:m.gguf: 75% (75.0 MB/100.0 MB 10.0 MB/s, 3 s left)",
        "   rbee │ hf:o/r:m.gguf: 100% (100.0 MB/100.0 MB 10.0 MB/s)",
        "   hive │ Model is in the catalog",
    ]
    assert out.getvalue() == ""


def test_a_warning_about_a_download_is_still_said():
    r, out, err = human()
    r.event(progress(10))
    r.event(Narration(actor="hive", action="model_download", human="Download cancelled", level="warn",
                      target="hf:o/r:m.gguf"))
    assert "Download cancelled" in err.getvalue()


@pytest.mark.parametrize("payload, said", [
    ({"done": 25_000_000, "total": 100_000_000, "bytes_per_s": 1_000_000}, "25.0 MB/100.0 MB 1.0 MB/s, 1 min 15 s left"),
    ({"done": 0, "total": 8e9, "bytes_per_s": 1e6}, "0 B/8.0 GB 1.0 MB/s, 2 h 13 min left"),
    ({"done": 5, "total": 0, "bytes_per_s": 0}, "5 B/? 0 B/s"),
])
def test_progress_text_has_the_rate_and_time_left(payload, said):
    assert progress_text(payload) == said


def test_human_on_a_terminal_colours_stderr_draws_progress_and_ends_the_answer_line():
    r, out, err = human(tty=True)
    r.event(Data(action="download_progress", payload={"model": "m", "done": 49_200_000, "total": 98_400_000,
                                                      "bytes_per_s": 12_000_000}))
    bar = "\r   rbee │ [" + "#" * 15 + "." * 15 + "]  50.0% 49.2 MB/98.4 MB 12.0 MB/s, 5 s left\033[K"
    assert err.getvalue() == bar
    r.event(Narration(actor="hive", action="model_download", human="m: 50%", target="m"))  # the bar says it
    assert err.getvalue() == bar
    r.event(Data(action="download_progress", payload={"model": "m", "done": 98_400_000, "total": 98_400_000,
                                                      "bytes_per_s": 12_000_000}))
    assert err.getvalue().count("\r") == 2 and "\n" not in err.getvalue()  # one line, redrawn in place
    r.event(Narration(actor="hive", action="model_ready", human="downloaded", level="error"))
    after = err.getvalue().split("\033[K")[-1]
    assert after.startswith("\n")  # the progress line is ended before anything else is said
    assert "\033[31mdownloaded\033[0m" in after and "\033[2m" in after
    r.event(Token(t="hi", i=0))
    r.end(None, "job-1")
    assert out.getvalue() == "hi\n"  # no colour in the answer; its line ended
    assert err.getvalue().endswith("\n") and err.getvalue().count("\n") == 2


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
