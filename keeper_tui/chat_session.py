"""One conversation with a model through the queen, as the TUI's chat tab and `rbee chat` both hold it.

The queen stores each exchange in the conversation when its job ends: a completed answer, or the part of
a cancelled one that came. `messages` here follows the same rule, so the next question goes out with the
conversation exactly as it is stored. What a person sees of an answer is up to the front end; the
session starts the conversation, builds the typed operation, follows the job and records the exchange.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from shared.errors import RbeeError
from shared.events import End, Event, JobState, Token
from shared.job_client import JobClient
from shared.models import BUILTIN_MODEL
from shared.operations import Infer, parse_operation

Connect = Callable[[], Awaitable[JobClient]]  # the queen's client, woken first if need be


@dataclass
class Exchange:
    """A question and its answer as it streams: the text so far and how the job ended."""

    question: str
    job_id: str
    model: str
    parts: list[str] = field(default_factory=list)
    end: End | None = None
    stopped: bool = False  # the person stopped it before its end arrived (Ctrl+C)

    @property
    def answer(self) -> str:
        return "".join(self.parts)

    @property
    def state(self) -> JobState:
        if self.end is not None:
            return self.end.state
        return JobState.CANCELLED if self.stopped else JobState.FAILED

    @property
    def kept(self) -> bool:
        """Whether the queen stores it: a completed answer, or what came of a cancelled one."""
        return self.state is JobState.COMPLETED or (self.state is JobState.CANCELLED and bool(self.parts))


class ChatSession:
    """The conversation's id, its messages as stored, and the model and options a question goes with."""

    def __init__(self, connect: Connect, *, model: str = BUILTIN_MODEL, hive_id: str | None = None,
                 sampling: Mapping[str, Any] | None = None) -> None:
        self.connect = connect
        self.model = model
        self.hive_id = hive_id
        self.sampling = dict(sampling or {})
        self.conversation_id: str | None = None
        self.stored_model: str | None = None  # the model the stored conversation names
        self.title: str | None = None
        self.messages: list[tuple[str, str]] = []

    def new(self) -> None:
        """The next question starts a new conversation; this one stays stored."""
        self.conversation_id = self.stored_model = self.title = None
        self.messages = []

    async def resume(self, ref: str) -> dict[str, Any]:
        """Go on with a stored conversation (`ref`: its id or a unique prefix); returns it as stored."""
        conversation = await (await self.connect()).conversation(ref)
        self.conversation_id = conversation["id"]
        self.stored_model = conversation.get("model")
        self.title = conversation.get("title")
        self.messages = [(m["role"], m["content"]) for m in conversation.get("messages", [])]
        return conversation

    async def switch_model(self, model: str) -> None:
        """Ask `model` from the next question on; a stored conversation names it at once."""
        self.model = model
        if self.conversation_id is not None and self.stored_model != model:
            await (await self.connect()).update_conversation(self.conversation_id, model=model)
            self.stored_model = model

    def operation(self, question: str, **fields: Any) -> Infer:
        """The typed, checked infer operation for `question` after the conversation so far. `fields`
        (model, hive_id, sampling) replace the session's own; a wrong one raises InvalidRequest."""
        body: dict[str, Any] = {"operation": "infer", "model": self.model, "hive_id": self.hive_id, **self.sampling,
                                **fields}
        body["messages"] = [{"role": r, "content": c} for r, c in [*self.messages, ("user", question)]]
        operation = parse_operation({k: v for k, v in body.items() if v is not None})
        assert isinstance(operation, Infer)
        return operation

    async def ask(self, operation: Infer) -> Exchange:
        """Submit `operation` in this conversation, which is started (or told the new model) first."""
        client = await self.connect()
        if self.conversation_id is None:
            created = await client.new_conversation(model=operation.model, hive_id=operation.hive_id)
            self.conversation_id, self.stored_model = created["id"], operation.model
        elif self.stored_model != operation.model:
            await client.update_conversation(self.conversation_id, model=operation.model)
            self.stored_model = operation.model
        job = await client.submit(dataclasses.replace(operation, conversation_id=self.conversation_id))
        assert operation.messages
        return Exchange(question=operation.messages[-1][1], job_id=job.job_id, model=operation.model)

    async def follow(self, exchange: Exchange) -> AsyncIterator[Event]:
        """The job's events as they come; the answer's text and the end are recorded on the way."""
        async for event in (await self.connect()).stream(exchange.job_id):
            if isinstance(event, Token):
                exchange.parts.append(event.t)
            elif isinstance(event, End):
                exchange.end = event
            yield event

    async def stop(self, exchange: Exchange) -> None:
        """The person stopped the answer: cancel its job (which may have ended just before)."""
        exchange.stopped = True
        with contextlib.suppress(RbeeError):
            await (await self.connect()).cancel(exchange.job_id)

    def record(self, exchange: Exchange) -> bool:
        """Add the exchange to the conversation as the queen stores it; False when the queen keeps nothing."""
        if not exchange.kept:
            return False
        self.messages += [("user", exchange.question), ("assistant", exchange.answer)]
        self.title = self.title or self.messages[0][1]
        return True
