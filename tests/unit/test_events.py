import asyncio
import json

import pytest

from shared.errors import InvalidRequest
from shared.events import (
    Data,
    End,
    Error,
    Narration,
    Started,
    Token,
    bind_job,
    decode_event,
    emit,
    encode_event,
    narrate,
    unbind_job,
)

EXAMPLES = [
    Narration(actor="queen", action="hive_start", human="Starting hive localhost", target="localhost",
              level="info", job_id="job-1", ts=1700000000000),
    Token(t="Hello", i=0),
    Data(action="model_list", payload={"models": [{"id": "smollm2-135m"}]}),
    Error(code="WORKER_CRASHED", message="worker exited with code -9"),
    Started(job_id="job-2", model="smollm2-135m", started_at=1700000000001),
    End(state="completed", stats={"tokens_out": 8, "ttft_ms": 12.5, "tokens_per_s": 99.0}),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_encode_decode_round_trip(event):
    encoded = encode_event(event)
    assert "\n" not in encoded  # one SSE data line
    assert decode_event(encoded) == event


def test_wire_shapes_match_spec():
    assert json.loads(encode_event(Token(t="Hi", i=3))) == {"type": "token", "t": "Hi", "i": 3}
    end = json.loads(encode_event(End(state="cancelled", stats={"tokens_out": 2})))
    assert end == {"type": "end", "state": "cancelled", "tokens_out": 2}
    n = json.loads(encode_event(EXAMPLES[0]))
    assert set(n) == {"type", "actor", "action", "target", "human", "level", "job_id", "ts"}


@pytest.mark.parametrize("raw", ['{"type":"teleport"}', '{"type":"token"}', "not json", "[1]"])
def test_bad_events_raise_clear_errors(raw):
    with pytest.raises(InvalidRequest):
        decode_event(raw)


async def test_narrate_routes_to_the_bound_job_and_its_child_tasks():
    seen_a, seen_b = [], []

    async def job(sink, job_id, label):
        token = bind_job(job_id, sink.append, actor="hive")
        try:
            narrate("step", f"{label} one")
            await asyncio.sleep(0)
            await asyncio.create_task(_deep_helper(label))  # context is inherited by child tasks
            emit(Token(t="x", i=0))
        finally:
            unbind_job(token)

    await asyncio.gather(job(seen_a, "job-a", "A"), job(seen_b, "job-b", "B"))
    assert [e.human for e in seen_a if isinstance(e, Narration)] == ["A one", "A deep"]
    assert [e.human for e in seen_b if isinstance(e, Narration)] == ["B one", "B deep"]
    assert all(e.job_id == "job-a" and e.actor == "hive" for e in seen_a if isinstance(e, Narration))
    assert seen_a[-1] == Token(t="x", i=0)


async def _deep_helper(label):
    narrate("deep", f"{label} deep", level="warn")


def test_narrate_without_a_job_logs_instead(caplog):
    with caplog.at_level("INFO", logger="rbee.narration"):
        event = narrate("boot", "Starting up")
    assert event.job_id is None
    assert "Starting up" in caplog.text
