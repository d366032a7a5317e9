"""The queen's Anthropic Messages API (POST /v1/messages), used through the official `anthropic` package."""

from __future__ import annotations

import uuid

import anthropic
import httpx
import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# The client has no sampling parameters any more (newer Claude models drop them); rbee still takes them.
GREEDY = {"temperature": 0}


@pytest.fixture
def client(queen):
    return anthropic.Anthropic(base_url=queen.url, api_key=queen.token, max_retries=0, timeout=120)


def test_message_plain_and_streamed_agree(client):
    whole = client.messages.create(model=MODEL, messages=QUESTION, max_tokens=12, extra_body=GREEDY)
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert whole.model == MODEL and len(whole.content) == 1 and whole.content[0].type == "text"
    text = whole.content[0].text
    assert text and whole.stop_reason in ("end_turn", "max_tokens")
    assert whole.usage.input_tokens > len(QUESTION[0]["content"].split())  # the chat template's tokens too
    assert 0 < whole.usage.output_tokens <= 12

    kinds, deltas = [], []
    with client.messages.stream(model=MODEL, messages=QUESTION, max_tokens=12, extra_body=GREEDY) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta":
                deltas.append(event.delta.text)
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(deltas) == text == final.content[0].text
    assert (final.stop_reason, final.usage.output_tokens) == (whole.stop_reason, whole.usage.output_tokens)
    # the same prompt again: read from the worker's KV cache but its last token (computed for its logits)
    assert (whole.usage.cache_read_input_tokens, final.usage.input_tokens) == (0, 1)
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == whole.usage.input_tokens


def test_raw_stream_has_anthropics_event_lines(queen):
    """Each SSE event names itself on an `event:` line, with the same type in its data."""
    with httpx.stream("POST", queen.url + "/v1/messages", timeout=120,
                      headers={"x-api-key": queen.token, "anthropic-version": "2023-06-01"},
                      json={"model": MODEL, "messages": QUESTION, "max_tokens": 4, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        body = "".join(resp.iter_text())
    events = [block.split("\n") for block in body.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(f'"type": "{name}"' in lines[1] for name, lines in zip(names, events))


def test_max_tokens_stops_a_long_answer(client):
    reply = client.messages.create(model=MODEL, max_tokens=3, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Write a long story about a dragon."}])
    assert reply.stop_reason == "max_tokens" and reply.stop_sequence is None and reply.usage.output_tokens == 3


def test_system_prompt_reaches_the_model(client, queen):
    pirate = ("You are a pirate captain sailing the seven seas. Always answer in pirate speak, with many words, "
              "tales of treasure, parrots, rum and the open ocean, and never admit that you are a program.")
    plain = client.messages.create(model=MODEL, messages=QUESTION, max_tokens=4, extra_body=GREEDY)
    with_system = client.messages.create(model=MODEL, messages=QUESTION, max_tokens=4, extra_body=GREEDY,
                                         system=[{"type": "text", "text": pirate}])
    # It replaces the template's default system prompt: many more input tokens than without it.
    assert with_system.usage.input_tokens > plain.usage.input_tokens + 20
    job_id = "job-" + str(uuid.UUID(with_system.id.removeprefix("msg_")))  # each message is a queen job
    request = httpx.get(f"{queen.url}/v1/jobs/{job_id}", headers=queen.auth).json()["request"]
    assert request["messages"][0] == {"role": "system", "content": pirate}


def test_stop_sequence_ends_the_answer_and_is_named(client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Count from one to ten in words."}]}]
    free = client.messages.create(model=MODEL, messages=messages, max_tokens=16, extra_body=GREEDY).content[0].text
    words = free.split()
    assert len(words) >= 3, free
    stop = words[2]  # a word the greedy answer surely reaches
    cut = client.messages.create(model=MODEL, messages=messages, max_tokens=16, extra_body=GREEDY,
                                 stop_sequences=[stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == free[:free.index(stop)]
    with client.messages.stream(model=MODEL, messages=messages, max_tokens=16, extra_body=GREEDY,
                                stop_sequences=[stop]) as stream:
        streamed = stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence, streamed.content[0].text) == \
        ("stop_sequence", stop, cut.content[0].text)


def test_abandoned_stream_cancels_its_generation(client, queen):
    with client.messages.stream(model=MODEL, max_tokens=1000, extra_body=GREEDY,
                                messages=[{"role": "user", "content": "Count from 1 to 1000."}]) as stream:
        message_id = None
        for event in stream:
            message_id = message_id or event.message.id
            if event.type == "content_block_delta":
                break  # the client goes away mid-generation
    job_id = "job-" + str(uuid.UUID(message_id.removeprefix("msg_")))
    wait_until(lambda: httpx.get(f"{queen.url}/v1/jobs/{job_id}", headers=queen.auth).json()["state"] == "cancelled",
               timeout=5, interval=0.1, what="the abandoned generation to be cancelled")
    assert not [line for line in queen.stderr_lines if "unhandled error" in line]  # a client leaving is no error


def test_wrong_key_is_refused_in_anthropics_shape(queen):
    stranger = anthropic.Anthropic(base_url=queen.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        stranger.messages.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "authentication_error"
    bearer = anthropic.Anthropic(base_url=queen.url, auth_token=queen.token, max_retries=0, timeout=120)
    assert bearer.messages.create(model=MODEL, messages=QUESTION, max_tokens=2).usage.output_tokens > 0


def test_bad_requests_get_anthropics_error_shape(client, queen):
    cases = [
        ({"model": MODEL, "messages": QUESTION}, "max_tokens"),  # required by Anthropic's API
        ({"model": MODEL, "messages": [], "max_tokens": 4}, "messages"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 1.5}, "temperature"),
        ({"model": MODEL, "messages": [{"role": "system", "content": "hi"}], "max_tokens": 4}, "role"),
        ({"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}]},
         "image blocks are not supported"),
    ]
    for body, named in cases:
        with pytest.raises(anthropic.BadRequestError) as err:
            client.post("/v1/messages", body=body, cast_to=httpx.Response)
        assert err.value.body["type"] == "error", body
        assert err.value.body["error"]["type"] == "invalid_request_error", body
        assert named in err.value.body["error"]["message"], body
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="claude-no-such-model", messages=QUESTION, max_tokens=4)
    assert err.value.body["error"]["type"] == "not_found_error"
    unserved = httpx.post(queen.url + "/v1/messages/batches", headers=queen.auth, json=body)
    assert unserved.status_code == 404 and unserved.json()["error"]["type"] == "not_found_error"
    broken = httpx.post(queen.url + "/v1/messages", content=b"{not json", headers={"x-api-key": queen.token})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
