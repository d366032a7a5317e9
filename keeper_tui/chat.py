"""`rbee chat`: a conversation in the terminal, as `ollama run` has it.

Every question goes to the queen with the conversation so far (`messages`) and the conversation's id, so
the queen stores each exchange and `rbee chat --resume ID` can go on later. Answers stream to stdout;
what the queen does on the way (waking a worker, downloading) is one transient line on a terminal.
Without a terminal on stdin, each line is a question and only the answers are written (for scripts).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from keeper_tui.chat_session import ChatSession, Exchange
from keeper_tui.output import HumanRenderer
from shared.errors import RbeeError
from shared.events import Data, Error, JobState, Narration, Token
from shared.job_client import JobClient
from shared.models import BUILTIN_MODEL, alias_of

PROMPT, MORE = ">>> ", "... "
BLOCK = '"""'
HISTORY_LINES = 1000
_DIM, _RESET, _CLEAR_LINE = "\033[2m", "\033[0m", "\r\033[K"

HELP = f"""Commands:
  /model NAME   ask another model from the next question on (/model alone: which one now)
  /clear        start a new conversation (this one stays stored)
  /save         how to come back to this conversation (it is stored as you go)
  /bye          leave (Ctrl+D does too)
  /help         this list
A message over several lines: begin it with {BLOCK} and end it with a line {BLOCK}, or end a line with \\.
Ctrl+C stops an answer; the question and the answer so far stay in the conversation."""


class TerminalChat:
    """`rbee chat` on a terminal or a pipe: reads questions and commands, writes the answers. The
    conversation itself (its id, messages and model) is a ChatSession, the same as the TUI's."""

    def __init__(self, client: JobClient, *, model: str | None, hive_id: str | None, sampling: dict[str, Any],
                 verbose: bool, history_file: Path) -> None:
        self.client = client
        self.session = ChatSession(self._connected, model=model or BUILTIN_MODEL, hive_id=hive_id, sampling=sampling)
        self.model_given = model is not None
        self.verbose = verbose
        self.history_file = history_file
        self.interactive = sys.stdin.isatty()
        self.failed = False  # a script's exit code says whether every question was answered
        self._status_shown = False

    async def run(self, resume: str | None = None) -> int:
        if resume:
            await self._resume(resume)
        if self.interactive:
            self._load_line_history()
            self._note(f"rbee chat with {alias_of(self.session.model)}: /help for commands, /bye or Ctrl+D to leave")
        try:
            while True:
                try:
                    text = self._read_message()
                except KeyboardInterrupt:
                    self._note("\nUse /bye or Ctrl+D to leave.")
                    continue
                if text is None:
                    break
                if not text.strip():
                    continue
                if "\n" not in text and text.startswith("/"):
                    if not await self._command(text.strip()):
                        break
                    continue
                await self._ask(text)
        finally:
            if self.interactive:
                self._save_line_history()
        return 1 if self.failed and not self.interactive else 0

    # -- reading what the user types ----------------------------------------------------------------------

    def _read_message(self) -> str | None:
        """A line, lines joined by a trailing backslash, or a \"\"\" block; None at the end of input."""
        lines: list[str] = []
        in_block = False
        while True:
            line = self._read_line(MORE if lines or in_block else PROMPT)
            if line is None:
                return None
            if in_block:
                if line.rstrip().endswith(BLOCK):
                    lines.append(line.rstrip()[:-len(BLOCK)])
                    return "\n".join(lines).strip("\n")
                lines.append(line)
            elif not lines and line.lstrip().startswith(BLOCK):
                rest = line.lstrip()[len(BLOCK):]
                if rest.rstrip().endswith(BLOCK):  # """all on one line"""
                    return rest.rstrip()[:-len(BLOCK)]
                in_block = True
                lines.append(rest)
            elif line.endswith("\\"):
                lines.append(line[:-1])
            else:
                lines.append(line)
                return "\n".join(lines)

    def _read_line(self, prompt: str) -> str | None:
        if not self.interactive:
            line = sys.stdin.readline()
            return line.rstrip("\r\n") if line else None
        # input() is synchronous between answers; Ctrl+C must interrupt it, not cancel the event loop's task.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return input(prompt)
        except EOFError:
            sys.stdout.write("\n")
            return None
        finally:
            signal.signal(signal.SIGINT, previous)

    def _load_line_history(self) -> None:
        try:
            import readline  # arrow keys and line editing; only on a terminal, so scripts see no escapes
        except ImportError:
            return
        readline.set_history_length(HISTORY_LINES)
        try:
            readline.read_history_file(self.history_file)
        except OSError:
            pass  # the first chat on this machine

    def _save_line_history(self) -> None:
        try:
            import readline
            # The questions asked are nobody else's business: the file is made private before anything is in it.
            os.close(os.open(self.history_file, os.O_WRONLY | os.O_CREAT, 0o600))
            self.history_file.chmod(0o600)
            readline.write_history_file(self.history_file)
        except (ImportError, OSError):
            pass  # history of typed lines is a convenience; never fail the chat for it

    # -- commands ---------------------------------------------------------------------------------------

    async def _command(self, line: str) -> bool:
        """Run a /command; False when it is time to leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name in ("/help", "/?"):
            self._note(HELP)
        elif name == "/model":
            if not arg:
                self._note(f"talking to {self.session.model}; /model NAME switches")
            else:
                try:
                    await self.session.switch_model(arg)
                except RbeeError as exc:
                    self._note(f"error: {exc.message}")
                self._note(f"now talking to {arg}")
        elif name == "/clear":
            if conv_id := self.session.conversation_id:
                self._note(f"{conv_id} is stored (rbee chat --resume {conv_id}); "
                           "the next question starts a new conversation")
            self.session.new()
        elif name == "/save":
            if conv_id := self.session.conversation_id:
                self._note(f"Conversation {conv_id} is stored as you go; resume it with "
                           f"`rbee chat --resume {conv_id}`")
            else:
                self._note("Nothing to save yet: ask something first.")
        else:
            self._note(f"Unknown command {name}. /help lists the commands.")
        return True

    async def _connected(self) -> JobClient:
        return self.client  # the command woke the queen before the chat began

    async def _resume(self, ref: str) -> None:
        session = self.session
        conversation = await session.resume(ref)
        if session.hive_id is None:
            session.hive_id = conversation.get("hive_id")
        if not self.model_given and session.stored_model:
            session.model = session.stored_model
        else:
            await session.switch_model(session.model)
        self._note(f"Resumed {session.conversation_id} \"{session.title or ''}\": {len(session.messages)} messages")
        if self.interactive:
            for role, content in session.messages[-2:]:
                self._note(f"{'you' if role == 'user' else alias_of(session.model)}: {content}")

    # -- asking ---------------------------------------------------------------------------------------

    async def _ask(self, text: str) -> None:
        """One question and its streamed answer; the exchange joins the conversation as the queen stores it."""
        try:
            exchange = await self.session.ask(self.session.operation(text))
            await self._answer(exchange)
        except RbeeError as exc:
            self.failed = True
            self._note(f"error: {exc.message}")
            return
        self.session.record(exchange)
        if exchange.state is JobState.FAILED:
            self.failed = True
        if self.interactive:
            sys.stdout.write("\n")  # a blank line between an answer and the next prompt

    async def _answer(self, exchange: Exchange) -> None:
        """Stream the answer to stdout; Ctrl+C cancels the job and keeps what came so far."""
        render = HumanRenderer(show_data=False)
        follow = asyncio.ensure_future(self._follow(exchange, render))
        stopped = False

        def on_sigint() -> None:
            nonlocal stopped
            stopped = True
            follow.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            await follow
        except asyncio.CancelledError:
            if not stopped:
                raise
        except BrokenPipeError:  # `rbee chat < questions | head`: nobody reads the answer any more
            await self.session.stop(exchange)
            raise
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        self._clear_status()
        if stopped:
            await self.session.stop(exchange)
            render.end_answer()
            self._note("(stopped)")
        elif self.verbose:
            render.end(exchange.end, exchange.job_id)
        else:
            render.end_answer()
            if exchange.state is JobState.CANCELLED:
                self._note("(cancelled)")

    async def _follow(self, exchange: Exchange, render: HumanRenderer) -> None:
        async for event in self.session.follow(exchange):
            if isinstance(event, Token):
                if len(exchange.parts) == 1:
                    self._clear_status()
                render.event(event)
            elif isinstance(event, Narration) and not self.verbose and event.level == "info":
                self._status(event.human)
            elif isinstance(event, (Narration, Error, Data)):
                self._clear_status()
                render.event(event)

    # -- what the user sees besides answers -----------------------------------------------------------------

    def _status(self, text: str) -> None:
        """A transient line on a terminal (the step the answer waits for), gone when the answer starts."""
        if self.interactive and sys.stderr.isatty():
            sys.stderr.write(f"{_CLEAR_LINE}{_DIM}{text[:100]}{_RESET}")
            sys.stderr.flush()
            self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            sys.stderr.write(_CLEAR_LINE)
            sys.stderr.flush()
            self._status_shown = False

    def _note(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
