"""The chat session the TUI and `rbee chat` share: the typed question it builds and which exchanges it
keeps (the queen's rule). Its talk with a real queen is tested in tests/tui and test_chat_cli."""

from __future__ import annotations

import pytest

from keeper_tui.chat_session import ChatSession, Exchange
from shared.errors import InvalidRequest
from shared.events import End
from shared.operations import Infer


async def nowhere():
    raise AssertionError("no queen is needed here")


def test_a_question_goes_with_the_conversation_as_a_typed_operation():
    session = ChatSession(nowhere, model="m", sampling={"max_tokens": 8})
    session.messages = [("user", "Hi, I am Ada."), ("assistant", "Hello Ada.")]
    operation = session.operation("What is my name?", temperature=0.0, hive_id=None)
    assert isinstance(operation, Infer)
    assert operation.messages == (("user", "Hi, I am Ada."), ("assistant", "Hello Ada."), ("user", "What is my name?"))
    assert (operation.model, operation.max_tokens, operation.temperature, operation.hive_id) == ("m", 8, 0.0, None)
    with pytest.raises(InvalidRequest) as error:
        session.operation("again", max_tokens=0)
    assert error.value.field == "max_tokens"


@pytest.mark.parametrize("state, parts, stopped, kept", [
    ("completed", ["Hello"], False, True),
    ("completed", [], False, True),  # the queen stores an empty answer that completed
    ("cancelled", ["Hel"], False, True),  # as far as it got
    ("cancelled", [], False, False),
    ("failed", ["Hel"], False, False),
    (None, ["Hel"], True, True),  # stopped (Ctrl+C) before the end came: kept as far as it got
    (None, ["Hel"], False, False),  # the stream broke
])
def test_an_exchange_is_kept_as_the_queen_stores_it(state, parts, stopped, kept):
    session = ChatSession(nowhere)
    exchange = Exchange(question="Hi", job_id="job-1", model="m", parts=parts, stopped=stopped,
                        end=End(state=state) if state else None)
    assert session.record(exchange) is kept
    assert session.messages == ([("user", "Hi"), ("assistant", "".join(parts))] if kept else [])
    assert session.title == ("Hi" if kept else None)
    session.new()
    assert (session.messages, session.conversation_id, session.title) == ([], None, None)
