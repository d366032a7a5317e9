"""`rbee chat` as a person uses it, on a pseudo-terminal (prompt, typing, Ctrl+C, Ctrl+D), and as a script
feeds it through a pipe; `rbee conversations` on what it stored. Real queen, hive and worker."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.support.keeper import json_lines, running_keeper

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

SHORT = ["--max-tokens", "8", "--temperature", "0"]
LONG = ["--max-tokens", "400", "--temperature", "0"]
COUNTING = "Count from 1 to 300, separated by commas."
COUNTING_DOWN = "Now count from 300 down to 1."


@pytest.fixture
def keeper(tmp_path):
    with running_keeper(tmp_path / "home") as keeper:
        assert keeper("infer", "--max-tokens", "2", "warm up").returncode == 0  # queen, hive and worker awake
        yield keeper


def infer_requests(keeper) -> list[dict]:
    """The requests of the queen's infer jobs, oldest first."""
    async def requests(client):
        jobs = [j for j in await client.list() if j["operation"] == "infer"]
        return [(await client.get(j["job_id"]))["request"] for j in sorted(jobs, key=lambda j: j["created_at"])]
    return keeper.queen(requests)[1:]  # not the warm-up


def answering_job(keeper, *, tokens: int = 5) -> str:
    """The running infer job, once it has streamed a few tokens (so Ctrl+C lands mid-answer)."""
    async def wait(client):
        while True:
            running = [j for j in await client.list() if j["operation"] == "infer" and j["state"] == "running"]
            if running and running[0]["events"] >= 3 + tokens:  # its narration, then tokens
                return running[0]["job_id"]
            await asyncio.sleep(0.1)
    return keeper.queen(lambda client: asyncio.wait_for(wait(client), 60))


def finished_state(keeper, job_id: str) -> str:
    async def wait(client):
        while (job := await client.get(job_id))["state"] in ("queued", "running"):
            await asyncio.sleep(0.1)
        return job["state"]
    return keeper.queen(lambda client: asyncio.wait_for(wait(client), 30))


def test_two_turns_carry_the_first_exchange_and_bye_leaves(keeper):
    chat = keeper.terminal("chat", *SHORT)
    try:
        assert "/help" in chat.expect(">>> ")  # the banner says how to get help
        chat.type("My name is Ada.\r")
        first = chat.expect(">>> ")
        chat.type("What is my name?\r")
        chat.expect(">>> ")
        chat.type("/save\r")
        saved = chat.expect(">>> ")
        chat.type("/bye\r")
        assert chat.wait() == 0
    finally:
        chat.close()
    conv_id = re.search(r"conv-[0-9a-f]+", saved).group(0)
    assert f"rbee chat --resume {conv_id}" in saved
    one, two = infer_requests(keeper)
    answer = two["messages"][1]["content"]
    assert one["messages"] == [{"role": "user", "content": "My name is Ada."}]
    assert two["messages"] == [{"role": "user", "content": "My name is Ada."},
                               {"role": "assistant", "content": answer},
                               {"role": "user", "content": "What is my name?"}]
    assert one["conversation_id"] == two["conversation_id"] == conv_id
    assert answer.strip() and answer.strip().splitlines()[0] in first  # it streamed onto the terminal
    stored = keeper.queen(lambda client: client.conversation(conv_id))
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["title"].startswith("My name is Ada")


def test_ctrl_c_stops_the_answer_keeps_it_and_the_prompt_comes_back(keeper):
    chat = keeper.terminal("chat", *LONG)
    try:
        chat.expect(">>> ")
        chat.type(COUNTING + "\r")
        job_id = answering_job(keeper)
        chat.type("\x03")  # Ctrl+C, through the terminal
        assert "(stopped)" in chat.expect(">>> ", timeout=30)
        assert finished_state(keeper, job_id) == "cancelled"
        chat.type(COUNTING_DOWN + "\r")  # the partial answer goes with the next question
        chat.expect(">>> ", timeout=120)  # however long it is (it follows a partial answer of any length)
        chat.wait_until_reading()
        chat.type("\x03")  # at the prompt: a hint, not an exit
        assert "Use /bye or Ctrl+D to leave" in chat.expect(">>> ")
        chat.type("\x04")  # Ctrl+D leaves
        assert chat.wait() == 0
    finally:
        chat.close()
    first, thanks = infer_requests(keeper)
    partial = thanks["messages"][1]
    assert partial["role"] == "assistant" and partial["content"].strip()
    assert thanks["messages"][0] == first["messages"][0] and thanks["messages"][2]["content"] == COUNTING_DOWN
    stored = keeper.queen(lambda client: client.conversation(thanks["conversation_id"]))
    assert stored["messages"][1]["content"] == partial["content"]  # stored as far as it got


def test_a_script_feeds_lines_multi_line_blocks_and_commands(keeper):
    script = ('"""\nline one\nline two\n"""\n'
              "first half \\\nsecond half\n"
              "/model nonexistent-model\n"  # the conversation's model changes with it
              "/clear\n"
              "/model smollm2-135m\n"
              "alone\n")
    out = keeper("chat", *SHORT, input=script)
    assert out.returncode == 0, out.stderr
    assert ">>>" not in out.stdout and "Traceback" not in out.stderr
    assert len([line for line in out.stdout.splitlines() if line.strip()]) >= 3  # three answers, one a line each
    block, joined, alone = infer_requests(keeper)
    assert block["messages"] == [{"role": "user", "content": "line one\nline two"}]
    assert joined["messages"][-1] == {"role": "user", "content": "first half \nsecond half"}
    assert len(joined["messages"]) == 3 and joined["conversation_id"] == block["conversation_id"]
    assert alone["messages"] == [{"role": "user", "content": "alone"}]  # /clear: a new conversation
    assert alone["conversation_id"] != block["conversation_id"]
    assert keeper.queen(lambda client: client.conversation(block["conversation_id"]))["model"] == "nonexistent-model"


def test_a_failed_question_in_a_script_exits_non_zero_with_the_reason(keeper):
    out = keeper("chat", "--model", "nonexistent-model", *SHORT, input="hello\n")
    assert out.returncode == 1
    assert "nonexistent-model" in out.stderr and "Traceback" not in out.stderr


def test_conversations_list_show_resume_and_delete(keeper):
    assert keeper("chat", *SHORT, input="My name is Ada.\n").returncode == 0
    listed = keeper("conversations", "list").stdout.splitlines()
    assert listed[0].split() == ["ID", "TITLE", "MODEL", "MESSAGES", "UPDATED"]
    assert "My name is Ada." in listed[1] and re.search(r"\s2\s+(just now|\d+ s ago)$", listed[1]), listed
    conv_id = listed[1].split()[0]
    prefix = conv_id.removeprefix("conv-")[:5]

    shown = keeper("conversations", "show", prefix)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{conv_id} · My name is Ada.") and "\nyou: My name is Ada.\n" in shown.stdout
    assert "\nsmollm2-135m: " in shown.stdout

    resumed = keeper("chat", "--resume", prefix, *SHORT, input="What is my name?\n")
    assert resumed.returncode == 0, resumed.stderr
    asked = infer_requests(keeper)[-1]
    assert asked["conversation_id"] == conv_id and len(asked["messages"]) == 3
    as_json = json_lines(keeper("--json", "conversations", "show", conv_id).stdout)[-1]
    assert as_json["type"] == "result" and len(as_json["messages"]) == 4

    deleted = keeper("conversations", "delete", prefix)
    assert deleted.returncode == 0 and conv_id in deleted.stderr
    gone = keeper("conversations", "show", prefix)
    assert gone.returncode == 1 and "rbee conversations list" in gone.stderr and "Traceback" not in gone.stderr
