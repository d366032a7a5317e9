"""The real `rbee` executable against real daemons: human and --json output, auto-start, Ctrl+C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.support.keeper import json_lines

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

FRANCE = ["--raw", "--temperature", "0", "--max-tokens", "12", "The capital of France is"]


def test_autostart_and_human_stdout_holds_exactly_the_answer(keeper):
    human = keeper("infer", *FRANCE)
    assert human.returncode == 0, human.stderr
    assert "queen is asleep, waking queen" in human.stderr
    assert "Starting hive localhost" in human.stderr and "is ready" in human.stderr
    machine = keeper("--json", "infer", *FRANCE)
    assert machine.returncode == 0, machine.stderr
    result = json_lines(machine.stdout)[-1]
    assert human.stdout == result["text"] + "\n"  # the answer, nothing else, and its line ended
    assert "Paris" in human.stdout


def test_json_infer_is_one_object_per_line_ending_in_the_result(keeper):
    out = keeper("--json", "infer", *FRANCE)
    assert out.returncode == 0, out.stderr
    events = json_lines(out.stdout)
    types = [e["type"] for e in events]
    assert types[-1] == "result" and types[-2] == "end" and "token" in types and "narration" in types
    result = events[-1]
    assert result["state"] == "completed" and result["job_id"].startswith("job-")
    assert result["text"] == "".join(e["t"] for e in events if e["type"] == "token")
    assert result["tokens_out"] == 12


@pytest.mark.parametrize("chat", [[], ["--chat"]])  # chat is the default; --chat is still accepted
def test_chat_mode_uses_the_models_template(keeper, chat):
    out = keeper("--json", "infer", *chat, "--max-tokens", "16", "--temperature", "0", "What is 2+2?")
    assert out.returncode == 0, out.stderr
    events = json_lines(out.stdout)
    result = events[-1]
    assert result["state"] == "completed" and result["prompt_tokens"] > 10  # the template wraps the question
    assert "<|im_start|>" not in result["text"]  # the template's markers stop generation, never leak
    raw = json_lines(keeper("--json", "infer", "--raw", "--max-tokens", "2", "What is 2+2?").stdout)[-1]
    assert raw["prompt_tokens"] < 10  # plain text: the prompt alone


def test_the_readmes_first_question_is_answered_every_time(keeper):
    for run in range(10):
        out = keeper("infer", "--max-tokens", "16", "Why is the sky blue?")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip(), f"run {run + 1} of 10 answered nothing; stderr:\n{out.stderr}"


def request_of(keeper, out) -> dict:
    """The request the queen got for the job whose --json output is `out`."""
    job_id = json_lines(out.stdout)[-1]["job_id"]
    return keeper.queen(lambda client: client.get(job_id))["request"]


@pytest.mark.parametrize("args, stdin, content", [
    (["-"], "Say hi\n", "Say hi"),  # a dash reads stdin
    ([], "Hello from a pipe\nand a second line\n", "Hello from a pipe\nand a second line"),  # a pipe, no prompt
    (["Hello", "World"], None, "Hello World"),  # unquoted words
])
def test_the_prompt_from_stdin_or_unquoted_words(keeper, args, stdin, content):
    out = keeper("--json", "infer", "--max-tokens", "4", *args, input=stdin)
    assert out.returncode == 0, out.stderr
    assert request_of(keeper, out)["messages"] == [{"role": "user", "content": content}]


def test_a_closed_pipe_ends_quietly_and_cancels_the_answer(keeper):
    assert keeper("infer", "--max-tokens", "2", "warm up").returncode == 0
    for command in (["jobs", "list"], ["model", "list"], ["--json", "status"]):  # `rbee jobs list | head -0`
        proc = keeper.popen(*command)
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    # `rbee infer … | head -c 20`: the reader leaves mid-answer
    proc = keeper.popen("--json", "infer", "--temperature", "0", "--max-tokens", "1000",
                        "Count from 1 to 500, separated by commas.")
    job_id = None
    for line in proc.stdout:
        event = json.loads(line)
        job_id = event.get("job_id") or job_id
        if event["type"] == "token" and event["i"] >= 3:
            break
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    err = proc.stderr.read()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert keeper.queen(lambda client: client.get(job_id))["state"] == "cancelled"


def test_jobs_are_named_by_a_unique_prefix_and_shown_in_human_terms(keeper):
    out = keeper("--json", "infer", "--max-tokens", "2", "hi")
    job_id = json_lines(out.stdout)[-1]["job_id"]
    prefix = job_id.removeprefix("job-")[:8]
    shown = keeper("jobs", "show", prefix)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines() if len(line.split(None, 1)) == 2)
    assert fields["job_id"] == job_id and fields["state"] == "completed"
    assert fields["created_at"].endswith("ago)") and fields["error"] == "-"
    for python_spelling in ("None", "True", "False", "['"):
        assert python_spelling not in shown.stdout
    listed = keeper("jobs", "list").stdout.splitlines()
    assert listed[0].split()[:4] == ["JOB", "OPERATION", "STATE", "CREATED"]
    assert listed[1].startswith(f"job-{prefix} ") and "ago" in listed[1]
    assert keeper("--json", "jobs", "show", f"job-{prefix[:6]}").returncode == 0  # with its "job-" too
    hive = keeper("hive", "status", "localhost").stdout
    assert "started_at" in hive and "ago)" in hive and "None" not in hive and "True" not in hive


def test_read_only_jobs_are_listed_only_with_all(keeper):
    assert keeper("infer", "--max-tokens", "2", "hi").returncode == 0
    assert keeper("model", "list").returncode == 0
    assert [j["operation"] for j in json_lines(keeper("--json", "jobs", "list").stdout)[-1]["jobs"]] == ["infer"]
    everything = keeper("jobs", "list", "--all").stdout
    assert "model_list" in everything and "infer" in everything


def test_a_failed_json_result_carries_the_error(keeper):
    out = keeper("--json", "infer", "--hive", "nowhere", "hello")
    assert out.returncode == 1
    result = json_lines(out.stdout)[-1]
    assert result["type"] == "result" and result["state"] == "failed"
    assert result["error"]["code"] == "UNKNOWN_HIVE" and "Unknown hive 'nowhere'" in result["error"]["message"]


def test_no_autostart_without_a_queen_fails_clearly(keeper):
    out = keeper("--no-autostart", "infer", "hello")
    assert out.returncode == 3
    assert out.stdout == ""
    assert f"No queen answers at {keeper.url}" in out.stderr and "Traceback" not in out.stderr
    status = keeper("--json", "queen", "status")
    assert status.returncode == 3 and json_lines(status.stdout) == [
        {"type": "result", "queen_url": keeper.url, "state": "stopped"}]


def test_ctrl_c_cancels_the_job_on_the_queen(keeper):
    assert keeper("infer", "--max-tokens", "4", "warm up").returncode == 0
    proc = keeper.popen("--json", "infer", "--temperature", "0", "--max-tokens", "1000",
                        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,")
    job_id = None
    for line in proc.stdout:
        event = json.loads(line)
        job_id = event.get("job_id") or job_id
        if event["type"] == "token" and event["i"] >= 2:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted: cancelled job" in err
    assert json.loads(rest.strip().splitlines()[-1])["state"] == "cancelled"
    shown = keeper("--json", "jobs", "show", job_id)
    assert json_lines(shown.stdout)[-1]["state"] == "cancelled"


@pytest.mark.parametrize("command", [
    ["model", "list"], ["worker", "list"], ["hive", "list"], ["status"], ["jobs", "list"], ["queen", "status"],
])
def test_listing_commands_in_both_modes(keeper, command):
    assert keeper("infer", "--max-tokens", "2", "hi").returncode == 0  # something to list
    human = keeper(*command)
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip()
    machine = keeper("--json", *command)
    assert machine.returncode == 0, machine.stderr
    assert json_lines(machine.stdout)[-1]["type"] == "result"


def test_lists_read_as_tables(keeper):
    assert keeper("infer", "--max-tokens", "2", "hi").returncode == 0
    models = keeper("model", "list").stdout.splitlines()
    assert models[0].split() == ["ALIAS", "ID", "SIZE", "NEEDS", "SHA256", "STATE", "DOWNLOADED", "PATH"]
    assert models[1].split()[:2] == ["smollm2-135m", "smollm2-135m"] and "MiB (2048×4)" in models[1]  # its estimate
    workers = keeper("worker", "list").stdout.splitlines()
    assert workers[0].split()[:3] == ["ID", "MODEL", "STATE"] and "ready" in workers[1]


def test_a_failed_job_exits_non_zero_with_the_reason(keeper):
    out = keeper("infer", "--hive", "nowhere", "hello")
    assert out.returncode == 1
    assert "Unknown hive 'nowhere'" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("args, fragment", [
    (["infer"], "rbee: error: the prompt is empty"),
    (["infer", "-"], "rbee: error: the prompt is empty"),
    (["chat", "--max-tokens", "0"], "rbee: error: --max-tokens must be at least 1, not 0"),
    (["conversations", "show"], "conversations show needs a conversation id"),
    (["infer", "--max-tokens", "0", "hi"], "rbee: error: --max-tokens must be at least 1, not 0"),
    (["infer", "--temperature", "hot", "hi"], "argument --temperature: invalid float value: 'hot'"),
    (["worker", "get"], "worker get needs a worker id"),
    (["model", "download"], "model download needs a model reference"),
    (["jobs", "show"], "jobs show needs a job id"),
    (["keys", "revoke"], "keys revoke needs the key's name"),
    (["keys", "create", "app", "--scope", "root"], "invalid choice: 'root'"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_bad_arguments_are_usage_errors(keeper, args, fragment):
    out = keeper(*args)
    assert out.returncode == 2
    assert fragment in out.stderr and "Traceback" not in out.stderr
    assert keeper.queen_pid() is None  # nothing was started for a usage error


def test_every_command_has_help_with_an_example(keeper):
    for command in ("infer", "chat", "conversations", "status", "queen", "hive", "worker", "model", "jobs", "keys"):
        out = keeper(command, "--help")
        assert out.returncode == 0 and "example:" in out.stdout and "rbee " in out.stdout


def test_the_cli_does_not_import_textual():
    code = "import sys, keeper_tui.cli; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_prompt_typed_on_a_terminal_ends_with_ctrl_d_and_ctrl_c_stops_at_once(keeper):
    term = keeper.terminal("--no-autostart", "infer", "-")
    try:
        term.expect("end it with Ctrl+D")
        term.type("\x03")
        assert term.wait() == 130  # one Ctrl+C, not one per pending task
    finally:
        term.close()
    term = keeper.terminal("--no-autostart", "infer", "-")
    try:
        term.expect("end it with Ctrl+D")
        term.type("Hello\r\x04")
        assert term.wait() == 3  # the prompt was read; then there is no queen to ask
        assert "No queen answers" in term.seen and "Traceback" not in term.seen
    finally:
        term.close()


def test_keys_from_the_cli_open_what_their_scope_allows(keeper):
    made = keeper("keys", "create", "webui", "--models", "smollm2-135m", "--tokens-per-day", "5000")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()  # stdout holds the key alone: KEY=$(rbee keys create ...)
    assert secret.startswith("rbee-sk-") and "shown this once" in made.stderr
    listed = keeper("keys", "list").stdout.splitlines()
    assert listed[0].split()[:4] == ["NAME", "SCOPE", "MODELS", "LIMITS"]
    assert listed[1].split()[:3] == ["webui", "infer", "smollm2-135m"] and secret not in "".join(listed)

    async def as_key(client):
        headers = {"Authorization": f"Bearer {secret}"}
        session = client.session
        async with session.post(f"{keeper.url}/v1/chat/completions", headers=headers, json={
                "model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}) as r:
            answer = (r.status, await r.json())
        async with session.get(f"{keeper.url}/v1/hives", headers=headers) as r:
            hives = r.status
        return answer, hives

    (status, answer), hives = keeper.queen(as_key)
    assert status == 200 and hives == 403
    usage = json_lines(keeper("--json", "keys", "usage", "webui").stdout)[-1]["usage"]
    assert usage[0]["key"] == "webui" and usage[0]["requests"] == 1
    assert usage[0]["total_tokens"] == answer["usage"]["total_tokens"]
    jobs = keeper("jobs", "list").stdout.splitlines()
    assert "KEY" in jobs[0].split() and "webui" in jobs[1].split()
    assert keeper("keys", "revoke", "webui").returncode == 0
    (status, answer), _ = keeper.queen(as_key)
    assert status == 401 and "'webui' was revoked" in answer["error"]["message"]
    again = keeper("keys", "revoke", "webui")
    assert again.returncode == 1 and "No key named 'webui'" in again.stderr
    for path in keeper.home.rglob("*"):  # logs, job history, conversations, keys.db: never the key itself
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def test_embed_prints_a_json_vector_per_text(keeper):
    done = keeper("embed", "-m", "smollm2-135m", "the sky is blue", "the grass is green")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(v["index"], v["text"]) for v in lines] == [(0, "the sky is blue"), (1, "the grass is green")]
    assert len(lines[0]["embedding"]) == len(lines[1]["embedding"]) > 100 and lines[0]["embedding"] != lines[1]["embedding"]
    assert "embedded" in done.stderr  # the story on stderr, the vectors alone on stdout
